"""`make run`: an arbiter and one agent per local CPU (backend auto), until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:50051")
    p.add_argument("--backend", default="auto", choices=["auto", "perf", "sim"])
    args = p.parse_args()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    arbiter = subprocess.Popen(
        [sys.executable, "-m", "server", "--listen", args.listen],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert arbiter.stdout is not None
    line = arbiter.stdout.readline()
    if "listening on" not in line:
        arbiter.wait()
        return 1
    address = line.split()[-1]
    host = socket.gethostname()
    cpus = os.cpu_count() or 1
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
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
(backend {args.backend}: real debug registers where perf_event_open allows, else simulated).

Try, in another shell:
  export HWBP_ARBITER={address}
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
        for proc in [*agents, arbiter]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in [*agents, arbiter]:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
