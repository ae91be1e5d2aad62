"""Agents the tests install (as the package ``ek_test_agents``) to try the supervisor and the kernel
calls: each does one thing a real agent might, good or bad."""

from __future__ import annotations

import asyncio
import os

import numpy as np
from pydantic import BaseModel

from edgekernel.device.agents import Agent, AgentError, AgentQuotaError, Context


class Scale(Agent):
    class Config(BaseModel):
        gain: float = 2.0
        source: str = "in"

    async def run(self, ctx: Context) -> None:
        runs = ctx.state.get("runs", 0)
        assert isinstance(runs, int)
        await ctx.state.set("runs", runs + 1)
        await ctx.event("started", {"runs": runs + 1, "pid": os.getpid()})
        async for sample in ctx.subscribe(ctx.config.source):
            assert isinstance(sample.value, float)
            await ctx.publish("scaled", sample.value * ctx.config.gain, ts=sample.ts)


class Infer(Agent):
    class Config(BaseModel):
        model: str = "dense"
        every_s: float = 0.05

    async def run(self, ctx: Context) -> None:
        async for _ in ctx.every(ctx.config.every_s):
            outputs = await ctx.infer(ctx.config.model, np.ones((1, 4), dtype=np.float32), deadline_ms=10_000)
            await ctx.publish("inferred", float(outputs[0].sum()))


class Crash(Agent):
    async def run(self, ctx: Context) -> None:
        await ctx.publish("crash-runs", 1.0)
        raise RuntimeError("crashed on purpose")


class Leak(Agent):
    async def run(self, ctx: Context) -> None:
        hoard = []
        while True:
            hoard.append(np.ones(4 * 1024 * 1024, dtype=np.float32))  # 16 MiB a step
            await asyncio.sleep(0.01)


class Spin(Agent):
    async def run(self, ctx: Context) -> None:
        await ctx.publish("spin-runs", 1.0)
        while True:  # blocks its event loop: no heartbeat
            pass


class Stubborn(Agent):
    async def run(self, ctx: Context) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await ctx.publish("stubborn-cancelled", 1.0)


class Flood(Agent):
    async def run(self, ctx: Context) -> None:
        refused = 0
        while True:
            try:
                await ctx.publish("flood", 1.0)
            except AgentQuotaError:
                refused += 1
                if refused % 100 == 1:
                    await ctx.state.set("refused", refused)
            await asyncio.sleep(0)


class Actuate(Agent):
    """Drives a stream's input once with a good value and once with a bad one, and says what happened."""

    class Config(BaseModel):
        stream: str = "fan"

    async def run(self, ctx: Context) -> None:
        await ctx.actuate(ctx.config.stream, 0.75)
        try:
            await ctx.actuate(ctx.config.stream, 2.0)
        except AgentError as err:
            await ctx.event("refused", {"error": str(err)})
        await asyncio.sleep(3600)
