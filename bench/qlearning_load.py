"""The load for `bench_qlearning.py`: an agent (kind ``ek-bench-burst``) whose loops run large batches
through the kernel's scheduler following a trace of levels, as other agents' inference would. Installed
as a distribution in the benchmark's work folder, never in the package.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgekernel.device.agents import Agent, Context
from edgekernel.errors import EdgeKernelError


class Burst(Agent):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        model: str
        batch: int = Field(256, ge=1, le=65_536)
        window: int = Field(128, ge=1, le=65_536)
        loops: int = Field(4, ge=1, le=64)
        trace: list[tuple[float, int]] = Field(description="(seconds, loops busy), repeated")
        output: str = "load-level"

    async def run(self, ctx: Context) -> None:
        config = ctx.config
        inputs = np.random.default_rng(7).standard_normal((config.batch, config.window, 1)).astype(np.float32)
        level = 0
        changed = asyncio.Event()

        async def loop(index: int) -> None:
            while True:
                if index >= level:
                    changed.clear()
                    await changed.wait()
                    continue
                try:
                    await ctx.infer(config.model, inputs)
                except EdgeKernelError:
                    await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(loop(i)) for i in range(config.loops)]
        try:
            while True:
                for seconds, busy in config.trace:
                    level = busy
                    changed.set()
                    await ctx.publish(config.output, float(busy))
                    await asyncio.sleep(seconds)
        finally:
            for task in tasks:
                task.cancel()


def install(where: Path) -> Path:
    """Write this module and a dist-info naming its agent into `where` (to go on PYTHONPATH)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "ek_bench_load.py").write_text(Path(__file__).read_text())
    info = where / "ek_bench_load-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ek-bench-load\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[edgekernel.agents]\nek-bench-burst = ek_bench_load:Burst\n")
    return where
