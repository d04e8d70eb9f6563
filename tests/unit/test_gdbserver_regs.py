"""amd64 registers: the target description, the g packet, x87 and segment details."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwbp.gdbserver import regs, signals
from hwbp.gdbserver.regs import FP_SIZE, GP, GP_FIELDS, GP_SIZE, REGISTERS

GP_VALUES = st.lists(st.integers(0, 2**64 - 1), min_size=len(GP_FIELDS), max_size=len(GP_FIELDS))


def gp_with(**fields: int) -> bytes:
    values = [0] * len(GP_FIELDS)
    for name, value in fields.items():
        values[GP_FIELDS.index(name)] = value
    return GP.pack(*values)


def test_the_description_declares_every_register_in_g_order() -> None:
    root = ET.fromstring(regs.TARGET_XML)
    assert root.findtext("architecture") == "i386:x86-64"
    declared = [
        (r.get("name"), int(r.get("regnum", "-1")), int(r.get("bitsize", "0")))
        for r in root.iter("reg")
    ]
    assert declared == [(r.name, r.regnum, r.bits) for r in REGISTERS]
    features = [f.get("name") for f in root.iter("feature")]
    assert "org.gnu.gdb.i386.linux" in features  # gdb's amd64-linux wants orig_rax there
    assert regs.G_SIZE == 560  # 16 GPRs, rip, eflags, 6 selectors, x87, 16 xmm, mxcsr, 3 more


def test_general_registers_come_from_user_regs_struct_by_name() -> None:
    gp = gp_with(rax=0x1122334455667788, rip=0x401136, eflags=0x246, cs=0x33, fs_base=0x7F00)
    fp = bytes(FP_SIZE)
    assert regs.read(regs.BY_NAME["rax"].regnum, gp, fp) == (0x1122334455667788).to_bytes(
        8, "little"
    )
    assert regs.read(regs.PC, gp, fp) == (0x401136).to_bytes(8, "little")
    assert regs.read(regs.BY_NAME["eflags"].regnum, gp, fp) == (0x246).to_bytes(4, "little")
    assert regs.read(regs.BY_NAME["cs"].regnum, gp, fp) == (0x33).to_bytes(4, "little")
    assert regs.pc(regs.with_pc(gp, 0x401137)) == 0x401137


@given(GP_VALUES, st.binary(min_size=FP_SIZE, max_size=FP_SIZE))
def test_writing_back_what_g_read_changes_nothing_gdb_can_see(
    gp_values: list[int], fp: bytes
) -> None:
    gp = GP.pack(*gp_values)
    g = regs.read_all(gp, fp)
    assert len(g) == regs.G_SIZE
    gp2, fp2 = regs.write_all(g, gp, fp)
    assert regs.read_all(gp2, fp2) == g


def test_x87_tag_word_is_widened_from_fxsave_and_narrowed_back() -> None:
    fp = bytearray(FP_SIZE)
    fp[4] = 0b0000_0011  # FXSAVE: physical registers 0 and 1 in use
    fp[2:4] = (0).to_bytes(2, "little")  # TOP = 0: st0 is physical 0
    fp[32 + 8 : 32 + 10] = (0x3FFF).to_bytes(2, "little")  # st0 = 1.0: valid
    fp[32 : 32 + 8] = (1 << 63).to_bytes(8, "little")
    ftag = int.from_bytes(
        regs.read(regs.BY_NAME["ftag"].regnum, bytes(GP_SIZE), bytes(fp)), "little"
    )
    assert ftag == 0xFFF4  # st0 valid (00), st1 zero (01), the rest empty (11)
    _, fp2 = regs.write(
        regs.BY_NAME["ftag"].regnum, (0xFFF0).to_bytes(4, "little"), bytes(GP_SIZE), bytes(fp)
    )
    assert fp2[4] == 0b11


def test_a_register_write_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="takes 8 bytes"):
        regs.write(regs.PC, b"\x00" * 4, bytes(GP_SIZE), bytes(FP_SIZE))
    with pytest.raises(ValueError, match="G packet carries 3 bytes"):
        regs.write_all(b"abc", bytes(GP_SIZE), bytes(FP_SIZE))


def test_signals_are_renumbered_for_gdb() -> None:
    assert signals.to_gdb(5) == 5  # SIGTRAP
    assert signals.to_gdb(10) == 30  # SIGUSR1
    assert signals.to_gdb(19) == 17  # SIGSTOP
    for host in range(1, 65):
        if host != 16:  # SIGSTKFLT: gdb has no name for it
            assert signals.from_gdb(signals.to_gdb(host)) == host
    with pytest.raises(ValueError, match="no Linux equivalent"):
        signals.from_gdb(7)  # SIGEMT
