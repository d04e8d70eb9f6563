"""Generate the Python code for protos/ beside the .proto files, or check it has not drifted.

protoc names Python modules after proto paths (hwbp/v1/x.proto -> hwbp.v1.x_pb2), which is
where the package puts them: protos/hwbp/v1 is installed as ``hwbp.v1``. The type stubs of
the messages (``*_pb2.pyi``) and of the services (``*_pb2_grpc.pyi``: stubs, servicers with
typed requests and responses) come from mypy-protobuf, so ``mypy --strict`` checks every
field and every servicer against the .proto files. The check generates into a scratch
directory and compares every file with the committed one.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = PROTOS / "hwbp" / "v1"
GENERATED = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi", "__init__.py")


def plugin(name: str) -> str:
    """A protoc plugin installed beside this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extras (mypy-protobuf)")
    return found


def generate() -> dict[str, str]:
    """Return {file name: content} of the generated package."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in OUT.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out=quiet:{tmp}",
            f"--mypy_grpc_out=quiet:{tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = {p.name: p.read_text() for p in sorted((Path(tmp) / "hwbp" / "v1").iterdir())}
    files["__init__.py"] = (
        '"""Generated from the .proto files here by scripts/protos.py; do not edit."""\n'
    )
    return files


def present() -> dict[str, str]:
    return {p.name: p.read_text() for pattern in GENERATED for p in OUT.glob(pattern)}


def main() -> int:
    files = generate()
    if sys.argv[1:] == ["--check"]:
        have = present()
        drift = sorted(n for n in files.keys() | have.keys() if files.get(n) != have.get(n))
        if drift:
            print("generated code drifted from protos/ (run `make proto`): " + ", ".join(drift))
            return 1
        print(f"protos: {len(files)} generated files match protos/")
        return 0
    for name in present().keys() - files.keys():
        (OUT / name).unlink()
    for name, text in files.items():
        (OUT / name).write_text(text)
    print(f"protos: wrote {len(files)} files to protos/hwbp/v1/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
