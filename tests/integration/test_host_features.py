"""What a host offers (its agent's report) changes the kernel's answer, and the arbiter's.

Four simulated hosts, one CPU each: a plain one (the defaults: no bpext, kprobes, a
privileged agent), one with AMD's breakpoint extension, one whose kernel has no kprobes,
and one whose agent lacks CAP_SYS_ADMIN. The same requests get each host's answer.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from hwbp.client.sdk import Client
from hwbp.errors import (
    HwbpError,
    InvalidLength,
    KernelAddressNotAllowed,
    KernelAddressUnprivileged,
    MisalignedAddress,
    RangeUnsupported,
)
from tests.integration import procs

KERNEL = 0xFFFF_FFFF_8100_0000
HOSTS = {"plain": (), "amd": ("--bpext",), "nokp": ("--no-kprobes",), "user": ("--unprivileged",)}


@pytest.fixture(scope="module")
def client(arbiter: str) -> Iterator[Client]:
    fleets = [procs.start_fleet(arbiter, host, 1, *flags) for host, flags in HOSTS.items()]
    try:
        with Client(arbiter) as c:
            yield c
    finally:
        for f in fleets:
            f.stop()


def refusal(call: object) -> HwbpError:
    with pytest.raises(HwbpError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_range_lengths_follow_the_hosts_bpext(client: Client) -> None:
    """arch_build_bp_info(): an aligned power of two above 8 is EOPNOTSUPP without
    X86_FEATURE_BPEXT and a range breakpoint with it; other lengths stay EINVAL."""
    err = refusal(lambda: client.reserve("plain", task=7, addr=0x20000, len=32, type="w"))
    assert isinstance(err, RangeUnsupported) and err.errno == errno.EOPNOTSUPP
    assert "bpext" in str(err)

    with client.reserve("amd", task=7, addr=0x20000, len=32, type="w") as r:
        client.context_switch("amd", 0, 7)
        try:
            hit = client.access("amd", 0, 0x2001F, 1, "w")
            assert hit.hit and hit.reservation_id == r.id
            assert not client.access("amd", 0, 0x20020, 1, "w").hit
        finally:
            client.context_switch("amd", 0, None)

    for host in ("plain", "amd"):
        err = refusal(lambda h=host: client.reserve(h, task=7, addr=0x20000, len=12, type="w"))
        assert isinstance(err, InvalidLength)
        err = refusal(lambda h=host: client.reserve(h, task=7, addr=0x20008, len=16, type="w"))
        assert isinstance(err, MisalignedAddress)


def test_kernel_addresses_follow_the_agents_privilege(client: Client) -> None:
    """hw_breakpoint_parse(): a kernel address with exclude_kernel clear is fine for
    CAP_SYS_ADMIN in any scope (a task's too), EPERM without; with exclude_kernel set
    (no --kernel) it is EINVAL everywhere."""
    with client.reserve("plain", task=7, addr=KERNEL, len=8, type="w", kernel=True):
        pass
    err = refusal(lambda: client.reserve("user", task=7, addr=KERNEL, len=8, type="w", kernel=True))
    assert isinstance(err, KernelAddressUnprivileged) and err.errno == errno.EPERM
    for host in ("plain", "user"):
        err = refusal(lambda h=host: client.reserve(h, task=7, addr=KERNEL, len=8, type="w"))
        assert isinstance(err, KernelAddressNotAllowed) and err.errno == errno.EINVAL


def test_exec_in_kernel_space_follows_the_kernels_kprobes(client: Client) -> None:
    """arch_build_bp_info(): an execute breakpoint in kernel space must pass
    within_kprobe_blacklist(), which refuses all of them without CONFIG_KPROBES."""
    with client.reserve("plain", cpu=0, addr=KERNEL, type="x", kernel=True):
        pass
    err = refusal(lambda: client.reserve("nokp", cpu=0, addr=KERNEL, type="x", kernel=True))
    assert isinstance(err, KernelAddressNotAllowed) and err.errno == errno.EINVAL
    assert "kprobes" in str(err)
    with client.reserve("nokp", cpu=0, addr=KERNEL, len=8, type="rw", kernel=True):
        pass  # data breakpoints are not kprobe-checked
