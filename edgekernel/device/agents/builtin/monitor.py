"""`monitor`: the box's own health as the `system` stream: CPU and memory use, free disk, the hottest
thermal zone (where /sys/class/thermal has one) and the kernel's inference queue and outbox backlog."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edgekernel.config.base import Id
from edgekernel.device.agents.context import Agent, Context


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: Annotated[float, Field(ge=0.1, le=86_400, allow_inf_nan=False)] = 10.0
    output: Id = "system"
    disk: str = Field("/", description="the file system whose free space is reported")


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies since boot, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def memory_used_percent() -> float | None:
    try:
        info = dict(
            (line.split(":")[0], int(line.split()[1]))
            for line in Path("/proc/meminfo").read_text().splitlines()
        )
        return 100.0 * (1 - info["MemAvailable"] / info["MemTotal"])
    except (OSError, KeyError, ValueError, IndexError, ZeroDivisionError):
        return None


def hottest_zone_c() -> float | None:
    temps = []
    for zone in Path("/sys/class/thermal").glob("thermal_zone*/temp"):
        try:
            temps.append(int(zone.read_text()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


class Monitor(Agent):
    Config = MonitorConfig

    async def run(self, ctx: Context) -> None:
        config: MonitorConfig = ctx.config
        last = cpu_times()
        async for _ in ctx.every(config.interval_s):
            fields: dict[str, float] = {}
            now = cpu_times()
            if now is not None and last is not None and now[1] > last[1]:
                fields["cpu_percent"] = round(100.0 * (now[0] - last[0]) / (now[1] - last[1]), 2)
            last = now
            memory = memory_used_percent()
            if memory is not None:
                fields["memory_percent"] = round(memory, 2)
            try:
                disk = os.statvfs(config.disk)
                fields["disk_free_mb"] = round(disk.f_bavail * disk.f_frsize / 1e6, 1)
            except OSError:
                pass
            temperature = hottest_zone_c()
            if temperature is not None:
                fields["temperature_c"] = temperature
            fields.update(await ctx.kernel_stats())
            await ctx.publish(config.output, fields)
