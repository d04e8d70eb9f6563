"""Bare grpc.aio baselines, run as their own processes like the arbiter and the fleet.

* ``unary``: a generic-handler unary echo (bytes in, same bytes out): what a gRPC round
  trip costs with no arbiter logic at all (P1's baseline).
* ``fanout``: N bidi streams held open; a unary Broadcast writes one message to every
  stream and returns when all N replied (P3's baseline: the IPI-with-wait, minus the
  arbiter).
* ``agents``: the N stream ends for ``fanout``, spread 64 to a channel like the fleet.
* ``relay``: the floor of this architecture (P1's baseline since round two): a unary
  ``Relay`` forwards each request over one bidi stream to a bare "agent" process
  (``relay-agent``), which sends it straight back, and answers when it returns. Two
  loopback hops and no logic, as a reserve through the arbiter makes (client to
  arbiter, arbiter to agent and back).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Sequence

import grpc

SERVICE = "bench.Echo"
STREAMS_PER_CHANNEL = 64  # as agent.main does
ACK = b"\x08\x01" + b"a" * 40  # about the size of an agent's Ack with a small image


def _identity(b: bytes) -> bytes:
    return b


class Fanout:
    """Server side of the fan-out baseline: one outbox and one pending reply per stream."""

    def __init__(self) -> None:
        self.streams: list[tuple[asyncio.Queue[bytes], list[asyncio.Future[bytes]]]] = []

    async def connect(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        outbox: asyncio.Queue[bytes] = asyncio.Queue()
        waiting: list[asyncio.Future[bytes]] = []
        entry = (outbox, waiting)
        self.streams.append(entry)

        async def read() -> None:
            async for reply in requests:
                if waiting:
                    waiting.pop(0).set_result(reply)

        reader = asyncio.create_task(read())
        try:
            yield b"welcome"
            while True:
                yield await outbox.get()
        finally:
            reader.cancel()
            self.streams.remove(entry)

    async def broadcast(
        self, payload: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        loop = asyncio.get_running_loop()
        futures = []
        for outbox, waiting in self.streams:
            fut: asyncio.Future[bytes] = loop.create_future()
            waiting.append(fut)
            futures.append(fut)
            outbox.put_nowait(payload)
        await asyncio.gather(*futures)
        return len(futures).to_bytes(4, "little")


class Relay:
    """Server side of the relay baseline: one agent stream, a future per request."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[bytes] | None = None
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.ids = 0

    async def connect(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.outbox = outbox

        async def read() -> None:
            async for reply in requests:
                fut = self.waiting.pop(int.from_bytes(reply[:8], "little"), None)
                if fut is not None and not fut.done():
                    fut.set_result(reply[8:])

        reader = asyncio.create_task(read())
        try:
            yield b"welcome"
            while True:
                yield await outbox.get()
        finally:
            reader.cancel()
            self.outbox = None

    async def relay(self, payload: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if self.outbox is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no relay agent connected")
        assert self.outbox is not None
        self.ids += 1
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[self.ids] = fut
        self.outbox.put_nowait(self.ids.to_bytes(8, "little") + payload)
        return await fut


async def serve(kind: str, listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100_000)])

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    fan = Fanout()
    relay = Relay()
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, _identity, _identity),
        "Broadcast": grpc.unary_unary_rpc_method_handler(fan.broadcast, _identity, _identity),
        "Connect": grpc.stream_stream_rpc_method_handler(fan.connect, _identity, _identity),
        "Relay": grpc.unary_unary_rpc_method_handler(relay.relay, _identity, _identity),
        "RelayConnect": grpc.stream_stream_rpc_method_handler(relay.connect, _identity, _identity),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"echo {kind} listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    await _until_signal()
    await server.stop(grace=0.5)


async def agents(target: str, n: int) -> None:
    """N stream ends that answer every message with an ack-sized reply."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(0, n, STREAMS_PER_CHANNEL)]
    ready = 0

    async def one(i: int) -> None:
        nonlocal ready
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[bytes]:
            while True:
                yield await replies.get()

        call = channels[i // STREAMS_PER_CHANNEL].stream_stream(
            f"/{SERVICE}/Connect", request_serializer=_identity, response_deserializer=_identity
        )(outgoing())
        first = True
        async for _ in call:
            if first:
                first = False
                ready += 1
                if ready == n:
                    print("agents ready", flush=True)
                continue
            replies.put_nowait(ACK)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await _until_signal()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()


async def relay_agent(target: str) -> None:
    """The relay's bare agent: one stream, every message sent straight back."""
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[bytes]:
        while True:
            yield await replies.get()

    async def run() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.stream_stream(
                f"/{SERVICE}/RelayConnect",
                request_serializer=_identity,
                response_deserializer=_identity,
            )(outgoing())
            first = True
            async for msg in call:
                if first:
                    first = False
                    print("relay agent ready", flush=True)
                    continue
                replies.put_nowait(msg)

    task = asyncio.create_task(run())
    await _until_signal()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m hwbp.bench.echo", description=__doc__)
    p.add_argument("kind", choices=["server", "agents", "relay-agent"])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--target", default="")
    p.add_argument("-n", type=int, default=1)
    args = p.parse_args(argv)
    if args.kind == "server":
        asyncio.run(serve(args.kind, args.listen))
    elif args.kind == "relay-agent":
        asyncio.run(relay_agent(args.target))
    else:
        asyncio.run(agents(args.target, args.n))


if __name__ == "__main__":
    main()
