"""int8 vs fp32 on the project's own models: latency ratio and accuracy on held-out synthetic data.

For each model family: the fp32 ONNX model (the anchor), its int8 QDQ ONNX model and its int8 LiteRT
model, all run through the kernel's runtime sessions with the same thread count, at batch 1 and 32.
Goal: int8 at least 1.5x faster with accuracy within 1 point.

    .venv/bin/python bench/bench_int8.py [--threads 1] [--iterations 400]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import finish, machine, percentile, table

from edgekernel.device.models import runtime_for
from edgekernel.device.models.runtime import Session
from tools.datasets import split

MODELS = Path(__file__).resolve().parent.parent / "models"
BATCHES = (1, 32)


def latency_ms(session: Session, x: np.ndarray, iterations: int) -> float:
    for _ in range(20):
        session.run([x])
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        session.run([x])
        times.append(time.perf_counter() - start)
    return percentile(times, 50) * 1000


def accuracy(session: Session, x: np.ndarray, y: np.ndarray) -> float:
    predictions = []
    for start in range(0, len(x), 64):
        [probs] = session.run([x[start : start + 64]])
        predictions.append(np.argmax(probs, axis=1))
    return float(np.mean(np.concatenate(predictions) == y))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=400)
    args = parser.parse_args()
    manifest = json.loads((MODELS / "manifest.json").read_text())
    rows, figures = [], {}
    for family in sorted({m["family"] for m in manifest["models"]}):
        entries = {(m["format"], m["precision"]): m for m in manifest["models"] if m["family"] == family}
        dataset = entries["onnx", "fp32"]["dataset"]["name"]
        x, y = split(dataset, "test")
        sessions = {
            key: runtime_for(fmt).open(MODELS / entries[key]["file"], threads=args.threads)
            for key in [("onnx", "fp32"), ("onnx", "int8"), ("litert", "int8")]
            for fmt in [key[0]]
        }
        acc = {key: accuracy(s, x, y) for key, s in sessions.items()}
        for batch in BATCHES:
            xb = x[:batch]
            lat = {key: latency_ms(s, xb, args.iterations) for key, s in sessions.items()}
            anchor = lat["onnx", "fp32"]
            for key in sessions:
                speedup = anchor / lat[key]
                rows.append(
                    [
                        family,
                        f"{key[0]} {key[1]}",
                        batch,
                        lat[key],
                        speedup,
                        100 * acc[key],
                        100 * (acc[key] - acc["onnx", "fp32"]),
                    ]
                )
                if key != ("onnx", "fp32"):
                    figures[f"{family}.{key[0]}_int8.b{batch}.speedup"] = round(speedup, 3)
            figures[f"{family}.fp32.b{batch}.p50_ms"] = round(anchor, 4)
        for key in sessions:
            figures[f"{family}.{key[0]}_{key[1]}.accuracy"] = round(acc[key], 4)
        for session in sessions.values():
            session.close()
    table(
        f"int8 vs fp32 ({args.threads} thread(s), p50 of {args.iterations} runs)",
        ["model", "variant", "batch", "p50 ms", "speed-up vs fp32", "accuracy %", "Δ accuracy pt"],
        rows,
    )
    simd = machine()["simd"]
    print(f"CPU int8 instructions here: {', '.join(simd) or 'none found'}")
    figures["goal"] = ">= 1.5x faster, accuracy within 1 point"
    for batch in BATCHES:
        speedups = [v for k, v in figures.items() if k.endswith(f".b{batch}.speedup") and "onnx_int8" in k]
        figures[f"met_onnx_b{batch}"] = all(v >= 1.5 for v in speedups)  # type: ignore[operator]
    deltas = [r[6] for r in rows]
    figures["met_accuracy"] = all(abs(d) <= 1.0 for d in deltas)  # type: ignore[arg-type]
    finish("int8", figures)


if __name__ == "__main__":
    main()
