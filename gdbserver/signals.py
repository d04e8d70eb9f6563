"""Linux signal numbers <-> gdb's own (the remote protocol speaks gdb's, gdb/signals.def).

They agree for 1-6, 8, 9, 11, 13-15 and differ elsewhere (SIGUSR1 is 10 on Linux and 30
to gdb, SIGCHLD 17 and 20): a stub that sent Linux numbers would make gdb misname them.
"""

from __future__ import annotations

GDB_UNKNOWN = 143  # GDB_SIGNAL_UNKNOWN

# Linux x86-64 number -> gdb number.
_TO_GDB = {
    1: 1,  # HUP
    2: 2,  # INT
    3: 3,  # QUIT
    4: 4,  # ILL
    5: 5,  # TRAP
    6: 6,  # ABRT
    7: 10,  # BUS
    8: 8,  # FPE
    9: 9,  # KILL
    10: 30,  # USR1
    11: 11,  # SEGV
    12: 31,  # USR2
    13: 13,  # PIPE
    14: 14,  # ALRM
    15: 15,  # TERM
    17: 20,  # CHLD
    18: 19,  # CONT
    19: 17,  # STOP
    20: 18,  # TSTP
    21: 21,  # TTIN
    22: 22,  # TTOU
    23: 16,  # URG
    24: 24,  # XCPU
    25: 25,  # XFSZ
    26: 26,  # VTALRM
    27: 27,  # PROF
    28: 28,  # WINCH
    29: 23,  # IO
    30: 32,  # PWR
    31: 12,  # SYS
    32: 77,  # REALTIME_32
    33: 45,  # REALTIME_33
    **{n: 46 + (n - 34) for n in range(34, 64)},  # REALTIME_34..63
    64: 78,  # REALTIME_64
}
_FROM_GDB = {g: h for h, g in _TO_GDB.items()}


def to_gdb(host_signal: int) -> int:
    if host_signal == 0:
        return 0
    return _TO_GDB.get(host_signal, GDB_UNKNOWN)


def from_gdb(gdb_signal: int) -> int:
    """The Linux number for a gdb signal; ValueError when Linux has none."""
    if gdb_signal == 0:
        return 0
    try:
        return _FROM_GDB[gdb_signal]
    except KeyError:
        raise ValueError(f"gdb signal {gdb_signal} has no Linux equivalent") from None
