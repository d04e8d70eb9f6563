"""amd64 registers as gdb sees them: the target description and the ``g`` packet layout.

Pure: it converts the kernel's ``user_regs_struct`` (PTRACE_GETREGS, 27 longs) and
``user_fpregs_struct`` (PTRACE_GETFPREGS, the 512-byte FXSAVE area) to and from the
bytes of gdb's register numbers. The numbering is ours, declared in the target
description we send (``TARGET_XML``); gdb matches registers by name within the
standard features (org.gnu.gdb.i386.core/sse/linux/segments), so the order only has to
agree between the XML and ``REGISTERS``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# user_regs_struct, in the kernel's order (arch/x86/include/asm/user_64.h).
GP_FIELDS = (
    *("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8"),
    *("rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp"),
    *("ss", "fs_base", "gs_base", "ds", "es", "fs", "gs"),
)
GP = struct.Struct(f"<{len(GP_FIELDS)}Q")
GP_SIZE = GP.size  # 216
FP_SIZE = 512
_GP_INDEX = {name: i for i, name in enumerate(GP_FIELDS)}

# FXSAVE offsets (user_fpregs_struct).
_CWD, _SWD, _FTW, _FOP, _FIP, _FDP, _MXCSR, _ST, _XMM = 0, 2, 4, 6, 8, 16, 24, 32, 160


@dataclass(frozen=True, slots=True)
class Register:
    regnum: int
    name: str
    bits: int
    type: str
    group: str = ""

    @property
    def size(self) -> int:
        return self.bits // 8


X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")


def _table() -> tuple[Register, ...]:
    regs: list[tuple[str, int, str, str]] = []
    regs += [(n, 64, "int64", "general") for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi")]
    regs += [("rbp", 64, "data_ptr", "general"), ("rsp", 64, "data_ptr", "general")]
    regs += [(f"r{i}", 64, "int64", "general") for i in range(8, 16)]
    regs += [("rip", 64, "code_ptr", "general"), ("eflags", 32, "i386_eflags", "general")]
    regs += [(s, 32, "int32", "general") for s in ("cs", "ss", "ds", "es", "fs", "gs")]
    regs += [(f"st{i}", 80, "i387_ext", "float") for i in range(8)]
    regs += [(n, 32, "int", "float") for n in X87_CONTROL]
    regs += [(f"xmm{i}", 128, "vec128", "vector") for i in range(16)]
    regs += [("mxcsr", 32, "i386_mxcsr", "vector")]
    regs += [("orig_rax", 64, "int", "system")]
    regs += [("fs_base", 64, "int", "system"), ("gs_base", 64, "int", "system")]
    return tuple(Register(i, n, b, t, g) for i, (n, b, t, g) in enumerate(regs))


REGISTERS = _table()
BY_NAME = {r.name: r for r in REGISTERS}
PC = BY_NAME["rip"].regnum
G_SIZE = sum(r.size for r in REGISTERS)

_FEATURES = (
    ("org.gnu.gdb.i386.core", "rax", "fop"),
    ("org.gnu.gdb.i386.sse", "xmm0", "mxcsr"),
    ("org.gnu.gdb.i386.linux", "orig_rax", "orig_rax"),
    ("org.gnu.gdb.i386.segments", "fs_base", "gs_base"),
)

_EFLAGS_BITS = (
    *(("CF", 0), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9)),
    *(("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18)),
    *(("VIF", 19), ("VIP", 20), ("ID", 21)),
)
_MXCSR_BITS = (
    *(("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6)),
    *(("IM", 7), ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15)),
)
_TYPES = {
    "org.gnu.gdb.i386.core": [
        '<flags id="i386_eflags" size="4">',
        *(f'<field name="{n}" start="{b}" end="{b}"/>' for n, b in _EFLAGS_BITS),
        "</flags>",
    ],
    "org.gnu.gdb.i386.sse": [
        '<vector id="v4f" type="ieee_single" count="4"/>',
        '<vector id="v2d" type="ieee_double" count="2"/>',
        '<vector id="v16i8" type="int8" count="16"/>',
        '<vector id="v8i16" type="int16" count="8"/>',
        '<vector id="v4i32" type="int32" count="4"/>',
        '<vector id="v2i64" type="int64" count="2"/>',
        '<union id="vec128">',
        '<field name="v4_float" type="v4f"/>',
        '<field name="v2_double" type="v2d"/>',
        '<field name="v16_int8" type="v16i8"/>',
        '<field name="v8_int16" type="v8i16"/>',
        '<field name="v4_int32" type="v4i32"/>',
        '<field name="v2_int64" type="v2i64"/>',
        '<field name="uint128" type="uint128"/>',
        "</union>",
        '<flags id="i386_mxcsr" size="4">',
        *(f'<field name="{n}" start="{b}" end="{b}"/>' for n, b in _MXCSR_BITS),
        "</flags>",
    ],
}


def _target_xml() -> str:
    lines = [
        '<?xml version="1.0"?>',
        '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
        '<target version="1.0">',
        "<architecture>i386:x86-64</architecture>",
        "<osabi>GNU/Linux</osabi>",
    ]
    for feature, first, last in _FEATURES:
        lines.append(f'<feature name="{feature}">')
        lines += _TYPES.get(feature, [])
        lo, hi = BY_NAME[first].regnum, BY_NAME[last].regnum
        for r in REGISTERS[lo : hi + 1]:
            group = f' group="{r.group}"' if r.group in ("float", "vector", "system") else ""
            lines.append(
                f'<reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{r.regnum}"'
                f"{group}/>"
            )
        lines.append("</feature>")
    lines.append("</target>")
    return "\n".join(lines) + "\n"


TARGET_XML = _target_xml().encode()


# --- conversion ------------------------------------------------------------------------


def _u(data: bytes, off: int, size: int) -> int:
    return int.from_bytes(data[off : off + size], "little")


def _full_tag(fp: bytes) -> int:
    """The 16-bit x87 tag word from FXSAVE's abridged one (gdb wants the full form)."""
    abridged = fp[_FTW]
    top = (_u(fp, _SWD, 2) >> 11) & 7
    tag = 0
    for phys in range(8):
        if not abridged & (1 << phys):
            t = 3  # empty
        else:
            st = (phys - top) & 7  # st_space is in stack order
            raw = fp[_ST + 16 * st : _ST + 16 * st + 10]
            exponent = _u(raw, 8, 2) & 0x7FFF
            mantissa = _u(raw, 0, 8)
            if exponent == 0x7FFF:
                t = 2  # special: infinity or NaN
            elif exponent == 0:
                t = 1 if mantissa == 0 else 2  # zero, or denormal
            else:
                t = 0 if mantissa >> 63 else 2  # valid, or unnormal
        tag |= t << (2 * phys)
    return tag


