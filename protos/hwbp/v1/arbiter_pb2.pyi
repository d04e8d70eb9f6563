from hwbp.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReserveRequest(_message.Message):
    __slots__ = ("request_id", "target", "spec", "owner", "session_id", "idempotency_key")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    target: _types_pb2.Target
    spec: _types_pb2.BreakpointSpec
    owner: str
    session_id: str
    idempotency_key: str
    def __init__(self, request_id: _Optional[str] = ..., target: _Optional[_Union[_types_pb2.Target, _Mapping]] = ..., spec: _Optional[_Union[_types_pb2.BreakpointSpec, _Mapping]] = ..., owner: _Optional[str] = ..., session_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("reservation", "generation", "applied_cpus", "pending_cpus")
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_CPUS_FIELD_NUMBER: _ClassVar[int]
    PENDING_CPUS_FIELD_NUMBER: _ClassVar[int]
    reservation: _types_pb2.Reservation
    generation: int
    applied_cpus: _containers.RepeatedScalarFieldContainer[int]
    pending_cpus: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, reservation: _Optional[_Union[_types_pb2.Reservation, _Mapping]] = ..., generation: _Optional[int] = ..., applied_cpus: _Optional[_Iterable[int]] = ..., pending_cpus: _Optional[_Iterable[int]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("request_id", "reservation_id", "session_id", "expect_owner")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECT_OWNER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reservation_id: str
    session_id: str
    expect_owner: str
    def __init__(self, request_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., session_id: _Optional[str] = ..., expect_owner: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("reservation", "generation", "applied_cpus", "pending_cpus")
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_CPUS_FIELD_NUMBER: _ClassVar[int]
    PENDING_CPUS_FIELD_NUMBER: _ClassVar[int]
    reservation: _types_pb2.Reservation
    generation: int
    applied_cpus: _containers.RepeatedScalarFieldContainer[int]
    pending_cpus: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, reservation: _Optional[_Union[_types_pb2.Reservation, _Mapping]] = ..., generation: _Optional[int] = ..., applied_cpus: _Optional[_Iterable[int]] = ..., pending_cpus: _Optional[_Iterable[int]] = ...) -> None: ...

class ModifyRequest(_message.Message):
    __slots__ = ("request_id", "reservation_id", "session_id", "addr", "len", "type", "enabled", "expect_owner")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    LEN_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    EXPECT_OWNER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reservation_id: str
    session_id: str
    addr: int
    len: int
    type: _types_pb2.BreakpointType
    enabled: bool
    expect_owner: str
    def __init__(self, request_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., session_id: _Optional[str] = ..., addr: _Optional[int] = ..., len: _Optional[int] = ..., type: _Optional[_Union[_types_pb2.BreakpointType, str]] = ..., enabled: _Optional[bool] = ..., expect_owner: _Optional[str] = ...) -> None: ...

class ModifyResponse(_message.Message):
    __slots__ = ("reservation", "generation", "applied_cpus", "pending_cpus")
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_CPUS_FIELD_NUMBER: _ClassVar[int]
    PENDING_CPUS_FIELD_NUMBER: _ClassVar[int]
    reservation: _types_pb2.Reservation
    generation: int
    applied_cpus: _containers.RepeatedScalarFieldContainer[int]
    pending_cpus: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, reservation: _Optional[_Union[_types_pb2.Reservation, _Mapping]] = ..., generation: _Optional[int] = ..., applied_cpus: _Optional[_Iterable[int]] = ..., pending_cpus: _Optional[_Iterable[int]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("request_id", "host", "session_id", "page_size", "page_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    host: str
    session_id: str
    page_size: int
    page_token: str
    def __init__(self, request_id: _Optional[str] = ..., host: _Optional[str] = ..., session_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("reservations", "next_page_token")
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    reservations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Reservation]
    next_page_token: str
    def __init__(self, reservations: _Optional[_Iterable[_Union[_types_pb2.Reservation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class InventoryRequest(_message.Message):
    __slots__ = ("request_id", "host", "page_size", "page_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    host: str
    page_size: int
    page_token: str
    def __init__(self, request_id: _Optional[str] = ..., host: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class InventoryResponse(_message.Message):
    __slots__ = ("cpus", "next_page_token")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    cpus: _containers.RepeatedCompositeFieldContainer[_types_pb2.CpuInventory]
    next_page_token: str
    def __init__(self, cpus: _Optional[_Iterable[_Union[_types_pb2.CpuInventory, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("request_id", "host", "task", "kinds", "announce_subscribed")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCE_SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    host: str
    task: int
    kinds: _containers.RepeatedScalarFieldContainer[_types_pb2.EventKind]
    announce_subscribed: bool
    def __init__(self, request_id: _Optional[str] = ..., host: _Optional[str] = ..., task: _Optional[int] = ..., kinds: _Optional[_Iterable[_Union[_types_pb2.EventKind, str]]] = ..., announce_subscribed: _Optional[bool] = ...) -> None: ...
