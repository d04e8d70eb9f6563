"""The same operations on this machine's kernel and through the arbiter: both must agree.

Each test runs one sequence twice: on the real kernel (perf_event_open breakpoints, and
PTRACE_POKEUSER / PEEKUSER on a real child's ``u_debugreg``), and through the SDK against
an arbiter with a simulated host of the same CPU count. It compares what each answered
(errno by errno) and what each reads back. The kernel is the reference; skipped only
where this kernel refuses the operation itself (no perf breakpoints, no ptrace, or
debug registers held by someone else), saying so.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Iterator

import pytest

from hwbp.agent import perf_sys as ps
from hwbp.agent.perf import probe as perf_probe
from hwbp.arch import TASK_SIZE_MAX
from hwbp.client.handles import ReservationHandle, Session
from hwbp.client.sdk import Client
from hwbp.errors import HwbpError
from tests.integration import procs
from tests.integration.kernel_ptrace import Traced
from tests.integration.kernel_ptrace import probe as ptrace_probe
from tests.integration.targets import Target

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

TSM = TASK_SIZE_MAX
HOST = "fidelity"
NCPUS = os.cpu_count() or 1

for _reason in (perf_probe(), ptrace_probe()):
    if _reason is not None:
        pytest.skip(_reason, allow_module_level=True)


def outcome(call: Callable[[], object]) -> str:
    """'ok', or the errno name the call failed with (kernel OSError or arbiter error)."""
    try:
        call()
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err.errno))
    except HwbpError as err:
        return errno.errorcode.get(err.errno, str(err.errno))
    return "ok"


def name(code: int) -> str:
    return "ok" if code == 0 else errno.errorcode.get(code, str(code))


def like_this_host() -> list[str]:
    """Agent flags for a simulated host that offers what this machine does."""
    features = ps.host_features()
    return [
        *(["--bpext"] if features.bpext else []),
        *([] if features.kprobes else ["--no-kprobes"]),
        *([] if features.privileged else ["--unprivileged"]),
    ]


@pytest.fixture(scope="module")
def client(arbiter: str) -> Iterator[Client]:
    fleet = procs.start_fleet(arbiter, HOST, NCPUS, *like_this_host())
    try:
        with Client(arbiter) as c:
            yield c
    finally:
        fleet.stop()


@pytest.fixture
def session(client: Client) -> Iterator[Session]:
    with client.session(ttl=30, owner="fidelity") as s:
        yield s


@pytest.fixture
def cpu() -> int:
    """Where the traced children run (pinned, so a CPU-bound holder elsewhere is apart)."""
    return max(os.sched_getaffinity(0))


@pytest.fixture
def children() -> Iterator[list[Target]]:
    made: list[Target] = []
    try:
        yield made
    finally:
        for t in made:
            t.kill()


def traced(children: list[Target], cpu: int) -> Traced:
    t = Target(cpu)
    children.append(t)
    return Traced(t)


def perf_open(bp_type: int, addr: int, length: int = 8, *, cpu: int = 0) -> int:
    """A CPU-bound breakpoint (pid -1), as the arbiter's cpu scope asks for."""
    attr = ps.breakpoint_attr(
        bp_type=bp_type, addr=addr, length=length, disabled=True, exclude_kernel=True
    )
    return ps.perf_event_open(attr, pid=-1, cpu=cpu)


def kernel_open(bp_type: int, addr: int, length: int = 8) -> str:
    def call() -> None:
        os.close(perf_open(bp_type, addr, length))

    return outcome(call)


def peeks(regs: Callable[[int], int]) -> list[int]:
    return [regs(n) for n in (0, 1, 2, 3, 6, 7)]


def reserve(session: Session, addr: int, kind: str) -> ReservationHandle:
    """The arbiter's CPU-bound breakpoint on cpu 0 (execute: the generic length 8)."""
    return session.reserve(HOST, cpu=0, addr=addr, len=8, type=kind)


# --- 1. execute breakpoints just below TASK_SIZE_MAX ------------------------------------


