#!/usr/bin/env python3
"""Security and operations review of a SAM template: what a platform team checks before
approving it.

Usage: infra/template-check.py [TEMPLATE]   (default: template.yaml)

Fails (exit 1, one line per finding) when
  - a policy statement allows a wildcard action (`*`, `service:*`, `service:Get*`, any `*` or
    `?` in an action) or uses NotAction;
  - a policy statement allows a wildcard resource: `*`, or an ARN containing a wildcard that
    is not under a resource of this template (`${Table.Arn}/index/*` is fine,
    `arn:aws:dynamodb:*:*:table/*` is not), or uses NotResource. The only exception is a
    statement whose every action AWS authorises on `*` alone (X-Ray segments,
    cloudwatch:PutMetricData): `*` is the narrowest resource those accept;
  - a function uses a managed policy or SAM policy template that is broader than needed
    (AdministratorAccess, PowerUserAccess, `*FullAccess`, `*ReadOnlyAccess`, `*CrudPolicy`,
    ...) or one that is not on this file's list of reviewed, narrow ones;
  - a route has no authorizer: an HttpApi/Api event with neither its own Auth.Authorizer nor
    a DefaultAuthorizer on its API, `Authorizer: NONE`, an authorizer its API does not define,
    an AWS::ApiGatewayV2::Route with AuthorizationType NONE, or a function URL with AuthType
    NONE;
  - a SAM function (with Globals.Function applied) has no AutoPublishAlias, no enabled
    DeploymentPreference, a Type that shifts all traffic at once (AllAtOnce), or no Alarms
    to roll a bad version back;
  - a table or queue is not kept on a stack delete and on a replacement (DeletionPolicy and
    UpdateReplacePolicy: Retain), or a table has no point-in-time recovery;
  - an alarm is missing: ApproximateNumberOfMessagesVisible > 0 on each dead-letter queue
    (a queue another queue's RedrivePolicy targets), ApproximateAgeOfOldestMessage on each
    queue a function consumes, Lambda Errors > 0 on each SQS-consuming function, and
    FlashSale ReconcilerViolations > 0. "> 0" means it fires on the first one:
    GreaterThanThreshold 0 or GreaterThanOrEqualToThreshold 1;
  - an HTTP API (AWS::Serverless::HttpApi, or SAM's implicit one) has no stage throttling:
    DefaultRouteSettings (its own or Globals.HttpApi) without ThrottlingRateLimit and
    ThrottlingBurstLimit.
Policies are read from every function (Policies), IAM role (Policies, ManagedPolicyArns) and
IAM policy resource in the template. Prints `template-check: OK ...` otherwise.
infra/test_template_check.py proves each finding fires.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "infra"))
from stack import load_template  # noqa: E402 - the CloudFormation-tag-aware YAML loader

FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")

# Managed policies that grant only what their name says, on resources they name or on
# actions that take no resource: reviewed and allowed. (With Tracing: Active, SAM itself
# adds AWSXrayWriteOnlyAccess to each function's role: X-Ray writes, which take only "*".)
NARROW_MANAGED_POLICIES = {
    "AWSLambdaBasicExecutionRole",
    "AWSXRayDaemonWriteAccess",
    "AWSXrayWriteOnlyAccess",
    "CloudWatchLambdaInsightsExecutionRolePolicy",
}
# SAM policy templates that are scoped to the one resource their parameters name and grant
# no more than their name says.
NARROW_SAM_POLICY_TEMPLATES = {
    "SQSSendMessagePolicy",
    "SQSPollerPolicy",
    "DynamoDBReadPolicy",
    "DynamoDBStreamReadPolicy",
    "SNSPublishMessagePolicy",
    "LambdaInvokePolicy",
    "SSMParameterReadPolicy",
    "AWSSecretsManagerGetSecretValuePolicy",
    "KMSDecryptPolicy",
}
# Broad by name: everything on a service, or every action of a kind on it.
BROAD_POLICY_NAME = re.compile(
    r"(AdministratorAccess|PowerUserAccess|FullAccess|ReadOnlyAccess|Crud|Admin|PowerUser|ReadOnly)",
)
# Actions AWS authorises only on Resource "*" (they have no resource-level permissions).
RESOURCE_STAR_ONLY_ACTIONS = {
    "xray:puttracesegments",
    "xray:puttelemetryrecords",
    "xray:getsamplingrules",
    "xray:getsamplingtargets",
    "xray:getsamplingstatisticsummaries",
    "cloudwatch:putmetricdata",
}
WILDCARD = re.compile(r"[*?]")
# Resources holding data a stack delete or a resource replacement must not destroy.
DATA_TYPES = ("AWS::DynamoDB::Table", "AWS::SQS::Queue")
# The reconciler's custom metric (EMF): invariant violations found in a run.
RECONCILER_METRIC = ("FlashSale", "ReconcilerViolations")


@dataclass(frozen=True)
class Finding:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Counts:
    functions: int = 0
    statements: int = 0
    routes: int = 0
    data_resources: int = 0
    alarms: int = 0
    apis: int = 0


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def show(value: Any) -> str:
    """A short text form of a template value (intrinsics as written)."""
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "Ref":
            return f"!Ref {arg}"
        if key == "Fn::GetAtt":
            return "!GetAtt " + (".".join(arg) if isinstance(arg, list) else str(arg))
        if key == "Fn::Sub":
            return f"!Sub {arg if isinstance(arg, str) else arg[0]!r}"
    return repr(value)


# --- policy statements -----------------------------------------------------------------


def scoped_to_template_resource(value: Any, resources: dict[str, Any]) -> bool | None:
    """For a Resource value: True if it is, or lies under, a resource of this template; False
    if it contains a wildcard that is not; None if it has no wildcard at all."""
    if isinstance(value, str):
        return False if WILDCARD.search(value) else None
    if not isinstance(value, dict) or len(value) != 1:
        return False
    (key, arg), = value.items()
    if key == "Ref":
        return True if arg in resources else None
    if key == "Fn::GetAtt":
        name = arg[0] if isinstance(arg, list) else str(arg).split(".", 1)[0]
        return True if name in resources else None
    if key == "Fn::Sub":
        text = arg if isinstance(arg, str) else arg[0]
        return _scoped_text(text, resources)
    if key == "Fn::If" and isinstance(arg, list) and len(arg) == 3:
        # Either branch may be deployed: each must pass on its own.
        branches = [scoped_to_template_resource(branch, resources) for branch in arg[1:]]
        if False in branches:
            return False
        return True if True in branches else None
    if key == "Fn::Join":
        separator, parts = arg
        text = ""
        for part in as_list(parts):
            if isinstance(part, str):
                text += part.replace("${", "${!")
            elif scoped_to_template_resource(part, resources) is True:
                text += "${" + _referenced(part) + "}"
            else:
                text += "${?}"
            text += separator
        return _scoped_text(text[: len(text) - len(separator)] if separator else text, resources)
    return False


def _referenced(value: dict[str, Any]) -> str:
    (key, arg), = value.items()
    if key == "Ref":
        return str(arg)
    return ".".join(arg) if isinstance(arg, list) else str(arg)


def _scoped_text(text: str, resources: dict[str, Any]) -> bool | None:
    """A !Sub text: None without a wildcard; else True only if the wildcard comes after a
    reference to one of our resources and a path or ARN separator (`${Table.Arn}/index/*`,
    `table/${Table}/stream/*`), not right after its name (`${Table}*` would match others)."""
    literal = re.sub(r"\$\{[^}]*\}", lambda m: "_" * len(m.group(0)), text)
    wildcard = WILDCARD.search(literal)
    if wildcard is None:
        return None
    before = text[: wildcard.start()]
    references = [
        m for m in re.finditer(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z0-9.]+)?\}", before) if m.group(1) in resources
    ]
    if not references:
        return False
    rest = before[references[-1].end():]
    return rest[:1] in ("/", ":")


def check_statement(where: str, statement: Any, resources: dict[str, Any], findings: list[Finding]) -> None:
    if not isinstance(statement, dict):
        findings.append(Finding(where, f"statement is not a mapping: {statement!r}"))
        return
    if statement.get("Effect", "Allow") != "Allow":
        return
    if "NotAction" in statement:
        findings.append(Finding(where, "NotAction allows every action but the listed ones"))
    if "NotResource" in statement:
        findings.append(Finding(where, "NotResource allows every resource but the listed ones"))
    actions = as_list(statement.get("Action"))
    for action in actions:
        if not isinstance(action, str):
            findings.append(Finding(where, f"action {show(action)} is not a literal action name"))
        elif WILDCARD.search(action):
            findings.append(Finding(where, f"wildcard action {action!r}"))
    star_only = bool(actions) and all(
        isinstance(a, str) and a.lower() in RESOURCE_STAR_ONLY_ACTIONS for a in actions
    )
    for resource in as_list(statement.get("Resource")):
        if resource == "*":
            if not star_only:
                findings.append(Finding(where, "wildcard resource '*'"))
        elif scoped_to_template_resource(resource, resources) is False:
            findings.append(
                Finding(where, f"wildcard resource {show(resource)} not scoped to a resource of this template")
            )


def check_document(where: str, document: Any, resources: dict[str, Any], findings: list[Finding], counts: Counts) -> None:
    if not isinstance(document, dict):
        findings.append(Finding(where, f"policy document is not a mapping: {show(document)}"))
        return
    for i, statement in enumerate(as_list(document.get("Statement"))):
        counts.statements += 1
        sid = statement.get("Sid") if isinstance(statement, dict) else None
        check_statement(f"{where} statement {sid or i + 1}", statement, resources, findings)


def managed_policy_name(value: Any) -> str:
    """`AdministratorAccess` from a name, an ARN or a !Sub of one."""
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "Fn::Sub":
            value = arg if isinstance(arg, str) else arg[0]
        else:
            return show(value)
    return str(value).rsplit("/", 1)[-1]


def check_managed_policy(where: str, value: Any, resources: dict[str, Any], findings: list[Finding]) -> None:
    # A policy this template defines is checked statement by statement where it is defined.
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in resources:
        return
    name = managed_policy_name(value)
    if BROAD_POLICY_NAME.search(name):
        findings.append(Finding(where, f"managed policy {name} is broader than needed"))
    elif name not in NARROW_MANAGED_POLICIES:
        findings.append(
            Finding(where, f"managed policy {name} is not on the reviewed list (NARROW_MANAGED_POLICIES)")
        )


def check_function_policies(where: str, policies: Any, resources: dict[str, Any], findings: list[Finding], counts: Counts) -> None:
    """SAM's Policies: a managed policy name/ARN, a policy document, a SAM policy template, or
    a list of those."""
    for i, policy in enumerate(as_list(policies)):
        here = f"{where} Policies[{i}]"
        if isinstance(policy, str) or (isinstance(policy, dict) and set(policy) <= {"Ref", "Fn::Sub"}):
            check_managed_policy(here, policy, resources, findings)
        elif isinstance(policy, dict) and "Statement" in policy:
            check_document(here, policy, resources, findings, counts)
        elif isinstance(policy, dict) and len(policy) == 1:
            (template_name, _params), = policy.items()
            if BROAD_POLICY_NAME.search(template_name):
                findings.append(Finding(here, f"SAM policy template {template_name} is broader than needed"))
            elif template_name not in NARROW_SAM_POLICY_TEMPLATES:
                findings.append(
                    Finding(
                        here,
                        f"SAM policy template {template_name} is not on the reviewed list (NARROW_SAM_POLICY_TEMPLATES)",
                    )
                )
        else:
            findings.append(Finding(here, f"unrecognised policy {show(policy)}"))


# --- routes ----------------------------------------------------------------------------


def api_auth(template: dict[str, Any], api_id: str | None, kind: str) -> tuple[str, dict[str, Any]]:
    """The API an event attaches to and its Auth; SAM's implicit API takes Globals."""
    resources = template.get("Resources") or {}
    if api_id is not None and api_id in resources:
        return api_id, ((resources[api_id].get("Properties") or {}).get("Auth") or {})
    implicit = "ServerlessHttpApi" if kind == "HttpApi" else "ServerlessRestApi"
    globals_ = (template.get("Globals") or {}).get(kind) or {}
    return api_id or implicit, globals_.get("Auth") or {}


