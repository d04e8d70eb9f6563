"""A remote debugger in a dozen lines: trace task 4242 on host web1 like ptrace(2) would.

Run against `make run` or any arbiter with a host 'web1' (e.g. a simulated fleet:
`hwbp-agent --fleet --host web1 --cpus 2`).
"""

from hwbp.client import Client, NoFreeSlot

with Client("127.0.0.1:50051") as client, client.session(ttl=10, owner="gdb-remote") as s:
    with s.attach("web1", 4242) as tracer:
        tracer.poke(0, 0x601040)  # DR0: reserves a (disabled) slot, like PTRACE_POKEUSER
        tracer.poke(7, 0x000D0001)  # DR7: L0, write watch, 4 bytes
        print(f"DR7 reads back {tracer.peek(7):#x}")
        client.context_switch("web1", 0, 4242)  # the task runs on cpu 0 ...
        hit = client.access("web1", 0, 0x601042, 2, "w")  # ... and writes the watched word
        print(f"hit: {hit.hit}; the task's DR6 now reads {tracer.peek(6):#x}")
        tracer.flush()  # what the task's exit would do; a detach (leaving `with`) keeps them
    try:
        for i in range(5):
            s.reserve("web1", cpu=1, addr=0x700000 + 8 * i, len=8, type="w")
    except NoFreeSlot as refused:
        for holder in refused.holders:  # SlotHolder values: id, owner, session, age, lease
            print(f"cpu {refused.cpu} is held by {holder}")
# Leaving the session releases everything it held; a crashed client's lease expires instead.