def test_exec_breakpoints_below_task_size_max(
    session: Session, children: list[Target], cpu: int
) -> None:
    """arch_check_bp_in_kernelspace() checks one byte of an execute breakpoint
    (X86_BREAKPOINT_LEN_X == LEN_1): at TASK_SIZE_MAX-1 it is a user breakpoint, at
    TASK_SIZE_MAX a kernel one (EINVAL). A CPU-bound open, a modify in place, and the
    ptrace path (ptrace_write_dr7, then ptrace_set_breakpoint_addr; and a DR7 write of 0,
    which turns DR0 into a disabled exec/len-8 breakpoint) all agree."""
    addrs = (TSM - 4, TSM - 1, TSM)
    kernel_opens = [kernel_open(ps.HW_BREAKPOINT_X, a) for a in addrs]
    held: list[ReservationHandle] = []

    def hold(addr: int) -> None:
        held.append(reserve(session, addr, "x"))

    arbiter_opens = [outcome(functools.partial(hold, a)) for a in addrs]
    assert kernel_opens == arbiter_opens == ["ok", "ok", "EINVAL"]

    fd = perf_open(ps.HW_BREAKPOINT_X, 0x400000)
    try:
        moved = ps.breakpoint_attr(
            bp_type=ps.HW_BREAKPOINT_X, addr=TSM - 1, length=8, disabled=True, exclude_kernel=True
        )
        kernel_modify = outcome(lambda: ps.modify_attributes(fd, moved))
    finally:
        os.close(fd)
    held.append(reserve(session, 0x400000, "x"))
    assert kernel_modify == outcome(lambda: held[-1].modify(addr=TSM - 1)) == "ok"
    for h in held:
        h.release()

    with traced(children, cpu) as k:
        kernel_steps = [name(k.poke(7, 0x1)), name(k.poke(0, TSM - 1))]
        kernel_regs = peeks(k.peek)
    tracer = session.attach(HOST, children[-1].pid)
    arbiter_steps = [outcome(lambda: tracer.poke(7, 0x1)), outcome(lambda: tracer.poke(0, TSM - 1))]
    assert kernel_steps == arbiter_steps == ["ok", "ok"]
    assert kernel_regs == peeks(tracer.peek) == [TSM - 1, 0, 0, 0, 0xFFFF0FF0, 0x1]

    with traced(children, cpu) as k:
        kernel_steps = [name(k.poke(0, TSM - 4)), name(k.poke(7, 0))]
        kernel_regs = peeks(k.peek)
    tracer = session.attach(HOST, children[-1].pid)
    arbiter_steps = [outcome(lambda: tracer.poke(0, TSM - 4)), outcome(lambda: tracer.poke(7, 0))]
    assert kernel_steps == arbiter_steps == ["ok", "ok"]
    assert kernel_regs == peeks(tracer.peek) == [TSM - 4, 0, 0, 0, 0xFFFF0FF0, 0]


# --- 2. a failed DR7 write leaves nothing armed behind DR7 ------------------------------


def test_failed_dr7_write_leaves_nothing_armed(
    client: Client, session: Session, children: list[Target], cpu: int
) -> None:
    """ptrace_write_dr7(): slot 0 is enabled (write, 1 byte), slot 2 asks for R/W=10 and
    fails (EINVAL); the second pass restores old_dr7, which turns slot 0 back into a
    disabled exec/len-8 breakpoint at TASK_SIZE_MAX-4 (valid: one byte is checked). The
    address then moves to a watched word: a 2-byte store there must not trap, DR6 stays
    clear, DR7 reads 0, and the registers the arbiter installed agree with that."""
    with traced(children, cpu) as k:
        word = k.target.addr + 0x18
        kernel_steps = [
            name(k.poke(0, TSM - 4)),
            name(k.poke(7, 0x02010011)),
            name(k.poke(0, word)),
        ]
        kernel_traps = k.run("s 0x18 2")
        kernel_regs = peeks(k.peek)
    assert kernel_steps == ["ok", "EINVAL", "ok"]
    assert kernel_traps == []

    pid = children[-1].pid
    tracer = session.attach(HOST, pid)
    arbiter_steps = [
        outcome(lambda: tracer.poke(0, TSM - 4)),
        outcome(lambda: tracer.poke(7, 0x02010011)),
        outcome(lambda: tracer.poke(0, word)),
    ]
    assert arbiter_steps == kernel_steps
    image = client.context_switch(HOST, 0, pid)
    try:
        hit = client.access(HOST, 0, word, 2, "w")
    finally:
        client.context_switch(HOST, 0, None)
    assert hit.hits == ()  # what the kernel did: no trap
    assert image.dr7 & 0xFF == 0  # nothing is armed on the CPU, as DR7 reads
    assert peeks(tracer.peek) == kernel_regs == [word, 0, 0, 0, 0xFFFF0FF0, 0]


