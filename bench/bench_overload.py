"""Overload at 2x capacity: p95 latency and shed rate with the SLO controller vs without.

The ~3 ms dense model (one run at batch 1) is served with dynamic batching on one core (the load
generator, a Python thread submitting thousands of requests a second, needs the other). First its
capacity C is measured closed-loop (32 callers). Then requests arrive open-loop (Poisson) at 2C for a
while, once with a plain bounded queue (the anchor) and once with the PID controller holding a p95
target; both are measured after a warm-up.
Goal: p95 within the SLO with the controller. A third run with the PID's gains at zero shows what
the feed-forward part alone (shedding what the cost model says would miss the target) does.

    .venv/bin/python bench/bench_overload.py [--seconds 8] [--slo-ms 50]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from common import finish, mlp_model, percentile, table

from edgekernel.config.kernel import (
    AgentQuota,
    BatchingConfig,
    KernelConfig,
    ModelSpec,
    SchedulerConfig,
    SloConfig,
)
from edgekernel.device.inference import Inference
from edgekernel.device.models import file_sha256
from edgekernel.device.scheduler import SchedulerError


def serve(spec: ModelSpec, slo: SloConfig | None, max_queue: int) -> Inference:
    config = KernelConfig(
        models=[spec],
        threads=1,  # the kernel gets one core; the load generator needs the other
        scheduler=SchedulerConfig(
            max_queue=max_queue,
            batching=BatchingConfig(max_wait_ms=5.0),
            slo=slo,
            default_quota=AgentQuota(max_concurrent=100_000),  # the queue, not a quota, is the limit
        ),
    )
    inference = Inference(config)
    inference.start()
    return inference


def capacity(spec: ModelSpec, x: np.ndarray, seconds: float) -> float:
    inference = serve(spec, None, 4096)
    stop = threading.Event()
    done = [0] * 32

    def caller(i: int) -> None:
        while not stop.is_set():
            inference.scheduler.infer_sync("probe", spec.name, [x])
            done[i] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    before, start = sum(done), time.perf_counter()
    time.sleep(seconds)
    rate = (sum(done) - before) / (time.perf_counter() - start)
    stop.set()
    for thread in threads:
        thread.join()
    inference.stop()
    return rate


def open_loop(
    inference: Inference, name: str, x: np.ndarray, *, rate: float, seconds: float, warmup: float
) -> dict[str, float]:
    """Offer `rate` requests/s for `warmup` + `seconds`; count only those submitted after the warm-up."""
    rng = np.random.default_rng(7)
    latencies: list[float] = []
    failed = shed = submitted = 0
    lock = threading.Lock()

    def record(start: float, future: Future[list[np.ndarray]]) -> None:
        nonlocal failed
        end = time.perf_counter()
        if start < measure_from:
            return
        with lock:
            if future.exception() is None:
                latencies.append(end - start)
            else:
                failed += 1

    pending: list[Future[list[np.ndarray]]] = []
    next_at = time.perf_counter()
    measure_from = next_at + warmup
    end_at = measure_from + seconds
    while next_at < end_at:
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        start = time.perf_counter()
        counted = start >= measure_from
        submitted += counted
        try:
            future = inference.scheduler.submit("load", name, [x])
        except SchedulerError:
            shed += counted
        else:
            future.add_done_callback(lambda f, s=start: record(s, f))
            pending.append(future)
        next_at += rng.exponential(1.0 / rate)
    for future in pending:
        with contextlib.suppress(Exception):  # failures are counted by record
            future.result(timeout=30)
    with lock:
        return {
            "submitted": submitted,
            "completed": len(latencies),
            "shed": shed + failed,
            "shed_rate": (shed + failed) / submitted,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p95_ms": percentile(latencies, 95) * 1000,
            "goodput": len(latencies) / seconds,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--window", type=int, default=300, help="requests in the controller's p95 window")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--max-queue", type=int, default=1024)
    args = parser.parse_args()
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(mlp_model(str(Path(tmp) / "mlp.onnx"), width=2560, depth=4))
        spec = ModelSpec(
            name="mlp", file=path, sha256=file_sha256(path), runtime="onnx", memory_mb=128, max_batch=32
        )
        closed_loop = capacity(spec, x, 3.0)
        # open-loop saturation gives the real capacity (closed-loop callers limit batch formation)
        probe = serve(spec, None, args.max_queue)
        cap = open_loop(probe, spec.name, x, rate=3 * closed_loop, seconds=3.0, warmup=1.0)["goodput"]
        probe.stop()
        rate = 2 * cap
        results = {}
        for label, slo in [
            ("bounded queue, no controller (anchor)", None),
            (
                "SLO admission only (PID gains 0)",
                SloConfig(p95_ms=args.slo_ms, window=args.window, kp=0, ki=0, kd=0),
            ),
            ("SLO controller", SloConfig(p95_ms=args.slo_ms, window=args.window)),
        ]:
            inference = serve(spec, slo, args.max_queue)
            time.sleep(0.2)
            results[label] = open_loop(
                inference, spec.name, x, rate=rate, seconds=args.seconds, warmup=args.warmup
            )
            inference.stop()
    table(
        f"open loop at 2x capacity ({rate:.0f} req/s; capacity {cap:.0f} req/s), SLO p95 {args.slo_ms:g} ms",
        ["mode", "submitted", "completed", "shed %", "p50 ms", "p95 ms", "goodput req/s"],
        [
            [
                label,
                r["submitted"],
                r["completed"],
                100 * r["shed_rate"],
                r["p50_ms"],
                r["p95_ms"],
                r["goodput"],
            ]
            for label, r in results.items()
        ],
    )
    anchor, ours = results["bounded queue, no controller (anchor)"], results["SLO controller"]
    finish(
        "overload",
        {
            "capacity_rps": round(cap, 1),
            "offered_rps": round(rate, 1),
            "slo_p95_ms": args.slo_ms,
            "anchor_p95_ms": round(anchor["p95_ms"], 2),
            "anchor_shed_rate": round(anchor["shed_rate"], 3),
            "controller_p95_ms": round(ours["p95_ms"], 2),
            "controller_shed_rate": round(ours["shed_rate"], 3),
            "controller_goodput_rps": round(ours["goodput"], 1),
            "feedforward_only_p95_ms": round(results["SLO admission only (PID gains 0)"]["p95_ms"], 2),
            "met": ours["p95_ms"] <= args.slo_ms,
        },
    )


if __name__ == "__main__":
    main()
