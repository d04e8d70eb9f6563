"""How a process-wide breakpoint is counted: once per thread, as the kernel does.

The kernel has no process scope. ``perf_event_open(pid=TID, inherit=1)`` on every thread
that exists makes one breakpoint per thread, each counted against that thread (its
``tsk_pinned``), and every thread created later inherits a copy that counts against it
too. So a process-wide breakpoint adds one to the count of each thread the process has
(``Target.threads``, told by whoever asked, since only the host can list them) and of
each thread it will have: those start with exactly the process-wide breakpoints, which
the ledger counts on one more key per process, ``future_threads(pid)``, a negative
number that no real tid can be.
"""

from __future__ import annotations

from hwbp.model import Scope, Target


def future_threads(pid: int) -> int:
    """The counter key of the threads process ``pid`` has not created yet."""
    return -pid


def task_keys(target: Target) -> tuple[int, ...]:
    """Every task key a breakpoint at ``target`` counts on (empty: a CPU-bound one)."""
    if target.scope is Scope.PROCESS:
        assert target.task is not None  # a process scope always names its process
        return (*target.threads, future_threads(target.task))
    return () if target.task is None else (target.task,)


def counts_on(target: Target, task: int) -> bool:
    """Does a breakpoint at ``target`` count against thread (or key) ``task``?"""
    if target.scope is Scope.PROCESS:
        return task in target.threads or task == future_threads(target.task or 0)
    return target.task == task


def describe_key(task: int) -> str:
    """A counter key in words: a thread, or a process's threads to come."""
    return f"task {task}" if task > 0 else f"threads process {-task} creates later"
