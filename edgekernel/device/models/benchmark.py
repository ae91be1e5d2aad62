"""Measuring a model's latency per device and batch size: the table the fleet uses for placement.

Each row comes from real runs of a runtime session on random inputs of the right shape: floats in the
representable range for quantized tensors, small integers for integer ones. Dynamic dimensions other
than the batch need a shape from the caller (`shapes`, as on the command line: ``name=1,128,1``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekernel.device.models._files import file_digest
from edgekernel.device.models._tensors import shape_text
from edgekernel.device.models.registry import runtime_for_file
from edgekernel.device.models.runtime import FloatArray, InferenceError, Session, TensorInfo

Progress = Callable[[int], None]  # called with the number of runs just done


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One (device, batch size) measurement. `to_json` gives plain JSON types."""

    model: str  # file name
    sha256: str
    runtime: str  # onnx | litert
    requested: str  # the device asked for
    device: str  # what ran it (an execution provider or delegate); differs from requested after a fallback
    batch: int
    threads: int
    iterations: int
    load_ms: float  # opening the session, cache included
    mean_ms: float
    p50_ms: float
    p95_ms: float
    min_ms: float
    throughput: float  # samples per second at this batch size
    machine: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``name=1,128,1`` → (``name``, (1, 128, 1)); `ValueError` says what is wrong."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise ValueError(f"{text!r}: expected NAME=D1,D2,... (e.g. input=1,128,1)")
    try:
        shape = tuple(int(dim) for dim in dims.split(","))
    except ValueError:
        raise ValueError(f"{text!r}: dimensions must be whole numbers separated by commas") from None
    if any(dim < 1 for dim in shape):
        raise ValueError(f"{text!r}: dimensions must be at least 1")
    return name, shape


def bench_model(
    path: Path,
    *,
    devices: Sequence[str] = ("cpu",),
    batch_sizes: Sequence[int] | None = None,
    warmup: int = 3,
    iterations: int = 20,
    threads: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    seed: int = 0,
) -> list[BenchRow]:
    """One row per device and batch size, in that order.

    `batch_sizes` defaults to 1 (or the model's fixed batch). A batch size a model with a fixed first
    dimension cannot take, or a dynamic dimension without a shape in `shapes`, raises `InferenceError`;
    a file that is not a model raises `ModelFileError`.
    """
    path = Path(path)
    if iterations < 1 or warmup < 0:
        raise ValueError("iterations must be at least 1 and warmup at least 0")
    runtime = runtime_for_file(path)
    digest = file_digest(path)
    rng = np.random.default_rng(seed)
    rows: list[BenchRow] = []
    for requested in devices:
        started = time.perf_counter()
        session = runtime.open(path, preferred=(requested,), threads=threads, cache_dir=cache_dir)
        load_ms = (time.perf_counter() - started) * 1000
        try:
            for batch in _batch_sizes(session, batch_sizes, path.name):
                feeds = [
                    _random(info, _shape(info, batch, session.batch_capable, shapes), rng)
                    for info in session.inputs
                ]
                times = _measure(session, feeds, warmup, iterations, progress)
                rows.append(
                    BenchRow(
                        model=path.name,
                        sha256=digest,
                        runtime=session.runtime,
                        requested=requested,
                        device=session.device,
                        batch=batch,
                        threads=threads,
                        iterations=iterations,
                        load_ms=round(load_ms, 3),
                        mean_ms=round(float(times.mean()), 4),
                        p50_ms=round(float(np.percentile(times, 50)), 4),
                        p95_ms=round(float(np.percentile(times, 95)), 4),
                        min_ms=round(float(times.min()), 4),
                        throughput=round(batch * 1000 / float(times.mean()), 2),
                        machine=platform.machine(),
                    )
                )
        finally:
            session.close()
    return rows


def _batch_sizes(session: Session, wanted: Sequence[int] | None, model: str) -> list[int]:
    fixed = {info.shape[0] for info in session.inputs if info.shape}
    natural = fixed.pop() if len(fixed) == 1 and None not in fixed else 1
    if not wanted:
        return [natural or 1]
    if any(size < 1 for size in wanted):
        raise ValueError("batch sizes must be at least 1")
    if not session.batch_capable:
        other = [size for size in wanted if size != natural]
        if other:
            raise InferenceError(
                f"the model has a fixed batch of {natural}; batch size {other[0]} needs a model whose "
                "first dimension is dynamic",
                model=model,
            )
    return list(dict.fromkeys(wanted))


def _shape(
    info: TensorInfo, batch: int, batched: bool, shapes: Mapping[str, Sequence[int]] | None
) -> tuple[int, ...]:
    given = (shapes or {}).get(info.name)
    if given is not None:
        if len(given) != len(info.shape):
            raise InferenceError(
                f"--shape {info.name}: rank {len(given)} given, the input has rank {len(info.shape)} "
                f"{shape_text(info.shape)}"
            )
        dims = [int(dim) for dim in given]
    else:
        dims = [0 if dim is None else dim for dim in info.shape]
    if batched and dims:
        dims[0] = batch
    missing = [axis for axis, dim in enumerate(dims) if dim == 0]
    if missing:
        example = ",".join("N" if dim == 0 else str(dim) for dim in dims)
        raise InferenceError(
            f"input {info.name!r} {shape_text(info.shape)} has dynamic dimension(s) {missing}: "
            f"give a shape, e.g. --shape {info.name}={example.replace('N', '1')}"
        )
    return tuple(dims)


def _random(info: TensorInfo, shape: tuple[int, ...], rng: np.random.Generator) -> FloatArray:
    dtype = np.dtype(info.dtype)
    if info.quantization is not None and dtype.kind in "iu":
        limits = np.iinfo(dtype)
        scale = min(info.quantization.scale)
        zero = info.quantization.zero_point[0]
        low, high = scale * (limits.min - zero), scale * (limits.max - zero)
        return rng.uniform(low, high, size=shape).astype(np.float32)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(np.float32)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.float32)
    return rng.standard_normal(size=shape, dtype=np.float32)


def _measure(
    session: Session, feeds: list[FloatArray], warmup: int, iterations: int, progress: Progress | None
) -> np.ndarray[Any, np.dtype[np.float64]]:
    for _ in range(warmup):
        session.run(feeds)
        if progress:
            progress(1)
    times = np.empty(iterations, dtype=np.float64)
    for i in range(iterations):
        started = time.perf_counter_ns()
        session.run(feeds)
        times[i] = (time.perf_counter_ns() - started) / 1e6
        if progress:
            progress(1)
    return times
