"""Kernel overhead: `infer` through the scheduler vs the runtime's own `run`, one caller, batch 1.

Same model (a dense ONNX model of about 1 ms), same thread settings (the session's intra-op threads
as the kernel would give them). Goal: ratio <= 1.10, judged on `await infer`, the call an agent on
the event loop makes; `infer_sync` (an agent thread, which runs the request itself when the kernel
is idle) is shown beside it.

    .venv/bin/python bench/bench_overhead.py [--requests 2000] [--width 1792]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import finish, mlp_model, summary_ms, table

from edgekernel.config.kernel import KernelConfig, ModelSpec, SchedulerConfig
from edgekernel.device.inference import Inference
from edgekernel.device.models import file_sha256, runtime_for


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--width", type=int, default=1792, help="hidden width: sets the model cost")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the paths this many times")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(mlp_model(str(Path(tmp) / "mlp.onnx"), width=args.width, depth=args.depth))
        spec = ModelSpec(name="mlp", file=path, sha256=file_sha256(path), runtime="onnx", memory_mb=64)
        config = KernelConfig(models=[spec], threads=1, scheduler=SchedulerConfig(workers=1))
        inference = Inference(config)
        inference.start()
        threads = inference.budget.per_session
        raw = runtime_for("onnx").open(path, threads=threads)
        x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)

        def direct() -> list[float]:
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                raw.run([x])
                times.append(time.perf_counter() - start)
            return times

        def kernel() -> list[float]:
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                inference.scheduler.infer_sync("bench", "mlp", [x])
                times.append(time.perf_counter() - start)
            return times

        async def kernel_async_loop() -> list[float]:
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                await inference.scheduler.infer("bench", "mlp", [x])
                times.append(time.perf_counter() - start)
            return times

        def kernel_async() -> list[float]:
            return asyncio.run(kernel_async_loop())

        direct()
        kernel()
        kernel_async()  # warm every path
        raw_times: list[float] = []
        kernel_times: list[float] = []
        async_times: list[float] = []
        for _ in range(args.rounds):
            raw_times += direct()
            kernel_times += kernel()
            async_times += kernel_async()
        inference.stop()
        raw.close()
    anchor, ours, ours_async = summary_ms(raw_times), summary_ms(kernel_times), summary_ms(async_times)
    ratio_mean = statistics.fmean(kernel_times) / statistics.fmean(raw_times)
    ratio_async = statistics.fmean(async_times) / statistics.fmean(raw_times)
    ratio_p50 = ours["p50_ms"] / anchor["p50_ms"]
    table(
        f"kernel infer vs runtime run, batch 1, {threads} intra-op thread(s), {len(raw_times)} calls each",
        ["path", "p50 ms", "p95 ms", "mean ms", "ratio (mean)"],
        [
            ["runtime run (anchor)", anchor["p50_ms"], anchor["p95_ms"], anchor["mean_ms"], 1.0],
            ["kernel infer_sync (agent thread)", ours["p50_ms"], ours["p95_ms"], ours["mean_ms"], ratio_mean],
            [
                "kernel await infer (asyncio)",
                ours_async["p50_ms"],
                ours_async["p95_ms"],
                ours_async["mean_ms"],
                ratio_async,
            ],
        ],
    )
    finish(
        "overhead",
        {
            "anchor_p50_ms": round(anchor["p50_ms"], 4),
            "kernel_p50_ms": round(ours["p50_ms"], 4),
            "ratio_mean": round(ratio_mean, 4),
            "ratio_p50": round(ratio_p50, 4),
            "async_p50_ms": round(ours_async["p50_ms"], 4),
            "ratio_async_mean": round(ratio_async, 4),
            "goal": "<= 1.10 (await infer)",
            "met": ratio_async <= 1.10,
            "met_sync": ratio_mean <= 1.10,
        },
    )


if __name__ == "__main__":
    main()
