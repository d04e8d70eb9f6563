"""The TOML configuration file: every flag a key, flags win, bad keys named."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwbp.agent import main as agent_main
from hwbp.server import main as server_main


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hwbp.toml"
    path.write_text(text)
    return str(path)


def test_the_file_sets_the_arbiters_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'listen = "127.0.0.1:7000"\nack-timeout = 3\ninsecure = true\ndb-sync = "full"\n'
        'log-format = "json"\nleader-ttl = 7.5\n',
    )
    args = server_main.parse_args(["--config", path])
    assert args.listen == "127.0.0.1:7000"
    assert args.ack_timeout == 3.0 and isinstance(args.ack_timeout, float)
    assert args.insecure is True
    assert args.db_sync == "full"
    assert args.log_format == "json"
    assert args.leader_ttl == 7.5


def test_a_flag_on_the_command_line_wins_over_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:7000"\nack-timeout = 3.0\n')
    args = server_main.parse_args(["--ack-timeout", "9", "--config", path])
    assert args.ack_timeout == 9.0
    assert args.listen == "127.0.0.1:7000"


def test_the_agents_switches_and_addresses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'arbiter = "10.0.0.1:50051"\nhost = "web1"\ncpu = 1\ncpus = 4\nbackend = "perf"\n'
        "no-kprobes = true\nrefuse-addr = 0x601000\nbpext = true\n",
    )
    args = agent_main.parse_args(["--config", path])
    assert (args.arbiter, args.host, args.cpu, args.cpus) == ("10.0.0.1:50051", "web1", 1, 4)
    assert args.backend == "perf"
    assert args.kprobes is False and args.bpext is True
    assert args.refuse_addr == 0x601000
    assert agent_main.parse_args(["--config", path, "--cpu", "3"]).cpu == 3


def test_a_hex_string_is_an_address_too(tmp_path: Path) -> None:
    path = write(tmp_path, 'refuse-addr = "0x1000"\ncpu = 0\n')
    assert agent_main.parse_args(["--config", path]).refuse_addr == 0x1000


def test_a_switch_set_false_keeps_its_default(tmp_path: Path) -> None:
    path = write(tmp_path, "no-kprobes = false\nfleet = false\ncpu = 0\n")
    assert agent_main.parse_args(["--config", path]).kprobes is True


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("ack-timout = 2.0\n", ["unknown key 'ack-timout'"]),
        ("ack_timeout = 2.0\n", ["unknown key 'ack_timeout'", "did you mean 'ack-timeout'"]),
        ('ack-timeout = "soon"\n', ["key 'ack-timeout'", "expected a number", "'soon'"]),
        ('insecure = "yes"\n', ["key 'insecure'", "expected true or false"]),
        ("listen = 50051\n", ["key 'listen'", "expected a string", "an integer"]),
        ('db-sync = "sometimes"\n', ["key 'db-sync'", "not one of normal, full"]),
        ("[arbiter]\nlisten = 'x'\n", ["unknown key 'arbiter'", "top level"]),
        ("listen = \n", ["not valid TOML"]),
    ],
)
def test_a_bad_file_names_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as stop:
        server_main.parse_args(["--config", path])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert path in err
    for word in words:
        assert word in err


def test_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        agent_main.parse_args(["--config", str(tmp_path / "nope.toml"), "--cpu", "0"])
    assert "cannot read config" in capsys.readouterr().err
