"""A process's threads, as its host lists them in /proc/PID/task."""

from __future__ import annotations

import os

from hwbp.errors import ProcessNotFound


def threads_of(pid: int) -> tuple[int, ...]:
    """The tids process ``pid`` has now, sorted. Only its own host can list them."""
    try:
        names = os.listdir(f"/proc/{pid}/task")
    except OSError as err:
        raise ProcessNotFound(
            f"process {pid} is not on this host ({err.strerror}): its threads are listed "
            "where it runs",
            task=pid,
        ) from None
    return tuple(sorted(int(n) for n in names if n.isdigit()))


def tgid_of(tid: int) -> int | None:
    """The process (thread group) ``tid`` belongs to, None when it is gone."""
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
