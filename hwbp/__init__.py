"""The pure core of hwbp-arbiter: the Linux kernel's rules for sharing debug registers.

No gRPC, no asyncio, no clock: values in, values or typed errors out, so the arbiter and
the agents are thin shells around it and every rule is testable on its own.

- ``model``: breakpoints, targets (scopes), reservations, assignments
- ``arch``: architecture profiles (x86-64: four registers in one shared pool)
- ``validate``: the x86 validation rules, one typed error each
- ``ledger``: admission with the kernel's formulas, modify in place, rollback journal
- ``dr7`` and ``registers``: DR7 encoding and a CPU's register file across context switches
- ``ptrace``: PTRACE_POKEUSER / PEEKUSER on u_debugreg as a pure state machine
- ``errors``: the one error hierarchy (stable reason, errno, error class)
- ``pipeline`` and ``keys``: one host's change pipeline as a pure state machine

Everything the distribution installs lives in this one namespace. The shells are its
subpackages, kept as folders of their own at the top of the repository: ``hwbp.server``
(the arbiter), ``hwbp.agent``, ``hwbp.client`` (the SDK: ``from hwbp.client import
Client``), ``hwbp.wire``, ``hwbp.load``, ``hwbp.bench`` and the generated ``hwbp.v1``.
The core never imports them (``tests/unit/test_purity.py``).
"""
