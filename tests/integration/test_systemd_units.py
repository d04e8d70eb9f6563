"""The units in deploy/systemd/ and the example configurations in deploy/etc/.

Each unit starts a console script this package installs, with flags that program
accepts, and ``systemd-analyze verify`` (where this machine has it) finds nothing to
say about it. The example configuration files are valid for the programs they are for.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from hwbp.agent import main as agent_main
from hwbp.server import main as server_main
from hwbp.wire import config
from tests.integration import procs

DEPLOY = procs.ROOT / "deploy"
UNITS = {"hwbp-arbiter.service": "hwbp-arbiter", "hwbp-agent@.service": "hwbp-agent"}
BIN = Path(procs.PY).parent  # the venv's console scripts


def directives(unit: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value it is given (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def console_scripts() -> dict[str, str]:
    with open(procs.ROOT / "pyproject.toml", "rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    return scripts


@pytest.mark.parametrize(("name", "program"), sorted(UNITS.items()))
def test_a_unit_starts_an_installed_console_script(name: str, program: str) -> None:
    unit = directives(DEPLOY / "systemd" / name)
    (exec_start,) = unit["Service.ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == program and program in console_scripts()
    assert (BIN / program).exists(), f"{program} is not installed beside {procs.PY}"
    # Its flags are the program's (specifiers filled in as systemd would).
    filled = [a.replace("%i", "3").replace("%d", "/run/credentials/x") for a in argv[1:]]
    flags = [a for a in filled if a.startswith("--")]
    help_text = subprocess.run(
        [procs.PY, "-m", "hwbp.server" if program == "hwbp-arbiter" else "hwbp.agent", "-h"],
        cwd=procs.ROOT,
        env=procs._env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for flag in flags:
        assert flag in help_text, f"{name}: {program} has no {flag}"
    hardening = {"Service.NoNewPrivileges", "Service.ProtectSystem", "Service.PrivateTmp"}
    assert hardening <= set(unit), f"{name} lacks {hardening - set(unit)}"
    assert unit["Service.ProtectSystem"] == ["strict"]
    assert "Install.WantedBy" in unit


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here; the units were only parsed")
    for name, program in UNITS.items():
        text = (DEPLOY / "systemd" / name).read_text()
        # Point ExecStart at the console scripts of this checkout's environment: verify
        # checks that the command exists and is executable.
        (tmp_path / name).write_text(text.replace(f"/usr/local/bin/{program}", str(BIN / program)))
    for name in ("hwbp-arbiter.service", "hwbp-agent@0.service"):
        done = subprocess.run(
            [tool, "verify", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        # Unknown or misspelt keys are only warnings (exit 0): any output is a finding.
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@pytest.mark.parametrize(
    ("name", "program"), [("arbiter.toml", "hwbp-arbiter"), ("agent.toml", "hwbp-agent")]
)
def test_the_example_configuration_is_valid(name: str, program: str) -> None:
    path = DEPLOY / "etc" / name
    keys = set(config.load(path))
    if program == "hwbp-arbiter":
        args = server_main.parse_args(["--config", str(path)])
    else:  # the unit gives --cpu
        args = agent_main.parse_args(["--config", str(path), "--cpu", "0"])
    assert keys and all(getattr(args, k.replace("-", "_")) is not None for k in keys)
