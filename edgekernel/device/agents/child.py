"""A process agent's side: ``python -m edgekernel.device.agents.child SOCKET``.

It connects to the kernel, is told which agent to run (hello), loads and configures it, says ready
(or fatal), and runs it with a `Context` whose kernel calls go over the socket. It beats every second
from its event loop, so an agent that blocks the loop is found hung and killed by the kernel. It ends
when the agent's run ends, when told to stop, and when the kernel goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import resource
import signal
import sys
from typing import Any

from pydantic import JsonValue

from edgekernel.device.agents import registry
from edgekernel.device.agents.bus import Bus, Subscription
from edgekernel.device.agents.context import Context, FloatArray
from edgekernel.device.agents.errors import (
    AgentConfigError,
    AgentError,
    AgentQuotaError,
    AgentStoppedError,
)
from edgekernel.device.agents.wire import encode_frame, pack_array, read_frame, unpack_array
from edgekernel.lifeline import guard_parent
from edgekernel.protocol import Sample
from edgekernel.protocol.topics import ID_PATTERN

log = logging.getLogger("edgekernel.agent")

HEARTBEAT_S = 1.0
_ID = re.compile(f"^{ID_PATTERN}$")
_ERRORS: dict[str, type[AgentError]] = {
    "AgentQuotaError": AgentQuotaError,
    "AgentStoppedError": AgentStoppedError,
}


class RemoteError(AgentError):
    """The kernel refused a call for a reason of its own (a model error, an overload)."""


class RemoteCalls:
    """`KernelCalls` over the socket."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._subs: dict[int, Subscription[Sample]] = {}
        self.bus: Bus[Sample] = Bus()

    async def _call(self, agent: str, call: str, **args: Any) -> Any:
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        self._send({"id": call_id, "call": call, "args": args})
        try:
            return await future
        finally:
            self._waiting.pop(call_id, None)

    def _send(self, message: dict[str, Any]) -> None:
        self._writer.write(encode_frame(message))

    def answer(self, message: dict[str, Any]) -> None:
        future = self._waiting.get(message.get("id", -1))
        if future is None or future.done():
            return
        if "err" in message:
            err = message["err"]
            cls = _ERRORS.get(err.get("type"), RemoteError)
            if cls is AgentQuotaError:
                future.set_exception(AgentQuotaError(err["agent"], err.get("quota", ""), err["message"]))
            else:
                future.set_exception(cls(err.get("agent", "-"), err.get("message", "refused")))
        else:
            future.set_result(message.get("ok"))

    def push(self, message: dict[str, Any]) -> None:
        sub = self._subs.get(message.get("sub", -1))
        if sub is not None and "closed" in message:
            log.error("subscription to %s refused: %s", sub.stream, message["closed"])
            sub.close()
        elif sub is not None:
            sub._offer(Sample(ts=ts, value=value) for ts, value in message.get("samples", []))

    def fail_all(self, reason: str) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(AgentStoppedError("-", reason))
        for sub in self._subs.values():
            sub.close()

    async def infer(
        self, agent: str, model: str, inputs: list[FloatArray], priority: int, deadline_s: float | None
    ) -> list[FloatArray]:
        outputs = await self._call(
            agent,
            "infer",
            model=model,
            inputs=[pack_array(a) for a in inputs],
            priority=priority,
            deadline_s=deadline_s,
        )
        return [unpack_array(o) for o in outputs]

    async def publish(self, agent: str, stream: str, samples: list[Sample], best_effort: bool) -> None:
        await self._call(
            agent,
            "publish",
            stream=stream,
            samples=[[s.ts, s.value] for s in samples],
            best_effort=best_effort,
        )

    async def event(self, agent: str, event_type: str, body: JsonValue) -> None:
        await self._call(agent, "event", type=event_type, body=body)

    def subscribe(self, agent: str, stream: str, depth: int) -> Subscription[Sample]:
        if not _ID.match(stream):
            raise AgentError(agent, f"stream {stream!r} must match {ID_PATTERN}")
        sub = self.bus.subscribe(stream, agent, depth)
        sub_id = next(self._ids)
        self._subs[sub_id] = sub
        self._send({"id": sub_id, "call": "subscribe", "args": {"stream": stream, "depth": depth}})
        return sub

    async def state_set(self, agent: str, key: str, value: JsonValue) -> None:
        await self._call(agent, "state_set", key=key, value=value)

    async def state_delete(self, agent: str, key: str) -> None:
        await self._call(agent, "state_delete", key=key)

    async def heartbeat(self, agent: str) -> None:
        return None

    async def actuate(self, agent: str, stream: str, value: float) -> None:
        await self._call(agent, "actuate", stream=stream, value=value)

    async def kernel_stats(self, agent: str) -> dict[str, float]:
        stats = await self._call(agent, "kernel_stats")
        return {str(k): float(v) for k, v in stats.items()}


def _limit_memory(memory_mb: float) -> None:
    """RLIMIT_AS at what the process maps now plus `memory_mb` (the kernel uses a cgroup when it can)."""
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + int(memory_mb * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


async def _main(path: str) -> int:
    reader, writer = await asyncio.open_unix_connection(path)
    hello = await read_frame(reader)
    if hello is None or hello.get("hello") is None:
        return 2
    spec: dict[str, Any] = hello["hello"]
    name = spec["name"]
    calls = RemoteCalls(writer)
    try:
        cls = registry.agent_class(spec["agent"])
        config = registry.configure(cls, name, spec.get("config", {}))
        instance = cls()
    except AgentError as err:
        kind = "config" if isinstance(err, AgentConfigError) else "load"
        writer.write(encode_frame({"fatal": {"kind": kind, "message": str(err)}}))
        await writer.drain()
        return 3
    if spec.get("memory_mb"):
        _limit_memory(float(spec["memory_mb"]))
    ctx = Context(agent=name, device=spec["device"], config=config, calls=calls, state=spec.get("state", {}))
    writer.write(encode_frame({"ready": os.getpid()}))
    run = asyncio.create_task(instance.run(ctx))

    async def beat() -> None:
        while True:
            writer.write(encode_frame({"beat": 1}))
            await asyncio.sleep(HEARTBEAT_S)

    async def listen() -> None:
        while True:
            message = await read_frame(reader)
            if message is None or "stop" in message:
                run.cancel()
                return
            if "sub" in message:
                calls.push(message)
            else:
                calls.answer(message)

    beating = asyncio.create_task(beat())
    listening = asyncio.create_task(listen())
    await asyncio.wait([run, listening], return_when=asyncio.FIRST_COMPLETED)
    if not run.done():
        await asyncio.wait([run])
    beating.cancel()
    listening.cancel()
    error: str | None = None
    if not run.cancelled() and run.exception() is not None:
        exc = run.exception()
        error = f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__
    calls.fail_all("the agent ended")
    with contextlib.suppress(OSError):
        writer.write(encode_frame({"ended": {"error": error}}))
        await writer.drain()
        writer.close()
    return 1 if error else 0


def main() -> None:
    guard_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the kernel's to handle
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s agent {os.getpid()} %(message)s")
    sys.exit(asyncio.run(_main(sys.argv[1])))


if __name__ == "__main__":
    main()
