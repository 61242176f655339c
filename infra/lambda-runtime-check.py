#!/usr/bin/env python3
"""Prove the Lambda runtime loop of every function binary, not only its handler.

Runs the real debug binaries (each `main` with lambda_http::run / lambda_runtime::run) under
`cargo lambda watch`, the Lambda Runtime API emulator, on 127.0.0.1, with the environment of a
running local stack, and sends them the sample events in events/ with `cargo lambda invoke`:
events in and responses out go through the runtime's serialisation, as on AWS.

  products PUT -> 201, GET -> 200 with "available"      place-order -> 202
  get-order -> 200 queued|pending                        advance-order pay -> 409 invalid_transition or 200
  process-orders, unknown orders (dropped) and one record that is no order -> only it in
    batchItemFailures (partial batch response)
  process-orders, the order placed above -> no failures, and get-order then says pending
  expire-orders, that order's timeout before its deadline -> no failures (sent again), still pending;
    a timeout naming no order -> its record in batchItemFailures
  reconcile, a scheduled event -> a summary with products, violations, unsettled

Usage: lambda-runtime-check.py STATE/stack.env   (written by `infra/stack.py up`)
Prints one PASS/FAIL line per check; exits non-zero on any failure or missing prerequisite.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARGO_LAMBDA = ROOT / ".tools/venv/bin/cargo-lambda"
BINS = ("products", "place-order", "get-order", "advance-order", "process-orders", "expire-orders", "reconcile")
REQUIRED = ("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS", "TABLE_NAME", "ORDERS_QUEUE_URL",
            "PAYMENT_TIMEOUTS_QUEUE_URL")
INVOKE_TIMEOUT_S = 60
failures = 0


def die(message: str) -> None:
    print(f"lambda-runtime-check: {message}", file=sys.stderr)
    sys.exit(2)


def read_env(path: Path) -> dict[str, str]:
    if not path.is_file():
        die(f"stack env {path} not found (start the stack: make stack-up STATE=...)")
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = " ".join(shlex.split(value))
    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        die(f"{path} lacks {', '.join(missing)}")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def event(name: str, sku: str | None = None, order_id: str | None = None, key: str | None = None) -> dict:
    """events/NAME.json with the SKU, order id or idempotency key swapped for this run's."""
    text = (ROOT / "events" / f"{name}.json").read_text()
    if sku:
        text = text.replace("SKU-1", sku)
    if order_id:
        text = text.replace("0123456789abcdef0123456789abcdef", order_id)
    e = json.loads(text)
    if key:
        e["headers"]["idempotency-key"] = key
    return e