def check_route(where: str, template: dict[str, Any], kind: str, properties: dict[str, Any], findings: list[Finding]) -> None:
    api_ref = properties.get("ApiId" if kind == "HttpApi" else "RestApiId")
    api_id = api_ref.get("Ref") if isinstance(api_ref, dict) else api_ref
    api, auth = api_auth(template, api_id, kind)
    route = f"{str(properties.get('Method', 'ANY')).upper()} {properties.get('Path', '$default')}"
    event_auth = properties.get("Auth") or {}
    authorizer = event_auth.get("Authorizer", auth.get("DefaultAuthorizer"))
    if authorizer is None:
        findings.append(Finding(where, f"route {route} has no authorizer (no Auth.Authorizer, no DefaultAuthorizer on {api})"))
    elif authorizer == "NONE":
        findings.append(Finding(where, f"route {route} has Authorizer: NONE"))
    elif authorizer != "AWS_IAM" and authorizer not in (auth.get("Authorizers") or {}):
        findings.append(Finding(where, f"route {route} uses authorizer {authorizer}, which {api} does not define"))

# --- operations: safe deployment, data kept, alarms, throttling ------------------------


def with_globals(global_value: Any, own: Any) -> Any:
    """SAM's Globals rule: maps merge key by key, lists add up, anything else is replaced."""
    if own is None:
        return global_value
    if isinstance(global_value, dict) and isinstance(own, dict):
        return {**global_value, **{k: with_globals(global_value.get(k), v) for k, v in own.items()}}
    if isinstance(global_value, list) and isinstance(own, list):
        return global_value + own
    return own


