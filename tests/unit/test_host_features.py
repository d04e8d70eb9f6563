"""What an agent reports of its host: CPU flags, kprobes, privilege, and the hello field."""

from __future__ import annotations

import pytest

from hwbp.agent import perf_sys as ps
from hwbp.arch import DEFAULT_FEATURES, X86_64, HostFeatures
from hwbp.errors import InvalidArgument
from hwbp.ledger import HostLedger
from hwbp.v1 import agent_pb2
from hwbp.wire import convert

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme de pse tsc msr bpext perfctr_llc
processor\t: 1
flags\t\t: fpu
"""


def test_cpu_flags_of_the_first_cpu() -> None:
    """X86_FEATURE_BPEXT shows in /proc/cpuinfo as the flag "bpext"."""
    assert "bpext" in ps.cpu_flags(CPUINFO)
    assert "bpext" not in ps.cpu_flags(CPUINFO.replace("bpext ", ""))
    assert ps.cpu_flags("") == set()


def test_capability_from_the_effective_set() -> None:
    """CAP_SYS_ADMIN is bit 21 of CapEff in /proc/self/status."""
    root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"
    assert ps.has_capability(root, ps.CAP_SYS_ADMIN)
    assert not ps.has_capability("CapEff:\t0000000000000400\n", ps.CAP_SYS_ADMIN)
    assert not ps.has_capability("", ps.CAP_SYS_ADMIN)


def test_kprobes_from_the_config_or_the_symbols() -> None:
    assert ps.kprobes_configured("CONFIG_A=y\nCONFIG_KPROBES=y\n", None) is True
    assert (
        ps.kprobes_configured("# CONFIG_KPROBES is not set\nCONFIG_HAVE_KPROBES=y\n", None) is False
    )
    syms = "ffffffff81000000 T _text\nffffffff81234560 T register_kprobe\n"
    assert ps.kprobes_configured(None, syms) is True
    assert ps.kprobes_configured(None, "ffffffff81234560 T register_kprobes_x\n") is False
    assert ps.kprobes_configured(None, None) is None


def test_hello_features_round_trip_and_default() -> None:
    """An agent that does not report features gets the defaults (no bpext, kprobes,
    privileged): what the arbiter assumed before agents reported them."""
    f = HostFeatures(bpext=True, kprobes=False, privileged=False)
    assert convert.features_from(agent_pb2.Hello(features=convert.features_to(f))) == f
    assert convert.features_from(agent_pb2.Hello()) == DEFAULT_FEATURES


def test_a_ledger_takes_new_features_but_not_new_registers() -> None:
    ledger = HostLedger("h", 2)
    ledger.profile = X86_64.with_features(HostFeatures(bpext=True))
    assert ledger.profile.features.bpext
    with pytest.raises(InvalidArgument):
        ledger.profile = X86_64.__class__("other", 2, 2, True)
