from hwbp.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NoFreeSlotDetails(_message.Message):
    __slots__ = ("host", "cpu", "slot_class", "used", "slots", "holders")
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    SLOT_CLASS_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    host: str
    cpu: int
    slot_class: str
    used: int
    slots: int
    holders: _containers.RepeatedCompositeFieldContainer[SlotHolder]
    def __init__(self, host: _Optional[str] = ..., cpu: _Optional[int] = ..., slot_class: _Optional[str] = ..., used: _Optional[int] = ..., slots: _Optional[int] = ..., holders: _Optional[_Iterable[_Union[SlotHolder, _Mapping]]] = ...) -> None: ...

class SlotHolder(_message.Message):
    __slots__ = ("reservation_id", "owner", "session_id", "scope", "cpu", "task", "age_seconds", "lease_remaining_seconds")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEASE_REMAINING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    owner: str
    session_id: str
    scope: _types_pb2.Scope
    cpu: int
    task: int
    age_seconds: float
    lease_remaining_seconds: float
    def __init__(self, reservation_id: _Optional[str] = ..., owner: _Optional[str] = ..., session_id: _Optional[str] = ..., scope: _Optional[_Union[_types_pb2.Scope, str]] = ..., cpu: _Optional[int] = ..., task: _Optional[int] = ..., age_seconds: _Optional[float] = ..., lease_remaining_seconds: _Optional[float] = ...) -> None: ...
