#!/usr/bin/env python3
"""Security review of a SAM template: what a platform team checks before approving it.

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
    NONE.
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
# actions that take no resource: reviewed and allowed.
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


# --- the whole template ----------------------------------------------------------------


def check(template: dict[str, Any]) -> tuple[list[Finding], Counts]:
    findings: list[Finding] = []
    counts = Counts()
    resources: dict[str, Any] = template.get("Resources") or {}
    global_policies = ((template.get("Globals") or {}).get("Function") or {}).get("Policies")
    if global_policies is not None:
        check_function_policies("Globals.Function", global_policies, resources, findings, counts)
    for name, resource in resources.items():
        kind = resource.get("Type")
        properties = resource.get("Properties") or {}
        if kind in FUNCTION_TYPES:
            counts.functions += 1
            check_function_policies(name, properties.get("Policies"), resources, findings, counts)
            for event_name, event in (properties.get("Events") or {}).items():
                event_kind = (event or {}).get("Type")
                if event_kind in ("HttpApi", "Api"):
                    counts.routes += 1
                    check_route(f"{name}.Events.{event_name}", template, event_kind, event.get("Properties") or {}, findings)
            url = properties.get("FunctionUrlConfig")
            if isinstance(url, dict) and url.get("AuthType") == "NONE":
                counts.routes += 1
                findings.append(Finding(name, "function URL with AuthType: NONE has no authorizer"))
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
        "policy or policy template, every route behind an authorizer"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