def is_true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def check_deployment(name: str, properties: dict[str, Any], findings: list[Finding]) -> None:
    if not properties.get("AutoPublishAlias"):
        findings.append(
            Finding(name, "no AutoPublishAlias: callers invoke $LATEST, so no version can be canaried or rolled back")
        )
    preference = properties.get("DeploymentPreference")
    if not isinstance(preference, dict) or not is_true(preference.get("Enabled", True)):
        findings.append(Finding(name, "no enabled DeploymentPreference: a new version takes all traffic at once"))
        return
    if preference.get("Type") in (None, "AllAtOnce"):
        findings.append(
            Finding(name, f"DeploymentPreference Type {preference.get('Type', 'missing')}: use a Canary or Linear type")
        )
    if not as_list(preference.get("Alarms")):
        findings.append(Finding(name, "DeploymentPreference has no Alarms: nothing rolls a bad version back"))


def check_data_resource(name: str, resource: dict[str, Any], findings: list[Finding]) -> None:
    for policy in ("DeletionPolicy", "UpdateReplacePolicy"):
        if resource.get(policy) != "Retain":
            findings.append(
                Finding(name, f"{policy} is {resource.get(policy, 'not set (Delete)')}, not Retain: the data would be lost")
            )
    if resource.get("Type") == "AWS::DynamoDB::Table":
        pitr = (resource.get("Properties") or {}).get("PointInTimeRecoverySpecification") or {}
        if not is_true(pitr.get("PointInTimeRecoveryEnabled")):
            findings.append(Finding(name, "no point-in-time recovery (PointInTimeRecoverySpecification)"))


