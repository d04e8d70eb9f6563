from hwbp.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Assignment(_message.Message):
    __slots__ = ("reservation_id", "task", "spec")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    task: int
    spec: _types_pb2.BreakpointSpec
    def __init__(self, reservation_id: _Optional[str] = ..., task: _Optional[int] = ..., spec: _Optional[_Union[_types_pb2.BreakpointSpec, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("host", "cpu", "ncpus", "backend", "last_applied_generation", "image", "installed", "slots", "features", "deltas")
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    NCPUS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    host: str
    cpu: int
    ncpus: int
    backend: str
    last_applied_generation: int
    image: _types_pb2.RegisterImage
    installed: _containers.RepeatedCompositeFieldContainer[Assignment]
    slots: int
    features: HostFeatures
    deltas: bool
    def __init__(self, host: _Optional[str] = ..., cpu: _Optional[int] = ..., ncpus: _Optional[int] = ..., backend: _Optional[str] = ..., last_applied_generation: _Optional[int] = ..., image: _Optional[_Union[_types_pb2.RegisterImage, _Mapping]] = ..., installed: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., slots: _Optional[int] = ..., features: _Optional[_Union[HostFeatures, _Mapping]] = ..., deltas: _Optional[bool] = ...) -> None: ...

class HostFeatures(_message.Message):
    __slots__ = ("bpext", "kprobes", "privileged")
    BPEXT_FIELD_NUMBER: _ClassVar[int]
    KPROBES_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    bpext: bool
    kprobes: bool
    privileged: bool
    def __init__(self, bpext: _Optional[bool] = ..., kprobes: _Optional[bool] = ..., privileged: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("generation", "image", "detail")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    generation: int
    image: _types_pb2.RegisterImage
    detail: str
    def __init__(self, generation: _Optional[int] = ..., image: _Optional[_Union[_types_pb2.RegisterImage, _Mapping]] = ..., detail: _Optional[str] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("generation", "reason", "errno", "reservation_id", "needs_full")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    NEEDS_FULL_FIELD_NUMBER: _ClassVar[int]
    generation: int
    reason: str
    errno: int
    reservation_id: str
    needs_full: bool
    def __init__(self, generation: _Optional[int] = ..., reason: _Optional[str] = ..., errno: _Optional[int] = ..., reservation_id: _Optional[str] = ..., needs_full: _Optional[bool] = ...) -> None: ...

class ControlResult(_message.Message):
    __slots__ = ("control_id", "ok", "image", "hits", "error")
    CONTROL_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    control_id: int
    ok: bool
    image: _types_pb2.RegisterImage
    hits: _containers.RepeatedCompositeFieldContainer[_types_pb2.Hit]
    error: str
    def __init__(self, control_id: _Optional[int] = ..., ok: _Optional[bool] = ..., image: _Optional[_Union[_types_pb2.RegisterImage, _Mapping]] = ..., hits: _Optional[_Iterable[_Union[_types_pb2.Hit, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class HitReport(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_types_pb2.Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[_types_pb2.Hit, _Mapping]]] = ...) -> None: ...

class TaskExited(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: int
    def __init__(self, task: _Optional[int] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "ack", "nack", "control_result", "hits", "task_exited")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    CONTROL_RESULT_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    TASK_EXITED_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    nack: Nack
    control_result: ControlResult
    hits: HitReport
    task_exited: TaskExited
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., control_result: _Optional[_Union[ControlResult, _Mapping]] = ..., hits: _Optional[_Union[HitReport, _Mapping]] = ..., task_exited: _Optional[_Union[TaskExited, _Mapping]] = ...) -> None: ...

class Reload(_message.Message):
    __slots__ = ("generation", "request_id", "assignments", "base_generation", "removed")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    BASE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    generation: int
    request_id: str
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    base_generation: int
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, generation: _Optional[int] = ..., request_id: _Optional[str] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., base_generation: _Optional[int] = ..., removed: _Optional[_Iterable[str]] = ...) -> None: ...

class SwitchTask(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: int
    def __init__(self, task: _Optional[int] = ...) -> None: ...

class Access(_message.Message):
    __slots__ = ("addr", "len", "type")
    ADDR_FIELD_NUMBER: _ClassVar[int]
    LEN_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    addr: int
    len: int
    type: _types_pb2.AccessType
    def __init__(self, addr: _Optional[int] = ..., len: _Optional[int] = ..., type: _Optional[_Union[_types_pb2.AccessType, str]] = ...) -> None: ...

class Control(_message.Message):
    __slots__ = ("control_id", "request_id", "generation", "switch_task", "access")
    CONTROL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SWITCH_TASK_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    control_id: int
    request_id: str
    generation: int
    switch_task: SwitchTask
    access: Access
    def __init__(self, control_id: _Optional[int] = ..., request_id: _Optional[str] = ..., generation: _Optional[int] = ..., switch_task: _Optional[_Union[SwitchTask, _Mapping]] = ..., access: _Optional[_Union[Access, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("generation", "arbiter_id")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ARBITER_ID_FIELD_NUMBER: _ClassVar[int]
    generation: int
    arbiter_id: str
    def __init__(self, generation: _Optional[int] = ..., arbiter_id: _Optional[str] = ...) -> None: ...

class ArbiterMessage(_message.Message):
    __slots__ = ("welcome", "reload", "control")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    RELOAD_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    reload: Reload
    control: Control
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., reload: _Optional[_Union[Reload, _Mapping]] = ..., control: _Optional[_Union[Control, _Mapping]] = ...) -> None: ...
