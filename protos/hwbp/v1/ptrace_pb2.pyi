from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AttachRequest(_message.Message):
    __slots__ = ("request_id", "session_id", "host", "task")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_id: str
    host: str
    task: int
    def __init__(self, request_id: _Optional[str] = ..., session_id: _Optional[str] = ..., host: _Optional[str] = ..., task: _Optional[int] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("already_attached",)
    ALREADY_ATTACHED_FIELD_NUMBER: _ClassVar[int]
    already_attached: bool
    def __init__(self, already_attached: _Optional[bool] = ...) -> None: ...

class DetachRequest(_message.Message):
    __slots__ = ("request_id", "session_id", "host", "task")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_id: str
    host: str
    task: int
    def __init__(self, request_id: _Optional[str] = ..., session_id: _Optional[str] = ..., host: _Optional[str] = ..., task: _Optional[int] = ...) -> None: ...

class DetachResponse(_message.Message):
    __slots__ = ("released", "kept")
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    released: int
    kept: int
    def __init__(self, released: _Optional[int] = ..., kept: _Optional[int] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("request_id", "session_id", "host", "task")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_id: str
    host: str
    task: int
    def __init__(self, request_id: _Optional[str] = ..., session_id: _Optional[str] = ..., host: _Optional[str] = ..., task: _Optional[int] = ...) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class PokeUserRequest(_message.Message):
    __slots__ = ("request_id", "session_id", "host", "task", "reg", "value")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REG_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_id: str
    host: str
    task: int
    reg: int
    value: int
    def __init__(self, request_id: _Optional[str] = ..., session_id: _Optional[str] = ..., host: _Optional[str] = ..., task: _Optional[int] = ..., reg: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...

class PokeUserResponse(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class PeekUserRequest(_message.Message):
    __slots__ = ("request_id", "session_id", "host", "task", "reg")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REG_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_id: str
    host: str
    task: int
    reg: int
    def __init__(self, request_id: _Optional[str] = ..., session_id: _Optional[str] = ..., host: _Optional[str] = ..., task: _Optional[int] = ..., reg: _Optional[int] = ...) -> None: ...

class PeekUserResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: int
    def __init__(self, value: _Optional[int] = ...) -> None: ...

class TrapsRequest(_message.Message):
    __slots__ = ("request_id", "host", "task")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    host: str
    task: int
    def __init__(self, request_id: _Optional[str] = ..., host: _Optional[str] = ..., task: _Optional[int] = ...) -> None: ...

class Trap(_message.Message):
    __slots__ = ("host", "task", "ptrace_index", "addr", "cpu", "dr6", "ip", "seq")
    HOST_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PTRACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    DR6_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    host: str
    task: int
    ptrace_index: int
    addr: int
    cpu: int
    dr6: int
    ip: int
    seq: int
    def __init__(self, host: _Optional[str] = ..., task: _Optional[int] = ..., ptrace_index: _Optional[int] = ..., addr: _Optional[int] = ..., cpu: _Optional[int] = ..., dr6: _Optional[int] = ..., ip: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...