def _abridged_tag(full: int) -> int:
    return sum(1 << i for i in range(8) if (full >> (2 * i)) & 3 != 3)


def read(regnum: int, gp: bytes, fp: bytes) -> bytes:
    """Register ``regnum`` as gdb wants it (little-endian, its own size)."""
    r = REGISTERS[regnum]
    if r.name in _GP_INDEX:
        value = int(GP.unpack(gp)[_GP_INDEX[r.name]])
        return (value & ((1 << r.bits) - 1)).to_bytes(r.size, "little")
    if r.name.startswith("st"):
        i = int(r.name[2:])
        return fp[_ST + 16 * i : _ST + 16 * i + 10]
    if r.name.startswith("xmm"):
        i = int(r.name[3:])
        return fp[_XMM + 16 * i : _XMM + 16 * i + 16]
    value = {
        "fctrl": lambda: _u(fp, _CWD, 2),
        "fstat": lambda: _u(fp, _SWD, 2),
        "ftag": lambda: _full_tag(fp),
        "fiseg": lambda: (_u(fp, _FIP, 8) >> 32) & 0xFFFF,
        "fioff": lambda: _u(fp, _FIP, 4),
        "foseg": lambda: (_u(fp, _FDP, 8) >> 32) & 0xFFFF,
        "fooff": lambda: _u(fp, _FDP, 4),
        "fop": lambda: _u(fp, _FOP, 2) & 0x7FF,
        "mxcsr": lambda: _u(fp, _MXCSR, 4),
    }[r.name]()
    return value.to_bytes(r.size, "little")


def write(regnum: int, data: bytes, gp: bytes, fp: bytes) -> tuple[bytes, bytes]:
    """New (gp, fp) with ``regnum`` set to ``data``; ValueError for a wrong size."""
    r = REGISTERS[regnum]
    if len(data) != r.size:
        raise ValueError(f"register {r.name} takes {r.size} bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    if r.name in _GP_INDEX:
        fields = list(GP.unpack(gp))
        i = _GP_INDEX[r.name]
        if r.bits < 64:  # keep the high half the kernel holds (segment selectors, eflags)
            value |= fields[i] & ~((1 << r.bits) - 1)
        fields[i] = value
        return GP.pack(*fields), fp
    buf = bytearray(fp)
    if r.name.startswith("st"):
        off = _ST + 16 * int(r.name[2:])
        buf[off : off + 10] = data
    elif r.name.startswith("xmm"):
        off = _XMM + 16 * int(r.name[3:])
        buf[off : off + 16] = data
    elif r.name == "ftag":
        buf[_FTW] = _abridged_tag(value)
    elif r.name in ("fiseg", "foseg"):
        off = _FIP if r.name == "fiseg" else _FDP
        old = _u(fp, off, 8)
        new = (old & 0xFFFF_0000_FFFF_FFFF) | ((value & 0xFFFF) << 32)
        buf[off : off + 8] = new.to_bytes(8, "little")
    else:
        off, size = {
            "fctrl": (_CWD, 2),
            "fstat": (_SWD, 2),
            "fioff": (_FIP, 4),
            "fooff": (_FDP, 4),
            "fop": (_FOP, 2),
            "mxcsr": (_MXCSR, 4),
        }[r.name]
        buf[off : off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    return gp, bytes(buf)


def read_all(gp: bytes, fp: bytes) -> bytes:
    """The ``g`` reply's bytes: every register in regnum order."""
    return b"".join(read(r.regnum, gp, fp) for r in REGISTERS)


def write_all(data: bytes, gp: bytes, fp: bytes) -> tuple[bytes, bytes]:
    """Apply a ``G`` packet's bytes; ValueError if it is not exactly ``G_SIZE`` long."""
    if len(data) != G_SIZE:
        raise ValueError(f"G packet carries {len(data)} bytes, expected {G_SIZE}")
    off = 0
    for r in REGISTERS:
        gp, fp = write(r.regnum, data[off : off + r.size], gp, fp)
        off += r.size
    return gp, fp


def pc(gp: bytes) -> int:
    return int(GP.unpack(gp)[_GP_INDEX["rip"]])


def with_pc(gp: bytes, value: int) -> bytes:
    fields = list(GP.unpack(gp))
    fields[_GP_INDEX["rip"]] = value
    return GP.pack(*fields)
