"""Architecture profiles: how many debug registers, in which pools, and x86 limits.

A profile also carries what one host's CPU and kernel offer beyond the architecture
(``HostFeatures``): the kernel's answer to some requests depends on them, and the
arbiter learns them from the host's agents.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hwbp.model import BpType, SlotClass

TASK_SIZE_MAX = 0x00007FFFFFFFF000  # x86-64 with 4-level paging; at or above: kernel
ADDR_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class HostFeatures:
    """What a host's CPU and kernel offer, as its agent reports them.

    The defaults are what the arbiter assumes of an agent that does not say: an Intel or
    older AMD CPU, a distribution kernel, an agent running as root.
    """

    # X86_FEATURE_BPEXT (/proc/cpuinfo flag "bpext"): AMD's breakpoint address masks.
    # Without it, an aligned power-of-two length above 8 is EOPNOTSUPP.
    bpext: bool = False
    # CONFIG_KPROBES: without it within_kprobe_blacklist() refuses every kernel address,
    # so an execute breakpoint in kernel space is EINVAL.
    kprobes: bool = True
    # CAP_SYS_ADMIN in the agent: without it a breakpoint on a kernel address (with
    # exclude_kernel clear) is EPERM (hw_breakpoint_parse).
    privileged: bool = True


DEFAULT_FEATURES = HostFeatures()
# A host no agent has reported on yet (restored from the ledger after a restart): no
# feature is held against a request; the agents' kernels stay the final authority.
UNREPORTED_FEATURES = HostFeatures(bpext=True, kprobes=True, privileged=True)


@dataclass(frozen=True, slots=True)
class ArchProfile:
    """Slot counts per class. ``mixed`` means one shared pool (x86, sh)."""

    name: str
    inst_slots: int
    data_slots: int
    mixed: bool
    features: HostFeatures = DEFAULT_FEATURES

    def with_features(self, features: HostFeatures) -> ArchProfile:
        """The same registers on a host that offers ``features``."""
        return replace(self, features=features)

    def slot_class(self, bp_type: BpType) -> SlotClass:
        """find_slot_idx(): with mixed registers every type lands in one pool."""
        if self.mixed:
            return SlotClass.DATA
        return SlotClass.DATA if bp_type.is_data else SlotClass.INST

    def slots(self, cls: SlotClass) -> int:
        if self.mixed:
            return self.data_slots
        return self.data_slots if cls is SlotClass.DATA else self.inst_slots

    @property
    def classes(self) -> tuple[SlotClass, ...]:
        return (SlotClass.DATA,) if self.mixed else (SlotClass.INST, SlotClass.DATA)

    @property
    def registers(self) -> int:
        """Physical address registers per CPU (DR0-DR3 on x86)."""
        return self.data_slots if self.mixed else self.inst_slots + self.data_slots


X86_64 = ArchProfile(name="x86_64", inst_slots=4, data_slots=4, mixed=True)


def arm64_like(inst: int = 6, data: int = 4) -> ArchProfile:
    """Separate instruction and data pools, as arm64 counts them at boot."""
    return ArchProfile(name=f"arm64-{inst}+{data}", inst_slots=inst, data_slots=data, mixed=False)
