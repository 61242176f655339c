#!/usr/bin/env python3
"""Checks what `sam build` produced before anyone deploys it.

For each function named (default: every AWS::Serverless::Function in the built template), the
build folder `.aws-sam/build/<LogicalId>/` must hold a `bootstrap` that is:
  - an ELF 64-bit executable for aarch64 (EM_AARCH64), because the template deploys every
    function on arm64 / provided.al2023: ET_EXEC, or ET_DYN that names a program interpreter
    or has an entry point (a position-independent executable, not a shared library);
  - executable by its owner (Lambda runs `bootstrap` as the handler);
  - under 5 MB once zipped as `sam deploy` uploads it (deflate, the folder's files).

Prints one line per function (bootstrap size, zipped size) and exits 1 naming every artifact
that fails a check.
"""

from __future__ import annotations

import argparse
import io
import os
import stat
import struct
import sys
import zipfile
from pathlib import Path

import yaml

EM_AARCH64 = 183
ET_EXEC, ET_DYN = 2, 3
PT_INTERP = 3
MAX_ZIP_BYTES = 5 * 1000 * 1000
MACHINES = {3: "x86", 40: "arm", 62: "x86_64", EM_AARCH64: "aarch64"}


class Loader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !GetAtt, ...) as plain values."""


Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def elf_problem(path: Path) -> str | None:
    """Why `path` is not an aarch64 ELF executable, or None if it is."""
    data = path.read_bytes()
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return "not an ELF file"
    if data[4] != 2:
        return "not a 64-bit ELF"
    endian = "<" if data[5] == 1 else ">"
    e_type, e_machine = struct.unpack_from(endian + "HH", data, 16)
    if e_machine != EM_AARCH64:
        return f"built for {MACHINES.get(e_machine, f'machine {e_machine}')}, not aarch64"
    if e_type == ET_EXEC:
        return None
    if e_type != ET_DYN:
        return f"ELF type {e_type} is not an executable"
    # ET_DYN is either a position-independent executable or a shared library; an executable
    # names a program interpreter, or is static-pie (entry point set).
    (e_entry,) = struct.unpack_from(endian + "Q", data, 24)
    (e_phoff,) = struct.unpack_from(endian + "Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from(endian + "HH", data, 54)
    has_interp = any(
        struct.unpack_from(endian + "I", data, e_phoff + i * e_phentsize)[0] == PT_INTERP
        for i in range(e_phnum)
    )
    if has_interp or e_entry != 0:
        return None
    return "a shared library, not an executable"


def zipped_size(folder: Path) -> int:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for root, _, files in os.walk(folder):
            for name in sorted(files):
                full = Path(root) / name
                z.write(full, full.relative_to(folder))
    return len(buf.getvalue())


def functions_in(template: Path) -> list[str]:
    resources = yaml.load(template.read_text(), Loader=Loader).get("Resources", {})
    return sorted(k for k, v in resources.items() if v.get("Type") == "AWS::Serverless::Function")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path, help="sam build's output folder (.aws-sam/build)")
    parser.add_argument("functions", nargs="*", help="logical ids (default: all in the template)")
    args = parser.parse_args()
    template = args.build_dir / "template.yaml"
    if not template.is_file():
        print(f"artifact check: {template} is missing; run sam build first", file=sys.stderr)
        return 1
    names = args.functions or functions_in(template)
    failures = []
    for name in names:
        bootstrap = args.build_dir / name / "bootstrap"
        if not bootstrap.is_file():
            failures.append(f"{name}: no bootstrap in {bootstrap.parent}")
            continue
        problem = elf_problem(bootstrap)
        if problem is None and not bootstrap.stat().st_mode & stat.S_IXUSR:
            problem = "bootstrap is not executable"
        zipped = zipped_size(bootstrap.parent)
        if problem is None and zipped >= MAX_ZIP_BYTES:
            problem = f"zipped {zipped / 1e6:.2f} MB, over {MAX_ZIP_BYTES / 1e6:.0f} MB"
        size = bootstrap.stat().st_size
        print(
            f"{name:<24} {'FAIL' if problem else 'ok':<4} bootstrap {size / 1e6:5.2f} MB, "
            f"zipped {zipped / 1e6:4.2f} MB" + (f": {problem}" if problem else "")
        )
        if problem:
            failures.append(f"{name}: {problem}")
    if failures:
        print("artifact check failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"artifact check: {len(names)} function(s) ok (aarch64 ELF executables, zipped < 5 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