def referenced(value: Any) -> Any:
    """The logical id a !Ref or !GetAtt names; anything else as it is."""
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "Ref":
            return arg
        if key == "Fn::GetAtt":
            return arg[0] if isinstance(arg, list) else str(arg).split(".", 1)[0]
    return value


def watched_metrics(alarm: dict[str, Any]) -> Iterator[tuple[Any, Any, dict[Any, Any]]]:
    """(namespace, metric name, {dimension: value or logical id}) of each metric an alarm
    watches: its own, or each MetricStat of a metric math alarm."""
    stats = [((m or {}).get("MetricStat") or {}).get("Metric") or {} for m in as_list(alarm.get("Metrics"))]
    for metric in [alarm, *stats]:
        if metric.get("MetricName"):
            dimensions = {
                d.get("Name"): referenced(d.get("Value")) for d in as_list(metric.get("Dimensions")) if isinstance(d, dict)
            }
            yield metric.get("Namespace"), metric.get("MetricName"), dimensions


def fires_on_first(alarm: dict[str, Any]) -> bool:
    try:
        threshold = float(alarm.get("Threshold"))
    except (TypeError, ValueError):
        return False
    operator = alarm.get("ComparisonOperator")
    return (operator == "GreaterThanThreshold" and threshold == 0) or (
        operator == "GreaterThanOrEqualToThreshold" and threshold <= 1
    )