# --- 4. PTRACE_DETACH keeps the task's breakpoints --------------------------------------


def _hold_task(pid: int) -> list[int]:
    """Every breakpoint task ``pid`` can still get (perf, on every CPU). A task's own
    breakpoints and CPU-bound ones count against it; other tasks' never do, so this
    measures the task whatever else runs on this shared machine."""
    fds: list[int] = []
    while len(fds) < 16:
        attr = ps.breakpoint_attr(
            bp_type=ps.HW_BREAKPOINT_W,
            addr=0x10000 + 8 * len(fds),
            length=8,
            disabled=True,
            exclude_kernel=True,
        )
        try:
            fds.append(ps.perf_event_open(attr, pid=pid, cpu=-1))
        except OSError:
            break
    return fds


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _task_free(pid: int) -> int:
    fds = _hold_task(pid)
    _close(fds)
    return len(fds)


def _arbiter_task_free(session: Session, pid: int) -> tuple[list[ReservationHandle], str]:
    """The arbiter's answer to the same: task reservations until one is refused."""
    held: list[ReservationHandle] = []
    refused = ""
    while not refused and len(held) < 16:
        got = outcome(
            lambda: held.append(
                session.reserve(HOST, task=pid, addr=0x10000 + 8 * len(held), len=8, type="w")
            )
        )
        refused = "" if got == "ok" else got
    return held, refused


def test_detach_keeps_breakpoints_and_their_slot(
    session: Session, children: list[Target], cpu: int
) -> None:
    """flush_ptrace_hw_breakpoint() runs only at exit and exec (in the arbiter also on
    an explicit flush, and when the session's lease ends). After PTRACE_DETACH and a new
    attach, DR0, DR6 and DR7 read back as written and the slot stays taken: the task can
    get one breakpoint fewer than a task without one, and a POKE that needs another slot
    once it has no more gets ENOSPC."""
    fresh = Target(cpu)
    children.append(fresh)
    for _ in range(5):  # the machine is shared: CPU-bound users may come and go meanwhile
        before = _task_free(fresh.pid)
        with traced(children, cpu) as k:
            watch = k.target.addr + 0x20
            steps = [name(k.poke(0, watch)), name(k.poke(6, 0xF)), name(k.poke(7, 0x50001))]
            k.detach()
            k.attach()
            kernel_regs = peeks(k.peek)
            held = _hold_task(k.pid)
            try:
                kernel_taken, kernel_poke = before - len(held), name(k.poke(1, watch + 8))
            finally:
                _close(held)
        if before >= 2 and _task_free(fresh.pid) == before:
            break
    else:
        pytest.skip("other processes kept changing the CPUs' debug registers; no comparison")
    assert steps == ["ok", "ok", "ok"]
    assert kernel_regs == [watch, 0, 0, 0, 0xF, 0x50001]
    assert (kernel_taken, kernel_poke) == (1, "ENOSPC")  # the detached task's slot

    pid = children[-1].pid
    tracer = session.attach(HOST, pid)
    arbiter_steps = [
        outcome(lambda: tracer.poke(0, watch)),
        outcome(lambda: tracer.poke(6, 0xF)),
        outcome(lambda: tracer.poke(7, 0x50001)),
    ]
    assert tracer.detach() == 0
    tracer = session.attach(HOST, pid)
    assert arbiter_steps == steps
    assert peeks(tracer.peek) == kernel_regs
    baseline, _ = _arbiter_task_free(session, fresh.pid)
    for h in baseline:
        h.release()
    taken, refused = _arbiter_task_free(session, pid)
    assert (len(baseline) - len(taken), refused) == (kernel_taken, "ENOSPC")
    assert outcome(lambda: tracer.poke(1, watch + 8)) == kernel_poke

    # The explicit flush (what exec and exit do) gives the slot back.
    for h in taken:
        h.release()
    assert tracer.flush() == 1
    assert outcome(lambda: tracer.peek(0)) == "ESRCH"  # nothing is left to trace
    assert len(_arbiter_task_free(session, pid)[0]) == len(baseline)


