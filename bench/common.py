"""Shared by the benchmarks: percentiles, a result table, and the closing JSON line."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

console = Console(width=max(120, Console().width))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank on the sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
    }


def machine() -> dict[str, object]:
    flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
    simd = [f for f in wanted if f" {f}" in flags]
    return {
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "simd": simd,
    }


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        out.add_row(*(f"{cell:.3f}" if isinstance(cell, float) else str(cell) for cell in row))
    console.print(out)


def finish(name: str, figures: dict[str, object]) -> None:
    """The last line of every benchmark: one JSON object with its figures."""
    sys.stdout.flush()
    print(json.dumps({"bench": name, **figures, "machine": machine()}, separators=(",", ":")), flush=True)


def mlp_model(path: str, *, width: int, depth: int = 3, features: int = 256, seed: int = 0) -> str:
    """A dense ONNX model with a dynamic batch dimension, sized by `width` (the benchmarks' ~1 ms model)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    last, size = "x", features
    for layer in range(depth):
        out_size = features if layer == depth - 1 else width
        w = numpy_helper.from_array(
            (rng.standard_normal((size, out_size)) / np.sqrt(size)).astype(np.float32), f"w{layer}"
        )
        b = numpy_helper.from_array(np.zeros(out_size, np.float32), f"b{layer}")
        inits += [w, b]
        nodes.append(helper.make_node("Gemm", [last, f"w{layer}", f"b{layer}"], [f"h{layer}"]))
        nodes.append(helper.make_node("Relu", [f"h{layer}"], [f"r{layer}"]))
        last, size = f"r{layer}", out_size
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["batch", features])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
