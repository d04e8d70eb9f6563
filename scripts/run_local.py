"""`make run`: an arbiter and one agent per local CPU (backend auto), until Ctrl-C.

`make run BACKEND=sim` simulates the CPUs instead of programming real debug registers.
The arbiter serves Prometheus metrics on a loopback port picked at start (printed).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C or SIGTERM stops everything, even when started with SIGINT ignored (a shell's
    # background job).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:50051")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "perf", "sim"],
        help="auto: real registers where perf_event_open allows, else simulated",
    )
    p.add_argument(
        "--metrics-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the arbiter serves /metrics (default: a free loopback port)",
    )
    p.add_argument("--tls-dir", type=Path, help="`make certs` output: mutual TLS, policy, audit")
    args = p.parse_args()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    host = socket.gethostname()
    secure: list[str] = []
    agent_tls: list[str] = []
    if args.tls_dir is not None:
        d = args.tls_dir
        if not (d / f"agent-{host}.pem").exists():
            print(f"no agent certificate for {host} in {d}: run `make certs`", file=sys.stderr)
            return 1
        secure = [*_tls(d, "arbiter"), "--policy", str(d / "policy.toml")]
        secure += ["--audit-log", str(ROOT / "var" / "audit.jsonl")]
        agent_tls = _tls(d, f"agent-{host}")
    serve = ["--listen", args.listen, "--metrics-listen", args.metrics_listen, *secure]
    arbiter = subprocess.Popen(
        [sys.executable, "-m", "hwbp.server", *serve],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert arbiter.stdout is not None
    metrics = "?"
    for line in arbiter.stdout:  # "metrics on HOST:PORT", then "... listening on HOST:PORT"
        if line.startswith("metrics on "):
            metrics = line.split()[-1]
        if "listening on" in line:
            break
    else:
        arbiter.wait()
        return 1
    address = line.split()[-1]
    cpus = os.cpu_count() or 1
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hwbp.agent",
                "--arbiter",
                address,
                "--host",
                host,
                "--cpu",
                str(c),
                "--cpus",
                str(cpus),
                "--backend",
                args.backend,
                *agent_tls,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for c in range(cpus)
    ]
    print(
        f"""
hwbp-arbiter is listening on {address}, with {cpus} agent(s) for host {host!r}
({_backend(args.backend)}).
Metrics: http://{metrics}/metrics

Try, in another shell:
  export HWBP_ARBITER={address}{_client_env(args.tls_dir)}
  .venv/bin/hwbpctl cpus
  .venv/bin/hwbpctl reserve --host {host} --cpu 0 --addr 0x601040 --len 8 --type w --owner me
  .venv/bin/hwbpctl ls
  .venv/bin/hwbpctl watch --count 5
  .venv/bin/hwbpctl release r1

Ctrl-C stops the arbiter and the agents.
""",
        flush=True,
    )
    try:
        while arbiter.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        children: list[subprocess.Popen[Any]] = [*agents, arbiter]
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in children:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


def _backend(kind: str) -> str:
    return {
        "auto": "backend auto: real debug registers where perf_event_open allows, else simulated",
        "perf": "backend perf: real debug registers",
        "sim": "backend sim: simulated CPUs, drive them with `hwbpctl sim ...`",
    }[kind]


def _tls(d: Path, stem: str) -> list[str]:
    return [
        "--tls-cert",
        f"{d}/{stem}.pem",
        "--tls-key",
        f"{d}/{stem}-key.pem",
        "--tls-ca",
        f"{d}/ca.pem",
    ]


def _client_env(d: Path | None) -> str:
    """With TLS, the shell also needs a client certificate: the sample admin's."""
    if d is None:
        return ""
    return "".join(
        f"\n  export HWBP_TLS_{k}={d.resolve()}/{v}"
        for k, v in (("CERT", "admin-alice.pem"), ("KEY", "admin-alice-key.pem"), ("CA", "ca.pem"))
    )


if __name__ == "__main__":
    raise SystemExit(main())
