"""hwbp-gdbserver: stock gdb as a remote client, its hardware watchpoints arbitrated.

gdb speaks the Remote Serial Protocol to us (``packets``, ``rsp``, ``commands``,
``server``); we debug a real process through ptrace (``target``, ``memory``,
``ptrace_sys``, ``regs``, ``signals``). Every hardware breakpoint or watchpoint gdb
inserts is first a reservation in the arbiter's ledger (``bridge``), then armed
(``hwpoints``, ``watchplan``).

Design: each register is reserved as a *tracer-applied* task reservation (the agents
account it and never arm it) and armed by the gdbserver itself with one
``perf_event_open`` event per thread (``sigtrap`` + ``remove_on_exec``), not with
PTRACE_POKEUSER and not by the agents. Measured on Linux 6.18:

* a u_debugreg breakpoint keeps its kernel slot until the thread exits or execs, even
  after DR7 and DR0 are cleared, so the ledger would show free after ``delete`` what
  the kernel still holds; and one left enabled by a tracer that died (SIGKILL) kills
  the process with SIGTRAP at its next hit. A perf event's slot is freed when its fd is
  closed, and the kernel closes it when the gdbserver dies however it dies;
* a hit during a single step is folded into the step's SIGTRAP (si_code TRAP_TRACE);
  only the event's counter shows it, and only the fd's holder can read it, so the
  agents (which hold theirs) could not tell gdb which watchpoint fired;
* agents arm a reservation per CPU as they are live: with one agent offline the task
  would run unwatched on that CPU; our event follows the thread to every CPU.

The README's hwbp-gdbserver section has the whole argument and a session.
"""
