from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BreakpointType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKPOINT_TYPE_UNSPECIFIED: _ClassVar[BreakpointType]
    BREAKPOINT_TYPE_EXEC: _ClassVar[BreakpointType]
    BREAKPOINT_TYPE_WRITE: _ClassVar[BreakpointType]
    BREAKPOINT_TYPE_READ_WRITE: _ClassVar[BreakpointType]
    BREAKPOINT_TYPE_READ: _ClassVar[BreakpointType]

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_UNSPECIFIED: _ClassVar[Scope]
    SCOPE_SYSTEM: _ClassVar[Scope]
    SCOPE_CPU: _ClassVar[Scope]
    SCOPE_TASK: _ClassVar[Scope]
    SCOPE_TASK_CPU: _ClassVar[Scope]

class AccessType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCESS_TYPE_UNSPECIFIED: _ClassVar[AccessType]
    ACCESS_TYPE_READ: _ClassVar[AccessType]
    ACCESS_TYPE_WRITE: _ClassVar[AccessType]
    ACCESS_TYPE_EXEC: _ClassVar[AccessType]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_HIT: _ClassVar[EventKind]
    EVENT_KIND_RESERVED: _ClassVar[EventKind]
    EVENT_KIND_RELEASED: _ClassVar[EventKind]
    EVENT_KIND_MODIFIED: _ClassVar[EventKind]
    EVENT_KIND_RELOAD: _ClassVar[EventKind]
    EVENT_KIND_NACK: _ClassVar[EventKind]
    EVENT_KIND_AGENT_ONLINE: _ClassVar[EventKind]
    EVENT_KIND_AGENT_OFFLINE: _ClassVar[EventKind]
    EVENT_KIND_LEASE_EXPIRED: _ClassVar[EventKind]
    EVENT_KIND_TASK_EXITED: _ClassVar[EventKind]
    EVENT_KIND_CONTEXT_SWITCH: _ClassVar[EventKind]
    EVENT_KIND_AGENT_FENCED: _ClassVar[EventKind]
    EVENT_KIND_RESYNC_REFUSED: _ClassVar[EventKind]
    EVENT_KIND_SUBSCRIBED: _ClassVar[EventKind]
BREAKPOINT_TYPE_UNSPECIFIED: BreakpointType
BREAKPOINT_TYPE_EXEC: BreakpointType
BREAKPOINT_TYPE_WRITE: BreakpointType
BREAKPOINT_TYPE_READ_WRITE: BreakpointType
BREAKPOINT_TYPE_READ: BreakpointType
SCOPE_UNSPECIFIED: Scope
SCOPE_SYSTEM: Scope
SCOPE_CPU: Scope
SCOPE_TASK: Scope
SCOPE_TASK_CPU: Scope
ACCESS_TYPE_UNSPECIFIED: AccessType
ACCESS_TYPE_READ: AccessType
ACCESS_TYPE_WRITE: AccessType
ACCESS_TYPE_EXEC: AccessType
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_HIT: EventKind
EVENT_KIND_RESERVED: EventKind
EVENT_KIND_RELEASED: EventKind
EVENT_KIND_MODIFIED: EventKind
EVENT_KIND_RELOAD: EventKind
EVENT_KIND_NACK: EventKind
EVENT_KIND_AGENT_ONLINE: EventKind
EVENT_KIND_AGENT_OFFLINE: EventKind
EVENT_KIND_LEASE_EXPIRED: EventKind
EVENT_KIND_TASK_EXITED: EventKind
EVENT_KIND_CONTEXT_SWITCH: EventKind
EVENT_KIND_AGENT_FENCED: EventKind
EVENT_KIND_RESYNC_REFUSED: EventKind
EVENT_KIND_SUBSCRIBED: EventKind

class Target(_message.Message):
    __slots__ = ("host", "scope", "cpu", "task")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    host: str
    scope: Scope
    cpu: int
    task: int
    def __init__(self, host: _Optional[str] = ..., scope: _Optional[_Union[Scope, str]] = ..., cpu: _Optional[int] = ..., task: _Optional[int] = ...) -> None: ...

