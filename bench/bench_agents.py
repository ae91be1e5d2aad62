"""Agents' figures: the cost of a kernel call from an agent, and how fast a crashed one runs again.

Real agents under a real `AgentHost` (the kernel's agent side, with quotas), on a real scheduler and
ONNX Runtime session, with the same ~1 ms dense model as bench_overhead.py, batch 1, one worker and
one intra-op thread. The benchmark's agent is installed as a distribution with an entry point in a
temporary folder, so a process agent finds it as a user's agent would.

1. inline agent, `await ctx.infer` vs the runtime's own `run` in a loop (anchor): goal ≤ 1.10.
2. process agent: a no-op kernel call (`ctx.kernel_stats()`) round trip, p50 and p99; `await
   ctx.infer` vs the same anchor: goal ≤ 1.25.
3. a process agent killed (SIGKILL) → running again, against its configured first backoff (0.5 s);
   split into noticing the death, the backoff and the start of a new process.

Rounds alternate the anchor and ours, so drift on a busy machine hits both.

    .venv/bin/python bench/bench_agents.py [--requests 2000] [--rounds 3] [--crashes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import finish, mlp_model, percentile, summary_ms, table

from edgekernel.config.agents import AgentSpec
from edgekernel.config.kernel import KernelConfig, ModelSpec, SchedulerConfig
from edgekernel.device.agents.host import AgentHost, Ports
from edgekernel.device.agents.lifecycle import AgentState, Change
from edgekernel.device.inference import Inference
from edgekernel.device.models import file_sha256, runtime_for
from edgekernel.protocol import Sample

FEATURES = 256
AGENT_SOURCE = '''
import asyncio, json, os, time
from pathlib import Path

import numpy as np


class BenchAgent:
    """Times its own kernel calls and writes them to config["out"]; "idle" only sits there."""

    async def run(self, ctx):
        mode, out = ctx.config["mode"], Path(ctx.config["out"])
        if mode == "idle":
            out.with_suffix(".tmp").write_text(json.dumps({"pid": os.getpid()}))
            out.with_suffix(".tmp").rename(out)
            await asyncio.Event().wait()
        x = np.random.default_rng(1).standard_normal((1, ctx.config["features"])).astype(np.float32)
        times = []
        for i in range(ctx.config["warmup"] + ctx.config["requests"]):
            start = time.perf_counter()
            if mode == "infer":
                await ctx.infer("mlp", x)
            else:
                await ctx.kernel_stats()
            if i >= ctx.config["warmup"]:
                times.append(time.perf_counter() - start)
        partial = out.with_suffix(".tmp")
        partial.write_text(json.dumps({"times": times, "pid": os.getpid()}))
        partial.rename(out)
'''


def install_agent(where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "ek_bench_agents.py").write_text(AGENT_SOURCE)
    info = where / "ek_bench_agents-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ek-bench-agents\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[edgekernel.agents]\nek-bench = ek_bench_agents:BenchAgent\n")
    sys.path.insert(0, str(where))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(where), os.environ.get("PYTHONPATH")]))
    return where


class Bench:
    def __init__(self, workdir: Path, inference: Inference) -> None:
        self.workdir = workdir
        self.changes: list[Change] = []
        scheduler = inference.scheduler

        async def infer(
            agent: str, model: str, inputs: list[Any], priority: int, deadline_s: float | None
        ) -> list[Any]:  # what the kernel's port does: straight to the scheduler
            return await scheduler.infer(agent, model, inputs, priority=priority, deadline_s=deadline_s)

        async def publish(stream: str, samples: list[Sample], best_effort: bool) -> bool:
            return True

        async def event(event_type: str, agent: str, body: object) -> bool:
            return True

        self.host = AgentHost(
            "bench",
            workdir / "data",
            Ports(infer, publish, event, stats=lambda: {"queue_depth": 0.0}),
            on_change=self.changes.append,
        )
        self.runs = 0

    async def calls(self, isolation: str, mode: str, requests: int, warmup: int) -> list[float]:
        """One agent run making `requests` calls; the times it measured."""
        self.runs += 1
        out = self.workdir / f"run{self.runs}.json"
        config = {"mode": mode, "out": str(out), "features": FEATURES, "requests": requests, "warmup": warmup}
        spec = AgentSpec(
            name=f"bench-{self.runs}",
            agent="ek-bench",
            isolation=isolation,  # type: ignore[arg-type]
            restart="never",
            quotas={"publish_rate": None},  # type: ignore[arg-type]
            config=config,
        )
        await self.host.apply([spec])
        await until(out.exists, f"{isolation} agent's results", timeout=600)
        await self.host.apply([])
        times: list[float] = json.loads(out.read_text())["times"]
        return times

    async def crash(self) -> dict[str, float]:
        """Start an idle process agent, SIGKILL it, and time its way back to running."""
        self.runs += 1
        name = f"crash-{self.runs}"
        out = self.workdir / f"run{self.runs}.json"
        spec = AgentSpec(
            name=name,
            agent="ek-bench",
            isolation="process",
            restart="always",
            backoff_first_s=0.5,
            config={"mode": "idle", "out": str(out)},
        )
        await self.host.apply([spec])
        await until(out.exists, "the idle agent", timeout=120)
        pid = json.loads(out.read_text())["pid"]
        await asyncio.sleep(0.5)  # settled
        mark = len(self.changes)
        killed = time.time()
        os.kill(pid, signal.SIGKILL)

        def running_again() -> bool:
            return any(c.agent == name and c.new is AgentState.RUNNING for c in self.changes[mark:])

        await until(running_again, "the restart", timeout=120)
        await self.host.apply([])
        mine = [c for c in self.changes[mark:] if c.agent == name]
        at = {c.new: c.at for c in mine}
        return {
            "total_s": at[AgentState.RUNNING] - killed,
            "notice_s": at[AgentState.FAILED] - killed,
            "backoff_s": at[AgentState.STARTING] - at[AgentState.FAILED],
            "start_s": at[AgentState.RUNNING] - at[AgentState.STARTING],
        }


async def until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def raw_loop(session: Any, requests: int) -> list[float]:
    x = np.random.default_rng(1).standard_normal((1, FEATURES)).astype(np.float32)
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        session.run([x])
        times.append(time.perf_counter() - start)
    return times


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    path = Path(mlp_model(str(workdir / "mlp.onnx"), width=args.width, depth=args.depth))
    spec = ModelSpec(name="mlp", file=path, sha256=file_sha256(path), runtime="onnx", memory_mb=64)
    scheduler = SchedulerConfig(workers=1, loop_inline_ms=args.loop_inline_ms)
    config = KernelConfig(models=[spec], threads=1, scheduler=scheduler)
    inference = Inference(config)
    inference.start()
    raw = runtime_for("onnx").open(path, threads=inference.budget.per_session)
    bench = Bench(workdir, inference)
    found: dict[str, Any] = {"raw": [], "inline": [], "raw_p": [], "process": [], "call": [], "crash": []}
    try:
        raw_loop(raw, args.requests // 4)
        for _ in range(args.rounds):
            found["raw"] += raw_loop(raw, args.requests)
            found["inline"] += await bench.calls("inline", "infer", args.requests, args.requests // 10)
        for _ in range(args.rounds):
            found["raw_p"] += raw_loop(raw, args.requests)
            found["process"] += await bench.calls("process", "infer", args.requests, args.requests // 10)
            found["call"] += await bench.calls("process", "call", args.requests, args.requests // 10)
        for _ in range(args.crashes):
            found["crash"].append(await bench.crash())
    finally:
        await bench.host.close()
        inference.stop()
        raw.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--width", type=int, default=1792, help="hidden width: sets the model cost")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="alternate anchor and ours this many times")
    parser.add_argument("--crashes", type=int, default=5)
    parser.add_argument(
        "--loop-inline-ms",
        type=float,
        default=5.0,
        help="the scheduler's setting; 0 hands every request over",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        install_agent(Path(tmp) / "site")
        found = asyncio.run(measure(args, Path(tmp)))
    raw, inline, raw_p, process, call = (
        summary_ms(found[key]) for key in ("raw", "inline", "raw_p", "process", "call")
    )
    ratio_inline = statistics.fmean(found["inline"]) / statistics.fmean(found["raw"])
    ratio_process = statistics.fmean(found["process"]) / statistics.fmean(found["raw_p"])
    table(
        f"agent kernel calls, batch 1, ~{raw['p50_ms']:.2f} ms model, {len(found['raw'])} calls each",
        ["path", "p50 ms", "p99 ms", "mean ms", "ratio (mean)"],
        [
            ["runtime run (anchor)", raw["p50_ms"], raw["p99_ms"], raw["mean_ms"], 1.0],
            [
                "inline agent await ctx.infer",
                inline["p50_ms"],
                inline["p99_ms"],
                inline["mean_ms"],
                ratio_inline,
            ],
            ["runtime run (anchor, process rounds)", raw_p["p50_ms"], raw_p["p99_ms"], raw_p["mean_ms"], 1.0],
            [
                "process agent await ctx.infer",
                process["p50_ms"],
                process["p99_ms"],
                process["mean_ms"],
                ratio_process,
            ],
            ["process agent kernel_stats (no-op call)", call["p50_ms"], call["p99_ms"], call["mean_ms"], "—"],
        ],
    )
    crashes = found["crash"]
    parts = ["total_s", "notice_s", "backoff_s", "start_s"]
    table(
        f"process agent killed → running, {len(crashes)} times (backoff 0.5 s −20 %)",
        ["part", "median s", "min s", "max s"],
        [
            [
                part,
                statistics.median(c[part] for c in crashes),
                min(c[part] for c in crashes),
                max(c[part] for c in crashes),
            ]
            for part in parts
        ],
    )
    finish(
        "agents",
        {
            "anchor_p50_ms": round(raw["p50_ms"], 4),
            "inline_p50_ms": round(inline["p50_ms"], 4),
            "ratio_inline_mean": round(ratio_inline, 4),
            "process_p50_ms": round(process["p50_ms"], 4),
            "ratio_process_mean": round(ratio_process, 4),
            "call_p50_ms": round(call["p50_ms"], 4),
            "call_p99_ms": round(percentile([t * 1000 for t in found["call"]], 99), 4),
            "restart_median_s": round(statistics.median(c["total_s"] for c in crashes), 3),
            "restart_start_median_s": round(statistics.median(c["start_s"] for c in crashes), 3),
            "goal": "inline <= 1.10, process <= 1.25",
            "met_inline": ratio_inline <= 1.10,
            "met_process": ratio_process <= 1.25,
        },
    )


if __name__ == "__main__":
    main()
