"""`make run` (scripts/run_local.py): an arbiter, this machine's agents, and metrics on a
loopback port it prints. Run with ``--backend sim`` (``make run BACKEND=sim``) and a port
picked at run time, as a real process, stopped with SIGINT as Ctrl-C would."""

from __future__ import annotations

import os
import re
import socket
import threading
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from hwbp.load import procs

METRICS = re.compile(r"Metrics: http://(127\.0\.0\.1:\d+)/metrics")


def connected_agents(metrics: str, host: str) -> float:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hwbp_agents_connected" and sample.labels.get("host") == host:
                return sample.value
    return 0.0


def test_make_run_with_simulated_cpus_prints_where_its_metrics_are() -> None:
    run, line = procs.start(
        ["scripts/run_local.py", "--listen", "127.0.0.1:0", "--backend", "sim"],
        "make run",
        wait_for="Metrics: http://",
    )
    try:
        found = METRICS.search(line)
        assert found is not None, line
        said = "".join(run.output())
        assert "backend sim: simulated CPUs" in said
        cpus = os.cpu_count() or 1
        host = socket.gethostname()
        pause = threading.Event()
        for _ in range(300):  # the agents start after the arbiter's address is known
            if connected_agents(found.group(1), host) == cpus:
                break
            pause.wait(0.1)
        assert connected_agents(found.group(1), host) == cpus
    finally:
        assert run.stop() == 0
