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
"""