# --- 5. one access, two breakpoints: one exception --------------------------------------


def test_one_access_hitting_two_breakpoints_sets_both_dr6_bits(
    client: Client, session: Session, children: list[Target], cpu: int
) -> None:
    """exc_debug_user() resets virtual_dr6 once per debug exception, then
    ptrace_triggered() ORs in one bit per breakpoint that fired: a one-byte store that
    hits DR0 and DR1 (both watching it) reads back DR6 = 0xffff0ff3."""
    with traced(children, cpu) as k:
        addr = k.target.addr
        kernel_steps = [name(k.poke(0, addr)), name(k.poke(1, addr)), name(k.poke(7, 0x110005))]
        kernel_traps = k.run("s 0 1")
        kernel_dr6 = k.peek(6)
    assert kernel_steps == ["ok", "ok", "ok"]
    assert kernel_traps == [0xFFFF0FF3] and kernel_dr6 == 0xFFFF0FF3

    pid = children[-1].pid
    tracer = session.attach(HOST, pid)
    arbiter_steps = [
        outcome(lambda: tracer.poke(0, addr)),
        outcome(lambda: tracer.poke(1, addr)),
        outcome(lambda: tracer.poke(7, 0x110005)),
    ]
    assert arbiter_steps == kernel_steps
    client.context_switch(HOST, 0, pid)
    try:
        hit = client.access(HOST, 0, addr, 1, "w")
    finally:
        client.context_switch(HOST, 0, None)
    assert sorted(h.ptrace_index for h in hit.hits if h.ptrace_index is not None) == [0, 1]
    assert len(hit.hits) == 2
    assert tracer.peek(6) == kernel_dr6


# --- 3 and 7: what this host offers ---------------------------------------------------

KERNEL = 0xFFFF_FFFF_8100_0000


def test_range_lengths_agree_with_this_kernel(session: Session) -> None:
    """arch_build_bp_info(): an aligned power of two above 8 is a range breakpoint, which
    needs X86_FEATURE_BPEXT (else EOPNOTSUPP); a non-power of two or a misaligned range
    is EINVAL. The simulated host offers what this machine's agent reports."""
    cases = [(0x20000, 16), (0x20000, 32), (0x20000, 12), (0x20008, 16), (0x20010, 32)]
    kernel = [kernel_open(ps.HW_BREAKPOINT_W, a, n) for a, n in cases]

    def reserve_range(addr: int, length: int) -> None:
        session.reserve(HOST, cpu=0, addr=addr, len=length, type="w").release()

    arbiter = [outcome(functools.partial(reserve_range, a, n)) for a, n in cases]
    assert arbiter == kernel
    if not ps.host_features().bpext:
        assert kernel[:2] == ["ENOTSUP", "ENOTSUP"]


def test_kernel_addresses_agree_with_this_kernel(
    session: Session, children: list[Target], cpu: int
) -> None:
    """hw_breakpoint_parse(): a task's breakpoint on a kernel address opens with
    exclude_kernel clear given CAP_SYS_ADMIN, is EINVAL with it set; an execute one there
    must also pass within_kprobe_blacklist() (all refused without CONFIG_KPROBES)."""
    t = Target(cpu)
    children.append(t)

    def kernel_task_open(bp_type: int, exclude_kernel: bool) -> str:
        attr = ps.breakpoint_attr(
            bp_type=bp_type, addr=KERNEL, length=8, disabled=True, exclude_kernel=exclude_kernel
        )
        return outcome(lambda: os.close(ps.perf_event_open(attr, pid=t.pid, cpu=-1)))

    kernel = [
        kernel_task_open(ps.HW_BREAKPOINT_W, False),
        kernel_task_open(ps.HW_BREAKPOINT_X, False),
        kernel_task_open(ps.HW_BREAKPOINT_W, True),
    ]
    asks = [("w", True), ("x", True), ("w", False)]

    def reserve_kernel(kind: str, flag: bool) -> None:
        session.reserve(HOST, task=t.pid, addr=KERNEL, len=8, type=kind, kernel=flag).release()

    arbiter = [outcome(functools.partial(reserve_kernel, k, flag)) for k, flag in asks]
    assert arbiter == kernel
    assert kernel[2] == "EINVAL"