def invoke(port: int, function: str, payload: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(payload, f)
    try:
        run = subprocess.run(
            [CARGO_LAMBDA, "lambda", "invoke", function, "--data-file", f.name,
             "--invoke-address", "127.0.0.1", "--invoke-port", str(port), "--color", "never"],
            capture_output=True, text=True, timeout=INVOKE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"invoke_failed": f"no answer in {INVOKE_TIMEOUT_S} s"}
    finally:
        os.unlink(f.name)
    try:
        return json.loads(run.stdout)
    except ValueError:
        return {"invoke_failed": (run.stdout + run.stderr).strip()[-500:]}


def check(name: str, ok: bool, shown: object) -> None:
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {json.dumps(shown)[:300]}", flush=True)


def http(response: dict) -> tuple[object, dict]:
    """(statusCode, parsed body) of an API Gateway v2 response."""
    try:
        body = json.loads(response.get("body") or "null") or {}
    except ValueError:
        body = {}
    return response.get("statusCode", response), body


def sqs_record(message_id: str, body: dict) -> dict:
    record = json.loads((ROOT / "events/process-orders.json").read_text())["Records"][0]
    return {**record, "messageId": message_id, "body": json.dumps(body)}


def checks(port: int) -> None:
    run_id = uuid.uuid4().hex[:12]
    sku, user = f"SKU-RT-{run_id}", "user-alice"

    status, body = http(invoke(port, "products", event("put-product", sku=sku)))
    check("products PUT -> 201", status == 201, status)
    status, body = http(invoke(port, "products", event("get-product", sku=sku)))
    check("products GET -> 200 with available", status == 200 and "available" in body, [status, body])

    status, body = http(invoke(port, "place-order", event("place-order", sku=sku, key=f"rt-{run_id}")))
    check("place-order -> 202", status == 202 and bool(body.get("order_id")), [status, body])
    order_id = body.get("order_id", "0" * 32)

    status, body = http(invoke(port, "get-order", event("get-order", order_id=order_id)))
    check("get-order -> 200 queued|pending", status == 200 and body.get("status") in ("queued", "pending"),
          [status, body.get("status")])

    status, body = http(invoke(port, "advance-order", event("advance-order", order_id=order_id)))
    code = (body.get("error") or {}).get("code")
    check("advance-order pay -> 409 invalid_transition or 200",
          (status, code) == (409, "invalid_transition") or status == 200, [status, code or body.get("status")])

    # The fixture's orders were never written: re-drive copies, dropped. A record that is not an
    # order at all is the batch's one failure.
    fixture = json.loads((ROOT / "events/process-orders.json").read_text())
    not_an_order = {**fixture["Records"][0], "messageId": f"bad-{run_id}", "body": "not an order"}
    fixture["Records"].append(not_an_order)
    response = invoke(port, "process-orders", fixture)
    failed = [f.get("itemIdentifier") for f in response.get("batchItemFailures") or []]
    check("process-orders unknown orders dropped, garbage -> 1 batchItemFailure",
          failed == [f"bad-{run_id}"], response)

    message = {"order_id": order_id, "sku": sku, "quantity": 1, "user_id": user}
    response = invoke(port, "process-orders", {"Records": [sqs_record(f"rt-{run_id}", message)]})
    check("process-orders placed order -> no batchItemFailures",
          response.get("batchItemFailures") == [], response)

    status, body = http(invoke(port, "get-order", event("get-order", order_id=order_id)))
    check("get-order after processing -> 200 pending", (status, body.get("status")) == (200, "pending"),
          [status, body.get("status")])

    response = invoke(port, "expire-orders", event("expire-orders", order_id=order_id))
    check("expire-orders, timeout before the deadline -> no batchItemFailures",
          response.get("batchItemFailures") == [], response)
    status, body = http(invoke(port, "get-order", event("get-order", order_id=order_id)))
    check("get-order after an early timeout -> 200 pending", (status, body.get("status")) == (200, "pending"),
          [status, body.get("status")])
    fixture = event("expire-orders")
    response = invoke(port, "expire-orders", fixture)
    failed = [f.get("itemIdentifier") for f in response.get("batchItemFailures") or []]
    check("expire-orders, unknown order -> 1 batchItemFailure",
          failed == [fixture["Records"][0]["messageId"]], response)

    response = invoke(port, "reconcile", event("reconcile"))
    check("reconcile -> summary", isinstance(response, dict)
          and {"products", "violations", "unsettled"} <= set(response), response)


def kill(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop(watch: subprocess.Popen) -> None:
    """SIGTERM cargo lambda watch, which stops the functions; they run in process groups of
    their own, so any that outlive it are stopped by group too."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(watch.pid)],
                              capture_output=True, text=True).stdout.split()
    kill(watch.pid, signal.SIGTERM)
    try:
        watch.wait(timeout=10)
    except subprocess.TimeoutExpired:
        kill(watch.pid, signal.SIGKILL)
        watch.wait()
    for pgid in map(int, children):
        kill(pgid, signal.SIGKILL)


def log_tail(log) -> str:
    """The functions' own log lines and the emulator's errors; its INFO lines are noise."""
    log.seek(0)
    lines = [l for l in log.read().splitlines() if " INFO " not in l and len(l) < 2000]
    return "\n".join(lines[-40:])


def main() -> int:
    if len(sys.argv) != 2:
        die("usage: lambda-runtime-check.py STATE/stack.env")
    env = {**os.environ, **read_env(Path(sys.argv[1]))}
    if not os.access(CARGO_LAMBDA, os.X_OK):
        die(f"{CARGO_LAMBDA} is missing (run `make tools`)")
    started = time.monotonic()
    bins = [arg for b in BINS for arg in ("--bin", b)]
    subprocess.run(["cargo", "build", "--locked", "--quiet", *bins], cwd=ROOT, check=True)

    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"lambda-runtime-check-{port}.log", "w+")
    watch = subprocess.Popen(
        [CARGO_LAMBDA, "lambda", "watch", "--ignore-changes", "--quiet", "--color", "never",
         "--invoke-address", "127.0.0.1", "--invoke-port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    # Stop the emulator however this ends, SIGTERM included.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        deadline = time.monotonic() + 15
        while True:
            if watch.poll() is not None or time.monotonic() > deadline:
                die(f"cargo lambda watch did not start on 127.0.0.1:{port}:\n{log_tail(log)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        checks(port)
    finally:
        stop(watch)
        if failures:
            print(f"--- cargo lambda watch log ---\n{log_tail(log)}", file=sys.stderr)
        log.close()
        os.unlink(log.name)
    print(f"{'FAILED' if failures else 'ok'}: {failures} failed, {time.monotonic() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
