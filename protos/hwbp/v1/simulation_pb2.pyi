from hwbp.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ContextSwitchRequest(_message.Message):
    __slots__ = ("request_id", "host", "cpu", "task")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    host: str
    cpu: int
    task: int
    def __init__(self, request_id: _Optional[str] = ..., host: _Optional[str] = ..., cpu: _Optional[int] = ..., task: _Optional[int] = ...) -> None: ...

class ContextSwitchResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: _types_pb2.RegisterImage
    def __init__(self, image: _Optional[_Union[_types_pb2.RegisterImage, _Mapping]] = ...) -> None: ...

class MemoryAccessRequest(_message.Message):
    __slots__ = ("request_id", "host", "cpu", "addr", "len", "type")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    LEN_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    host: str
    cpu: int
    addr: int
    len: int
    type: _types_pb2.AccessType
    def __init__(self, request_id: _Optional[str] = ..., host: _Optional[str] = ..., cpu: _Optional[int] = ..., addr: _Optional[int] = ..., len: _Optional[int] = ..., type: _Optional[_Union[_types_pb2.AccessType, str]] = ...) -> None: ...

class MemoryAccessResponse(_message.Message):
    __slots__ = ("hit", "hits", "dr6")
    HIT_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    DR6_FIELD_NUMBER: _ClassVar[int]
    hit: bool
    hits: _containers.RepeatedCompositeFieldContainer[_types_pb2.Hit]
    dr6: int
    def __init__(self, hit: _Optional[bool] = ..., hits: _Optional[_Iterable[_Union[_types_pb2.Hit, _Mapping]]] = ..., dr6: _Optional[int] = ...) -> None: ...

class ExitTaskRequest(_message.Message):
    __slots__ = ("request_id", "host", "task")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    host: str
    task: int
    def __init__(self, request_id: _Optional[str] = ..., host: _Optional[str] = ..., task: _Optional[int] = ...) -> None: ...

class ExitTaskResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...
