"""Protobuf <-> core values, in one place. Field checks that the core cannot do live here."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from hwbp.arch import DEFAULT_FEATURES, HostFeatures
from hwbp.errors import InvalidArgument, InvalidCpu, InvalidScope, InvalidType, ValueOutOfRange
from hwbp.model import AccessType, Assignment, BpType, Breakpoint, Reservation, Scope, Target
from hwbp.registers import HitRecord, RegisterImage
from hwbp.v1 import agent_pb2
from hwbp.v1 import types_pb2 as pb

MAX_NAME = 128  # host names, owners, ids: anything longer is a mistake, not a name
MAX_CPUS = 4096
MAX_PID = 1 << 22  # Linux pid_max limit
MAX_THREADS = 65536  # threads one process may list: well above what a real one has
# What an agent may make the arbiter keep or forward: an ack's detail, a NACK's reason, a
# control's error. Two agents acking 15 MB each once made every fleet-wide Inventory too
# large for gRPC; a person reads these, and a kilobyte says all there is to say.
MAX_TEXT = 1024
MAX_HITS = 1024  # hits in one report; an agent sends a burst as several reports

BP_TYPE: dict[pb.BreakpointType.ValueType, BpType] = {
    pb.BREAKPOINT_TYPE_EXEC: BpType.EXEC,
    pb.BREAKPOINT_TYPE_WRITE: BpType.WRITE,
    pb.BREAKPOINT_TYPE_READ_WRITE: BpType.RW,
    pb.BREAKPOINT_TYPE_READ: BpType.READ,
}
BP_TYPE_PB: dict[BpType, pb.BreakpointType.ValueType] = {v: k for k, v in BP_TYPE.items()}
SCOPE: dict[pb.Scope.ValueType, Scope] = {
    pb.SCOPE_SYSTEM: Scope.SYSTEM,
    pb.SCOPE_CPU: Scope.CPU,
    pb.SCOPE_TASK: Scope.TASK,
    pb.SCOPE_TASK_CPU: Scope.TASK_CPU,
    pb.SCOPE_PROCESS: Scope.PROCESS,
}
SCOPE_PB: dict[Scope, pb.Scope.ValueType] = {v: k for k, v in SCOPE.items()}
ACCESS: dict[pb.AccessType.ValueType, AccessType] = {
    pb.ACCESS_TYPE_READ: AccessType.READ,
    pb.ACCESS_TYPE_WRITE: AccessType.WRITE,
    pb.ACCESS_TYPE_EXEC: AccessType.EXEC,
}
ACCESS_PB: dict[AccessType, pb.AccessType.ValueType] = {v: k for k, v in ACCESS.items()}


def name(value: str, field: str, *, required: bool = True) -> str:
    if required and not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(value) > MAX_NAME:
        raise InvalidArgument(f"{field} is longer than {MAX_NAME} characters", field=field)
    if any(ord(c) < 32 for c in value):
        raise InvalidArgument(f"{field} contains control characters", field=field)
    return value


def task(value: int, field: str = "task") -> int:
    if not 0 < value < MAX_PID:
        raise ValueOutOfRange(
            f"{field} must be a pid in 1..{MAX_PID - 1}, got {value}", field=field
        )
    return value


def bp_type(value: pb.BreakpointType.ValueType) -> BpType:
    try:
        return BP_TYPE[value]
    except KeyError:
        raise InvalidType(
            f"breakpoint type {value} is not one of exec, write, read_write", field="type"
        ) from None


def access_type(value: pb.AccessType.ValueType) -> AccessType:
    try:
        return ACCESS[value]
    except KeyError:
        raise InvalidType(
            f"access type {value} is not one of read, write, exec", field="type"
        ) from None


def target_from(msg: pb.Target) -> Target:
    if msg.scope not in SCOPE:
        raise InvalidScope(
            f"scope {msg.scope} is not one of system, cpu, task, task+cpu, process",
            field="scope",
        )
    cpu = msg.cpu if msg.HasField("cpu") else None
    if cpu is not None and cpu >= MAX_CPUS:
        raise InvalidCpu(f"cpu {cpu} is out of range (max {MAX_CPUS - 1})", cpu=cpu)
    tsk = task(msg.task) if msg.HasField("task") else None
    if len(msg.threads) > MAX_THREADS:
        raise ValueOutOfRange(
            f"a process may list at most {MAX_THREADS} threads, got {len(msg.threads)}",
            field="threads",
        )
    threads = tuple(task(t, "thread") for t in msg.threads)
    return Target(scope=SCOPE[msg.scope], cpu=cpu, task=tsk, threads=threads)


def bp_from(msg: pb.BreakpointSpec) -> Breakpoint:
    return Breakpoint(
        addr=msg.addr,
        length=msg.len,
        type=bp_type(msg.type),
        enabled=msg.enabled,
        kernel=msg.kernel,
        tracer_applied=msg.tracer_applied,
    )


def bp_to(bp: Breakpoint) -> pb.BreakpointSpec:
    return pb.BreakpointSpec(
        addr=bp.addr,
        len=bp.length,
        type=BP_TYPE_PB[bp.type],
        enabled=bp.enabled,
        kernel=bp.kernel,
        tracer_applied=bp.tracer_applied,
    )


def target_to(host: str, t: Target) -> pb.Target:
    return pb.Target(host=host, scope=SCOPE_PB[t.scope], cpu=t.cpu, task=t.task, threads=t.threads)


def reservation_to(res: Reservation, generation: int = 0) -> pb.Reservation:
    return pb.Reservation(
        id=res.id,
        target=target_to(res.host, res.target),
        spec=bp_to(res.bp),
        owner=res.owner,
        session_id=res.session or "",
        generation=generation,
        ptrace_index=-1 if res.ptrace_index is None else res.ptrace_index,
    )


def reservation_into(msg: pb.Reservation, res: Reservation, generation: int = 0) -> None:
    """Fill ``msg`` (a response's own field) with what ``reservation_to`` builds, without
    building three messages and copying them in: every reserve and release answers one."""
    msg.id = res.id
    target = msg.target
    target.host = res.host
    target.scope = SCOPE_PB[res.target.scope]
    if res.target.cpu is not None:
        target.cpu = res.target.cpu
    if res.target.task is not None:
        target.task = res.target.task
    if res.target.threads:
        target.threads[:] = res.target.threads
    bp, spec = res.bp, msg.spec
    spec.addr = bp.addr
    spec.len = bp.length
    spec.type = BP_TYPE_PB[bp.type]
    spec.enabled = bp.enabled
    spec.kernel = bp.kernel
    spec.tracer_applied = bp.tracer_applied
    msg.owner = res.owner
    msg.session_id = res.session or ""
    msg.generation = generation
    msg.ptrace_index = -1 if res.ptrace_index is None else res.ptrace_index


@functools.lru_cache(maxsize=8192)  # bounded: ~1 KB each
def assignment_to(a: Assignment) -> agent_pb2.Assignment:
    """Cached: a reload carries every breakpoint of a CPU, mostly unchanged since the last
    one, and a parent message copies what it is given, so sharing is safe."""
    return agent_pb2.Assignment(
        reservation_id=a.reservation_id, task=a.task, spec=bp_to(a.bp), process=a.process
    )


def assignments_into(
    out: RepeatedCompositeFieldContainer[agent_pb2.Assignment], assignments: Iterable[Assignment]
) -> None:
    """Append ``assignments`` to the repeated Assignment field ``out``, each built in place.

    A resync carries every breakpoint of a CPU, none of them converted before (after a
    restart the cache is cold): building a message per item and copying it in costs
    three times as much. Encodes exactly what ``assignment_to`` does (a unit test checks
    every Breakpoint field)."""
    add = out.add
    types = BP_TYPE_PB
    for a in assignments:
        bp = a.bp
        spec = add(reservation_id=a.reservation_id, task=a.task, process=a.process).spec
        spec.addr = bp.addr
        spec.len = bp.length
        spec.type = types[bp.type]
        spec.enabled = bp.enabled
        spec.kernel = bp.kernel
        spec.tracer_applied = bp.tracer_applied


def assignment_from(msg: agent_pb2.Assignment) -> Assignment:
    task_ = msg.task if msg.HasField("task") else None
    return Assignment(
        reservation_id=msg.reservation_id,
        task=task_,
        bp=bp_from(msg.spec),
        process=msg.process and task_ is not None,
    )


def image_to(img: RegisterImage | None) -> pb.RegisterImage:
    if img is None:
        return pb.RegisterImage(dr=[0, 0, 0, 0], dr7=0)
    return pb.RegisterImage(
        dr=list(img.dr),
        dr7=img.dr7,
        dr6=img.dr6,
        current_task=img.current_task,
        slot_reservation=[s or "" for s in img.slots],
    )


def image_from(msg: pb.RegisterImage) -> RegisterImage:
    dr = list(msg.dr)[:4] + [0] * (4 - min(4, len(msg.dr)))
    slots = [s or None for s in list(msg.slot_reservation)[:4]]
    slots += [None] * (4 - len(slots))
    return RegisterImage(
        dr=(dr[0], dr[1], dr[2], dr[3]),
        dr7=msg.dr7,
        dr6=msg.dr6,
        current_task=msg.current_task if msg.HasField("current_task") else None,
        slots=(slots[0], slots[1], slots[2], slots[3]),
    )


def hit_to(host: str, cpu: int, hit: HitRecord, *, ptrace_index: int | None, seq: int) -> pb.Hit:
    return pb.Hit(
        host=host,
        cpu=cpu,
        task=hit.task,
        reservation_id=hit.reservation_id,
        physical_index=hit.index,
        ptrace_index=-1 if ptrace_index is None else ptrace_index,
        addr=hit.bp.addr,
        access_addr=hit.access_addr,
        ip=hit.ip,
        dr6=hit.dr6,
        seq=seq,
    )


def features_to(f: HostFeatures) -> agent_pb2.HostFeatures:
    return agent_pb2.HostFeatures(bpext=f.bpext, kprobes=f.kprobes, privileged=f.privileged)


def features_from(hello: agent_pb2.Hello) -> HostFeatures:
    """What a hello says its host offers; an agent that does not say gets the defaults."""
    if not hello.HasField("features"):
        return DEFAULT_FEATURES
    f = hello.features
    return HostFeatures(bpext=f.bpext, kprobes=f.kprobes, privileged=f.privileged)


# --- bounds on what agents send ---------------------------------------------------------


def bounded(text: str, field: str, limit: int = MAX_TEXT) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and a marker saying
    which field was cut and how long it was (so the cut is never mistaken for the text)."""
    if len(text) <= limit:
        return text
    marker = f"... [{field} truncated: {len(text)} characters]"
    if len(marker) >= limit:
        return text[:limit]
    return text[: limit - len(marker)] + marker


def bounded_image(msg: pb.RegisterImage) -> pb.RegisterImage:
    """At most DR0..DR3 and four slot names of ``MAX_NAME``; the message itself when it
    already fits (acks are the hot path: no copy for a well-behaved agent)."""
    slots = msg.slot_reservation
    if len(msg.dr) <= 4 and len(slots) <= 4 and all(len(s) <= MAX_NAME for s in slots):
        return msg
    out = pb.RegisterImage(
        dr=msg.dr[:4],
        dr7=msg.dr7,
        dr6=msg.dr6,
        slot_reservation=[bounded(s, "image.slot_reservation", MAX_NAME) for s in slots[:4]],
    )
    if msg.HasField("current_task"):
        out.current_task = msg.current_task
    return out


def bounded_hit(msg: pb.Hit) -> pb.Hit:
    """A hit whose host and reservation id are at most ``MAX_NAME`` characters."""
    if len(msg.host) <= MAX_NAME and len(msg.reservation_id) <= MAX_NAME:
        return msg
    out = pb.Hit()
    out.CopyFrom(msg)
    out.host = bounded(msg.host, "hit.host", MAX_NAME)
    out.reservation_id = bounded(msg.reservation_id, "hit.reservation_id", MAX_NAME)
    return out


def bounded_hits(hits: Sequence[pb.Hit]) -> Sequence[pb.Hit]:
    """The first ``MAX_HITS`` of one report, each bounded (the caller logs any dropped)."""
    if len(hits) <= MAX_HITS and all(bounded_hit(h) is h for h in hits):
        return hits
    return [bounded_hit(h) for h in hits[:MAX_HITS]]


def bounded_control_result(msg: agent_pb2.ControlResult) -> agent_pb2.ControlResult:
    """A control's answer with a bounded error, image and hits."""
    image = bounded_image(msg.image)
    hits = bounded_hits(msg.hits)
    if len(msg.error) <= MAX_TEXT and image is msg.image and hits is msg.hits:
        return msg
    out = agent_pb2.ControlResult(
        control_id=msg.control_id, ok=msg.ok, error=bounded(msg.error, "control.error"), hits=hits
    )
    if msg.HasField("image"):
        out.image.CopyFrom(image)
    return out
