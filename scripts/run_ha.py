"""`make run-ha`: a real etcd, three arbiter replicas sharing it, one agent per local CPU.

The replicas listen on 127.0.0.1 ports BASE, BASE+1 and BASE+2 and elect one leader; the
agents and your shell get all three (HWBP_ARBITER=A,B,C) and follow the leader. Kill
the leader (its pid is printed) and watch another take over. etcd keeps its data in
var/etcd-ha/ (delete it for a fresh ledger). Ctrl-C or SIGTERM stops everything.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from load.etcd import Etcd  # noqa: E402  (the repository's own copy, before installing)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-port", type=int, default=50051)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--leader-ttl", type=float, default=5.0)
    p.add_argument("--backend", default="auto", choices=["auto", "perf", "sim"])
    args = p.parse_args()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    host = socket.gethostname()
    etcd = Etcd(ROOT / "var" / "etcd-ha")
    procs: list[subprocess.Popen[str]] = []
    try:
        etcd.start()
        addresses = [f"127.0.0.1:{args.base_port + i}" for i in range(args.replicas)]
        for address in addresses:
            arbiter = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hwbp.server",
                    "--listen",
                    address,
                    "--store",
                    etcd.url,
                    "--leader-ttl",
                    str(args.leader_ttl),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(arbiter)
            assert arbiter.stdout is not None
            if "listening on" not in arbiter.stdout.readline():
                print(f"the arbiter on {address} did not start", file=sys.stderr)
                return 1
        endpoints = ",".join(addresses)
        cpus = os.cpu_count() or 1
        for c in range(cpus):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "hwbp.agent",
                        "--arbiter",
                        endpoints,
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
            )
        pids = ", ".join(f"{a} pid {pr.pid}" for a, pr in zip(addresses, procs, strict=False))
        print(
            f"""
etcd on {etcd.address} (pid {etcd.pid}, data in {etcd.data_dir})
{args.replicas} arbiter replicas: {pids}
{cpus} agent(s) for host {host!r}, following the leader

Try, in another shell:
  export HWBP_ARBITER={endpoints}
  .venv/bin/hwbpctl cluster
  .venv/bin/hwbpctl reserve --host {host} --cpu 0 --addr 0x601040 --len 8 --type w --owner me
  kill -9 <the leader's pid>; sleep {args.leader_ttl + 2:g}; .venv/bin/hwbpctl cluster
  .venv/bin/hwbpctl ls

Ctrl-C stops etcd, the arbiters and the agents.
""",
            flush=True,
        )
        while etcd.popen is not None and etcd.popen.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        etcd.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
