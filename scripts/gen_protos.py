"""Generates Python code and type stubs for protos/ into gen/.

The proto package equals the import path (`dcp.schema.v1`), so nothing is
rewritten after generation. Run with `--check` to fail when gen/ is stale.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path

import google.api  # googleapis-common-protos ships the .proto sources
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
PINNED = {"grpcio-tools": "1.85.1", "mypy-protobuf": "5.1.0"}


def _check_toolchain() -> None:
    for name, version in PINNED.items():
        found = metadata.version(name)
        if found != version:
            sys.exit(f"{name} {version} is pinned, found {found}: pip install -e '.[dev]'")


def _include_dirs() -> list[str]:
    grpc_tools_protos = resources.files("grpc_tools") / "_proto"
    googleapis_root = Path(next(iter(google.api.__path__))).parent.parent
    return [str(PROTOS), str(grpc_tools_protos), str(googleapis_root)]


def generate(out: Path) -> None:
    # protoc finds the mypy plugins on PATH; they sit beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # Only the project's own protos: protos/third_party holds copies for buf lint, and protoc reads the
    # originals from the installed packages (see _include_dirs), so vendoring never changes gen/.
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "dcp").rglob("*.proto"))
    args = ["grpc_tools.protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out}", f"--grpc_python_out={out}"]
    args += [f"--mypy_out={out}", f"--mypy_grpc_out={out}", *sources]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    for module_dir in {p.parent for p in out.rglob("*.py")} | {p.parent for p in out.rglob("*.pyi")}:
        package = module_dir
        while package != out:
            (package / "__init__.py").touch()
            package = package.parent


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    if cmp.left_only or cmp.right_only or cmp.diff_files:
        return False
    mismatch = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)[1]
    return not mismatch and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if gen/ differs from protos/")
    options = parser.parse_args()
    _check_toolchain()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "gen"
        fresh.mkdir()
        generate(fresh)
        if options.check:
            if not GEN.exists() or not _same_tree(fresh, GEN):
                sys.exit("gen/ is stale: run python scripts/gen_protos.py and commit the result")
            return
        shutil.rmtree(GEN, ignore_errors=True)
        shutil.copytree(fresh, GEN)


if __name__ == "__main__":
    main()