def check_alarms(template: dict[str, Any], findings: list[Finding], counts: Counts) -> None:
    resources: dict[str, Any] = template.get("Resources") or {}
    alarms = [
        resource.get("Properties") or {}
        for resource in resources.values()
        if resource.get("Type") == "AWS::CloudWatch::Alarm"
    ]
    counts.alarms = len(alarms)

    def require(where: str, namespace: str, metric: str, dimension: tuple[str, str] | None, first: bool) -> None:
        watching = [
            alarm
            for alarm in alarms
            if any(
                (ns, name) == (namespace, metric) and (dimension is None or dims.get(dimension[0]) == dimension[1])
                for ns, name, dims in watched_metrics(alarm)
            )
        ]
        wanted = f"{namespace} {metric}" + (f" for {dimension[0]} {dimension[1]}" if dimension else "")
        if not watching:
            findings.append(Finding(where, f"no alarm on {wanted}" + (" > 0" if first else "")))
        elif first and not any(fires_on_first(alarm) for alarm in watching):
            findings.append(Finding(where, f"the alarm on {wanted} does not fire on the first one (> 0)"))

    queues = {name: r for name, r in resources.items() if r.get("Type") == "AWS::SQS::Queue"}
    for queue in queues.values():
        redrive = (queue.get("Properties") or {}).get("RedrivePolicy") or {}
        dlq = referenced(redrive.get("deadLetterTargetArn")) if isinstance(redrive, dict) else None
        if dlq in queues:
            require(dlq, "AWS/SQS", "ApproximateNumberOfMessagesVisible", ("QueueName", dlq), first=True)
    for name, resource in resources.items():
        if resource.get("Type") not in FUNCTION_TYPES:
            continue
        events = ((resource.get("Properties") or {}).get("Events") or {}).values()
        consumed = [referenced((e.get("Properties") or {}).get("Queue")) for e in events if (e or {}).get("Type") == "SQS"]
        if consumed:
            require(name, "AWS/Lambda", "Errors", ("FunctionName", name), first=True)
        for queue in consumed:
            require(queue, "AWS/SQS", "ApproximateAgeOfOldestMessage", ("QueueName", queue), first=False)
    require("Resources", *RECONCILER_METRIC, None, first=True)


def check_throttling(template: dict[str, Any], findings: list[Finding], counts: Counts) -> None:
    resources: dict[str, Any] = template.get("Resources") or {}
    global_settings = ((template.get("Globals") or {}).get("HttpApi") or {}).get("DefaultRouteSettings")
    apis = {
        name: with_globals(global_settings, (r.get("Properties") or {}).get("DefaultRouteSettings"))
        for name, r in resources.items()
        if r.get("Type") == "AWS::Serverless::HttpApi"
    }
    implicit = any(
        (event or {}).get("Type") == "HttpApi" and "ApiId" not in ((event or {}).get("Properties") or {})
        for r in resources.values()
        if r.get("Type") in FUNCTION_TYPES
        for event in ((r.get("Properties") or {}).get("Events") or {}).values()
    )
    if implicit:
        apis["ServerlessHttpApi"] = global_settings
    counts.apis = len(apis)
    for name, settings in apis.items():
        missing = [k for k in ("ThrottlingRateLimit", "ThrottlingBurstLimit") if (settings or {}).get(k) is None]
        if missing:
            findings.append(Finding(name, f"no stage throttling: DefaultRouteSettings has no {' or '.join(missing)}"))


