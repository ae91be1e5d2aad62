"""Throughput: 32 concurrent callers through the kernel (dynamic micro-batching) vs the raw runtime
called sequentially at batch 1. Goal: >= 2x.

Two models: the ~1 ms dense model of the overhead benchmark (where inference dominates), and the
project's vibration anomaly model (35 us a run, where Python's per-request cost dominates). Both paths
use the same thread budget: the kernel's session gets the cores' worth of intra-op threads, and so
does the raw session.

    .venv/bin/python bench/bench_throughput.py [--seconds 5] [--callers 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import finish, mlp_model, summary_ms, table

from edgekernel.config.kernel import BatchingConfig, KernelConfig, ModelSpec, SchedulerConfig
from edgekernel.device.inference import Inference
from edgekernel.device.models import file_sha256, runtime_for
from tools.datasets import split

MODELS = Path(__file__).resolve().parent.parent / "models"


def raw_sequential(path: Path, threads: int, seconds: float, samples: list) -> tuple[float, list[float]]:
    session = runtime_for("onnx").open(path, threads=threads)
    for x in samples[:50]:
        session.run([x])
    done, latencies = 0, []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        session.run([samples[done % len(samples)]])
        latencies.append(time.perf_counter() - start)
        done += 1
    session.close()
    return done / seconds, latencies


def kernel_concurrent(
    spec: ModelSpec, threads: int, samples: list, *, callers: int, seconds: float, max_wait_ms: float
) -> tuple[float, list[float], float]:
    config = KernelConfig(
        models=[spec],
        threads=threads,
        scheduler=SchedulerConfig(batching=BatchingConfig(max_wait_ms=max_wait_ms), max_queue=4096),
    )
    inference = Inference(config)
    inference.start()
    stop = threading.Event()
    counts = [0] * callers
    latencies: list[list[float]] = [[] for _ in range(callers)]

    def caller(i: int) -> None:
        n = 0
        while not stop.is_set():
            start = time.perf_counter()
            inference.scheduler.infer_sync(
                f"agent-{i % 4}", spec.name, [samples[(i * 7919 + n) % len(samples)]]
            )
            latencies[i].append(time.perf_counter() - start)
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # ramp up
    before = sum(len(lat) for lat in latencies)
    start = time.perf_counter()
    time.sleep(seconds)
    done = sum(len(lat) for lat in latencies) - before
    elapsed = time.perf_counter() - start
    stop.set()
    for worker in workers:
        worker.join()
    mean_batch = inference.scheduler.stats().mean_batch
    inference.stop()
    return done / elapsed, [t for lat in latencies for t in lat[10:]], mean_batch


def measure(
    name: str, path: Path, samples: list, args: argparse.Namespace
) -> tuple[list[object], dict[str, object]]:
    threads = os.cpu_count() or 1
    spec = ModelSpec(
        name="m", file=path, sha256=file_sha256(path), runtime="onnx", memory_mb=64, max_batch=args.callers
    )
    raw_rate, raw_lat = raw_sequential(path, threads, args.seconds, samples)
    rate, lat, mean_batch = kernel_concurrent(
        spec, threads, samples, callers=args.callers, seconds=args.seconds, max_wait_ms=args.max_wait_ms
    )
    raw_s, ours = summary_ms(raw_lat), summary_ms(lat)
    rows = [
        [
            f"{name}: raw runtime, sequential, batch 1 (anchor)",
            raw_rate,
            raw_s["p50_ms"],
            raw_s["p95_ms"],
            1.0,
            1.0,
        ],
        [
            f"{name}: kernel, {args.callers} callers, batching",
            rate,
            ours["p50_ms"],
            ours["p95_ms"],
            mean_batch,
            rate / raw_rate,
        ],
    ]
    figures = {
        f"{name}.anchor_rps": round(raw_rate, 1),
        f"{name}.kernel_rps": round(rate, 1),
        f"{name}.ratio": round(rate / raw_rate, 3),
        f"{name}.mean_batch": round(mean_batch, 2),
    }
    return rows, figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    rows: list[object] = []
    figures: dict[str, object] = {"goal": ">= 2"}
    with tempfile.TemporaryDirectory() as tmp:
        mlp = Path(mlp_model(str(Path(tmp) / "mlp.onnx"), width=1792, depth=4))
        dense = [rng.standard_normal((1, 256)).astype(np.float32) for _ in range(64)]
        more_rows, more = measure("dense ~1 ms", mlp, dense, args)
        rows += more_rows
        figures.update(more)
    x, _ = split("vibration", "test", n=512)
    more_rows, more = measure(
        "vibration_cnn", MODELS / "vibration_cnn.fp32.onnx", [x[i : i + 1] for i in range(512)], args
    )
    rows += more_rows
    figures.update(more)
    figures["met_dense"] = figures["dense ~1 ms.ratio"] >= 2  # type: ignore[operator]
    figures["met_vibration_cnn"] = figures["vibration_cnn.ratio"] >= 2  # type: ignore[operator]
    table(
        f"requests per second, {os.cpu_count()} threads, {args.seconds:g} s each",
        ["path", "requests/s", "p50 ms", "p95 ms", "mean batch", "ratio"],
        rows,  # type: ignore[arg-type]
    )
    finish("throughput", figures)


if __name__ == "__main__":
    main()
