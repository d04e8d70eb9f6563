"""Generate the Python code for protos/ into protos/hwbp_pb/, or check it has not drifted.

protoc names Python modules after proto paths (hwbp/v1/x.proto -> hwbp.v1.x_pb2),
which would put generated gRPC code inside the pure core package; we generate into
a scratch directory and rewrite those imports to the flat hwbp_pb package.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = PROTOS / "hwbp_pb"
IMPORT = re.compile(r"^from hwbp\.v1 import ", re.M)


def generate() -> dict[str, str]:
    """Return {file name: content} of the generated package."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "hwbp").rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = {}
        for path in sorted((Path(tmp) / "hwbp" / "v1").iterdir()):
            files[path.name] = IMPORT.sub("from hwbp_pb import ", path.read_text())
    files["__init__.py"] = (
        '"""Generated from protos/hwbp/v1 by scripts/protos.py; do not edit."""\n'
    )
    return files


def main() -> int:
    files = generate()
    if sys.argv[1:] == ["--check"]:
        present = {p.name: p.read_text() for p in OUT.glob("*.py*")} if OUT.is_dir() else {}
        drift = sorted(n for n in files.keys() | present.keys() if files.get(n) != present.get(n))
        if drift:
            print("generated code drifted from protos/ (run `make proto`): " + ", ".join(drift))
            return 1
        print(f"protos: {len(files)} generated files match protos/")
        return 0
    OUT.mkdir(exist_ok=True)
    for stale in OUT.glob("*.py*"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (OUT / name).write_text(text)
    print(f"protos: wrote {len(files)} files to protos/hwbp_pb/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
