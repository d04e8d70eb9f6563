"""The process helper every integration test, the load generator and the benchmarks use."""

from __future__ import annotations

import time

import pytest

from tests.integration import procs

SILENT = ["timeit", "-n", "1", "-r", "1", "import time; time.sleep(20)"]


@pytest.mark.timeout(60)
def test_a_silent_child_does_not_block_start_past_its_timeout() -> None:
    """The child prints nothing for 20 s; start() must give up after its 0.5 s, stop the
    child and say so, not sit in a read until the child speaks."""
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="'ready'"):
        procs.start(SILENT, "silent", wait_for="ready", timeout=0.5)
    assert time.monotonic() - began < 10, "start() waited for the child's output"


def test_a_child_that_exits_first_is_named_with_its_output() -> None:
    with pytest.raises(RuntimeError, match=r"exited \(0\) before printing 'ready'"):
        procs.start(["this"], "zen", wait_for="ready", timeout=30)


def test_waited_for_line_is_returned_and_the_rest_is_pumped() -> None:
    proc, line = procs.start(["this"], "zen", wait_for="Beautiful")
    assert line == "Beautiful is better than ugly."
    assert proc.popen.wait(timeout=30) == 0
    proc.stop()  # joins the pump: every line is in
    assert any("Namespaces" in x for x in proc.lines)


def test_without_wait_for_the_caller_owns_the_output() -> None:
    proc, line = procs.start(["this"], "zen")
    out, _ = proc.popen.communicate(timeout=30)
    assert line == "" and "Zen of Python" in out and proc.pump is None