class BreakpointSpec(_message.Message):
    __slots__ = ("addr", "len", "type", "enabled", "kernel", "tracer_applied")
    ADDR_FIELD_NUMBER: _ClassVar[int]
    LEN_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    TRACER_APPLIED_FIELD_NUMBER: _ClassVar[int]
    addr: int
    len: int
    type: BreakpointType
    enabled: bool
    kernel: bool
    tracer_applied: bool
    def __init__(self, addr: _Optional[int] = ..., len: _Optional[int] = ..., type: _Optional[_Union[BreakpointType, str]] = ..., enabled: _Optional[bool] = ..., kernel: _Optional[bool] = ..., tracer_applied: _Optional[bool] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("id", "target", "spec", "owner", "session_id", "generation", "ptrace_index")
    ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PTRACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    id: str
    target: Target
    spec: BreakpointSpec
    owner: str
    session_id: str
    generation: int
    ptrace_index: int
    def __init__(self, id: _Optional[str] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., spec: _Optional[_Union[BreakpointSpec, _Mapping]] = ..., owner: _Optional[str] = ..., session_id: _Optional[str] = ..., generation: _Optional[int] = ..., ptrace_index: _Optional[int] = ...) -> None: ...

class RegisterImage(_message.Message):
    __slots__ = ("dr", "dr7", "dr6", "current_task", "slot_reservation")
    DR_FIELD_NUMBER: _ClassVar[int]
    DR7_FIELD_NUMBER: _ClassVar[int]
    DR6_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TASK_FIELD_NUMBER: _ClassVar[int]
    SLOT_RESERVATION_FIELD_NUMBER: _ClassVar[int]
    dr: _containers.RepeatedScalarFieldContainer[int]
    dr7: int
    dr6: int
    current_task: int
    slot_reservation: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dr: _Optional[_Iterable[int]] = ..., dr7: _Optional[int] = ..., dr6: _Optional[int] = ..., current_task: _Optional[int] = ..., slot_reservation: _Optional[_Iterable[str]] = ...) -> None: ...

class Holder(_message.Message):
    __slots__ = ("reservation_id", "owner", "scope", "cpu", "task")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    owner: str
    scope: Scope
    cpu: int
    task: int
    def __init__(self, reservation_id: _Optional[str] = ..., owner: _Optional[str] = ..., scope: _Optional[_Union[Scope, str]] = ..., cpu: _Optional[int] = ..., task: _Optional[int] = ...) -> None: ...

class CpuInventory(_message.Message):
    __slots__ = ("host", "cpu", "online", "generation", "acked_generation", "current_task", "reported", "expected", "mismatch", "used", "slots", "holders", "backend", "detail", "link", "link_reason", "pending")
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ACKED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TASK_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    MISMATCH_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    LINK_REASON_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    host: str
    cpu: int
    online: bool
    generation: int
    acked_generation: int
    current_task: int
    reported: RegisterImage
    expected: RegisterImage
    mismatch: bool
    used: int
    slots: int
    holders: _containers.RepeatedCompositeFieldContainer[Holder]
    backend: str
    detail: str
    link: str
    link_reason: str
    pending: bool
    def __init__(self, host: _Optional[str] = ..., cpu: _Optional[int] = ..., online: _Optional[bool] = ..., generation: _Optional[int] = ..., acked_generation: _Optional[int] = ..., current_task: _Optional[int] = ..., reported: _Optional[_Union[RegisterImage, _Mapping]] = ..., expected: _Optional[_Union[RegisterImage, _Mapping]] = ..., mismatch: _Optional[bool] = ..., used: _Optional[int] = ..., slots: _Optional[int] = ..., holders: _Optional[_Iterable[_Union[Holder, _Mapping]]] = ..., backend: _Optional[str] = ..., detail: _Optional[str] = ..., link: _Optional[str] = ..., link_reason: _Optional[str] = ..., pending: _Optional[bool] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("host", "cpu", "task", "reservation_id", "physical_index", "ptrace_index", "addr", "access_addr", "ip", "dr6", "seq", "exception")
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_INDEX_FIELD_NUMBER: _ClassVar[int]
    PTRACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    ACCESS_ADDR_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    DR6_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EXCEPTION_FIELD_NUMBER: _ClassVar[int]
    host: str
    cpu: int
    task: int
    reservation_id: str
    physical_index: int
    ptrace_index: int
    addr: int
    access_addr: int
    ip: int
    dr6: int
    seq: int
    exception: int
    def __init__(self, host: _Optional[str] = ..., cpu: _Optional[int] = ..., task: _Optional[int] = ..., reservation_id: _Optional[str] = ..., physical_index: _Optional[int] = ..., ptrace_index: _Optional[int] = ..., addr: _Optional[int] = ..., access_addr: _Optional[int] = ..., ip: _Optional[int] = ..., dr6: _Optional[int] = ..., seq: _Optional[int] = ..., exception: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "host", "cpu", "generation", "request_id", "reservation", "hit", "reason", "task", "seq")
    KIND_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    kind: EventKind
    host: str
    cpu: int
    generation: int
    request_id: str
    reservation: Reservation
    hit: Hit
    reason: str
    task: int
    seq: int
    def __init__(self, kind: _Optional[_Union[EventKind, str]] = ..., host: _Optional[str] = ..., cpu: _Optional[int] = ..., generation: _Optional[int] = ..., request_id: _Optional[str] = ..., reservation: _Optional[_Union[Reservation, _Mapping]] = ..., hit: _Optional[_Union[Hit, _Mapping]] = ..., reason: _Optional[str] = ..., task: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...
