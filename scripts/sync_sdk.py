"""Generate the synchronous SDK from the asyncio one, or check it has not drifted.

``client/aio.py`` and ``client/aio_handles.py`` are the source; unasync (the token-level
rewriter httpcore's sync client comes from) drops ``async``/``await``, turns ``__aenter__``
and ``AsyncIterator`` into their sync names, and applies RENAMES below; ruff then sorts
the imports and formats the result. The output is committed as ``client/sdk.py`` and
``client/handles.py`` so readers, type checkers and installs see plain code; ``--check``
(part of ``make test``) regenerates into memory and fails on any difference.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import unasync  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"client/aio.py": "client/sdk.py", "client/aio_handles.py": "client/handles.py"}
# Beyond unasync's own table (and its default Async<Name> -> Sync<Name>, which covers the
# twins in client/concurrency.py): the public names, the modules, the flavour's helpers.
RENAMES = {
    "AsyncClient": "Client",
    "AsyncReservationHandle": "ReservationHandle",
    "AsyncSession": "Session",
    "AsyncTracer": "Tracer",
    "aio": "sdk",
    "aio_handles": "handles",
    "aio_channel": "channel",
    "async_attempts": "sync_attempts",
    "collect_aio": "collect",
}
HEADER = "# Generated from {src} by scripts/sync_sdk.py: edit that file, then `make sdk`.\n"


def _ruff(args: list[str], text: str, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", name, "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ruff {args[0]} failed on the generated {name}:\n{done.stderr}")
    return done.stdout


def generate() -> dict[str, str]:
    """{repository path: content} of the generated files."""
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rule = unasync.Rule("/_async/", "/_sync/", additional_replacements=RENAMES)
        for src, dst in SOURCES.items():
            source = Path(tmp, "_async", Path(dst).name)
            source.parent.mkdir(exist_ok=True)
            source.write_text((ROOT / src).read_text())
            unasync.unasync_files([str(source)], [rule])
            text = HEADER.format(src=src) + Path(tmp, "_sync", Path(dst).name).read_text()
            text = _ruff(["check", "--fix", "--select", "I,F401", "--quiet"], text, dst)
            out[dst] = _ruff(["format", "--quiet"], text, dst)
    return out


def main() -> int:
    files = generate()
    if sys.argv[1:] == ["--check"]:
        drift = [p for p, text in files.items() if (ROOT / p).read_text() != text]
        if drift:
            names = ", ".join(drift)
            print(f"the sync SDK drifted from its asyncio source (run `make sdk`): {names}")
            return 1
        print(f"sdk: {len(files)} generated files match client/aio*.py")
        return 0
    for path, text in files.items():
        (ROOT / path).write_text(text)
    print(f"sdk: wrote {', '.join(files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
