#!/usr/bin/env python3
"""Check the running HTTP API against openapi.yaml with schemathesis.

Usage: infra/api-check.py --state DIR [--api-url URL] [--gateway-bin PATH] [--max-examples N]

With --api-url, checks the gateway already serving there (e.g. `make up`'s). Without it,
starts the local gateway for the stack whose emulators run in DIR (infra/stack.py up
--gateway-port, which reuses running emulators), checks it, and stops the gateway again.
Tokens come from `local-gateway token --state DIR`.

Two passes, each bounded by --max-examples per operation: one as an admin (every route and
action allowed, so the stateful phase can follow the links PUT product → POST order →
GET order → action) and one as a buyer (admin routes and `ship` answer 403). Before them a
product with plenty of stock is put under the SKU the description uses as its example, so
the examples phase reaches 202 and 200 answers.

Checks: all of schemathesis's, except
  - unsupported_method and allow_header_conformance: API Gateway HTTP APIs answer a method
    no route declares with 404 {"message":"Not Found"}, never 405 (and so no Allow header);
    the description lists that 404.
and with these answers also counted as correct for schema-valid requests (positive data):
  - PUT /products/{sku}: 400, because sale_ends_at must be after sale_starts_at (also the
    one a restock keeps), a rule between two fields that JSON Schema cannot state;
  - both: 422, because an Idempotency-Key the same caller used before with another body is
    refused whatever this body is;
  - both: 400 for integers spelled with a fraction (`2.0`), which JSON Schema counts as
    integers and the handlers refuse as "not an integer".
Exits non-zero if a pass finds a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "infra"))
import stack  # noqa: E402 - infra/stack.py: free_port, stop

SPEC = ROOT / "openapi.yaml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"

# Per-operation tuning, as explained in the module docstring.
CONFIG = """
[[operations]]
include-name = "PUT /products/{sku}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]

[[operations]]
include-name = "POST /orders"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]
"""
EXCLUDED_CHECKS = "unsupported_method,allow_header_conformance"


def spec_example_sku() -> str:
    import yaml

    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return spec["components"]["parameters"]["Sku"]["example"]


def token(gateway_bin: Path, state: Path, sub: str, admin: bool) -> str:
    command = [str(gateway_bin), "token", "--state", str(state), "--sub", sub]
    if admin:
        command.append("--admin")
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def start_gateway(state: Path, gateway_bin: Path) -> str:
    port = stack.free_port()
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "infra/stack.py"), "up", "--state", str(state),
            "--gateway-port", str(port), "--gateway-bin", str(gateway_bin),
        ],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"api-check: could not start the gateway in {state}")
    last = result.stdout.strip().splitlines()[-1]
    if not last.startswith("API_URL="):
        raise SystemExit(f"api-check: unexpected output from stack.py up: {last}")
    return last.removeprefix("API_URL=")


def seed(api_url: str, admin_token: str, sku: str) -> None:
    """A product the examples can order from: plenty of stock, no limit, sale always open."""
    body = json.dumps({"name": "API check phone", "stock": 1_000_000}).encode()
    request = urllib.request.Request(
        f"{api_url}/products/{sku}", data=body, method="PUT",
        headers={"authorization": f"Bearer {admin_token}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        raise SystemExit(f"api-check: seeding {sku} answered {error.code}: {error.read()!r}") from None
    if status not in (200, 201):
        raise SystemExit(f"api-check: seeding {sku} answered {status}")


def run_pass(name: str, api_url: str, bearer: str, max_examples: int, seed_value: int, workdir: Path) -> int:
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG, encoding="utf-8")
    command = [
        str(SCHEMATHESIS), "--config-file", str(config), "--no-color", "run", str(SPEC),
        "--url", api_url,
        "--header", f"Authorization: Bearer {bearer}",
        "--checks", "all",
        "--exclude-checks", EXCLUDED_CHECKS,
        "--max-examples", str(max_examples),
        "--seed", str(seed_value),
        "--generation-database", "none",
        "--request-timeout", "15",
        # One worker: Python 3.11's ast.parse, which hypothesis calls to describe its filters, is
        # not safe across threads ("AST constructor recursion depth mismatch").
        "--workers", "1",
        "--warnings", "off",
    ]
    print(f"== schemathesis, {name} pass: {max_examples} examples per operation, seed {seed_value}", flush=True)
    started = time.monotonic()
    # Run from a scratch directory: schemathesis writes its own files into the working directory.
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    # The summary always; the whole report when something failed.
    lines = output.splitlines()
    if result.returncode != 0:
        print("\n".join(l if len(l) <= 2000 else l[:2000] + " [...]" for l in lines))
    else:
        start = next((i for i, l in enumerate(lines) if "SUMMARY" in l), max(len(lines) - 25, 0))
        print("\n".join(lines[start:]))
    print(f"== {name} pass: exit {result.returncode} in {time.monotonic() - started:.1f} s", flush=True)
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", required=True, type=Path, help="the stack's state directory")
    parser.add_argument("--api-url", help="check this running gateway instead of starting one")
    parser.add_argument(
        "--gateway-bin", type=Path, default=ROOT / "target/debug/local-gateway",
        help="the local-gateway binary (default: target/debug/local-gateway)",
    )
    parser.add_argument("--max-examples", type=int, default=25, help="per operation and pass (default 25)")
    parser.add_argument("--seed", type=int, default=20251124, help="schemathesis seed (default fixed)")
    args = parser.parse_args(argv)
    state = args.state.resolve()
    gateway_bin = args.gateway_bin.resolve()

    started_gateway = args.api_url is None
    api_url = args.api_url or start_gateway(state, gateway_bin)
    try:
        admin = token(gateway_bin, state, "api-check-admin", admin=True)
        buyer = token(gateway_bin, state, "api-check-buyer", admin=False)
        seed(api_url, admin, spec_example_sku())
        with tempfile.TemporaryDirectory(prefix="api-check-") as scratch:
            failed = 0
            for name, bearer in (("admin", admin), ("buyer", buyer)):
                workdir = Path(scratch) / name
                workdir.mkdir()
                if run_pass(name, api_url, bearer, args.max_examples, args.seed, workdir) != 0:
                    failed += 1
    finally:
        if started_gateway:
            stack.stop(state, quiet=True, only={stack.GATEWAY})
    if failed:
        print(f"api-check: FAILED ({failed} of 2 passes found failures against {SPEC.name})")
        return 1
    print(f"api-check: OK (2 passes, no failures against {SPEC.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