# --- the whole template ----------------------------------------------------------------


def check(template: dict[str, Any]) -> tuple[list[Finding], Counts]:
    findings: list[Finding] = []
    counts = Counts()
    resources: dict[str, Any] = template.get("Resources") or {}
    global_function = (template.get("Globals") or {}).get("Function") or {}
    global_policies = global_function.get("Policies")
    if global_policies is not None:
        check_function_policies("Globals.Function", global_policies, resources, findings, counts)
    for name, resource in resources.items():
        kind = resource.get("Type")
        properties = resource.get("Properties") or {}
        if kind in FUNCTION_TYPES:
            counts.functions += 1
            check_function_policies(name, properties.get("Policies"), resources, findings, counts)
            if kind == "AWS::Serverless::Function":
                deployment = {
                    key: with_globals(global_function.get(key), properties.get(key))
                    for key in ("AutoPublishAlias", "DeploymentPreference")
                }
                check_deployment(name, deployment, findings)
            for event_name, event in (properties.get("Events") or {}).items():
                event_kind = (event or {}).get("Type")
                if event_kind in ("HttpApi", "Api"):
                    counts.routes += 1
                    check_route(f"{name}.Events.{event_name}", template, event_kind, event.get("Properties") or {}, findings)
            url = properties.get("FunctionUrlConfig")
            if isinstance(url, dict) and url.get("AuthType") == "NONE":
                counts.routes += 1
                findings.append(Finding(name, "function URL with AuthType: NONE has no authorizer"))
        elif kind in DATA_TYPES:
            counts.data_resources += 1
            check_data_resource(name, resource, findings)
        elif kind == "AWS::Lambda::Url":
            counts.routes += 1
            if properties.get("AuthType") == "NONE":
                findings.append(Finding(name, "function URL with AuthType: NONE has no authorizer"))
        elif kind == "AWS::IAM::Role":
            for i, policy in enumerate(as_list(properties.get("Policies"))):
                check_document(f"{name} Policies[{i}]", (policy or {}).get("PolicyDocument"), resources, findings, counts)
            for i, arn in enumerate(as_list(properties.get("ManagedPolicyArns"))):
                check_managed_policy(f"{name} ManagedPolicyArns[{i}]", arn, resources, findings)
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
            check_document(name, properties.get("PolicyDocument"), resources, findings, counts)
        elif kind == "AWS::ApiGatewayV2::Route":
            counts.routes += 1
            if properties.get("AuthorizationType", "NONE") == "NONE":
                findings.append(
                    Finding(name, f"route {properties.get('RouteKey', '?')} has AuthorizationType NONE")
                )
    check_alarms(template, findings, counts)
    check_throttling(template, findings, counts)
    return findings, counts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else ROOT / "template.yaml"
    findings, counts = check(load_template(path))
    for finding in findings:
        print(f"template-check: FINDING {finding}")
    if findings:
        print(f"template-check: FAILED, {len(findings)} finding(s) in {path.name}")
        return 1
    print(
        f"template-check: OK {path.name}: {counts.functions} functions, {counts.statements} policy "
        f"statements, {counts.routes} routes: no wildcard action or resource, no broad managed "
        "policy or policy template, every route behind an authorizer; every function behind a "
        f"canary alias with rollback alarms, {counts.data_resources} tables and queues retained "
        f"(tables with point-in-time recovery), {counts.alarms} alarms covering the DLQ, processor "
        f"errors, oldest message age and reconciler violations, {counts.apis} HTTP API(s) with "
        "stage throttling"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
