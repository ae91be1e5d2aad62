"""`edgekernel model …`: inspect, quantize and benchmark ONNX and TFLite model files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from edgekernel.cli.common import Exit, console, err_console, fail

if TYPE_CHECKING:
    from edgekernel.device.models.benchmark import BenchRow
    from edgekernel.device.models.inspect import ModelReport
    from edgekernel.device.models.quantize import QuantizeReport
    from edgekernel.device.models.runtime import TensorInfo

# The model modules import onnx and numpy: they load when a command runs, not with every `edgekernel`.

app = typer.Typer(help="Inspect, quantize and benchmark ONNX and TFLite models.", no_args_is_help=True)


class Mode(StrEnum):
    static = "static"
    dynamic = "dynamic"


class Format(StrEnum):
    qdq = "qdq"
    qoperator = "qoperator"


ModelArgument = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, metavar="FILE", help="An .onnx or .tflite model file.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable result.")]


@contextmanager
def _model_errors() -> Iterator[None]:
    """Model errors become exit codes: 4 when a runtime is missing, 1 for anything else."""
    from edgekernel.device.models.runtime import ModelError, RuntimeUnavailableError  # noqa: PLC0415

    try:
        yield
    except RuntimeUnavailableError as err:
        fail(str(err), Exit.MISSING)
    except ModelError as err:
        fail(str(err))


@app.command()
def inspect(file: ModelArgument, as_json: JsonOption = False) -> None:
    """Show a model's format, tensors, quantization, ops and parameter count."""
    from edgekernel.device.models.inspect import inspect_model  # noqa: PLC0415 (heavy import)

    with _model_errors():
        report = inspect_model(file)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    _print_report(report)


@app.command()
def quantize(
    file: ModelArgument,
    *,
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write the quantized model.")],
    mode: Annotated[
        Mode, typer.Option(help="static: calibrated activations; dynamic: no data.")
    ] = Mode.static,
    calibration: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Calibration set: FILE.npy (single-input models) or FILE.npz (one array per input).",
        ),
    ] = None,
    per_channel: Annotated[
        bool, typer.Option("--per-channel/--per-tensor", help="Weight scales per output channel.")
    ] = True,
    fmt: Annotated[Format, typer.Option("--format", help="QDQ (recommended) or QOperator.")] = Format.qdq,
    as_json: JsonOption = False,
) -> None:
    """Quantize an ONNX model to int8 (TFLite models are quantized when they are converted)."""
    from edgekernel.device.models.quantize import quantize_onnx  # noqa: PLC0415 (heavy import)

    with _model_errors():
        report = quantize_onnx(
            file,
            out,
            mode=mode.value,
            calibration=calibration,
            per_channel=per_channel,
            format=fmt.value,
        )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    _print_quantized(report)


@app.command()
def bench(
    file: ModelArgument,
    *,
    device: Annotated[
        list[str] | None,
        typer.Option("--device", help="Device to measure (repeatable): cpu, cuda, edgetpu, ... or all."),
    ] = None,
    batch: Annotated[
        list[int] | None, typer.Option("--batch", min=1, help="Batch size (repeatable).")
    ] = None,
    iterations: Annotated[int, typer.Option(min=1, help="Timed runs per row.")] = 50,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs before timing.")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="Intra-op threads of the session.")] = 1,
    shape: Annotated[
        list[str] | None,
        typer.Option(
            "--shape", help="Shape of an input with dynamic dimensions: NAME=D1,D2,... (repeatable)."
        ),
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Optimized-graph cache folder (ONNX).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Measure latency (mean, p50, p95) and throughput per device and batch size."""
    from edgekernel.device.models.benchmark import bench_model, parse_shape  # noqa: PLC0415 (heavy import)

    try:
        shapes = dict(parse_shape(text) for text in shape or [])
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--shape") from None
    with _model_errors():
        devices = _devices(file, device or ["cpu"])
        sizes = batch or None
        runs = len(devices) * len(sizes or [1]) * (warmup + iterations)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=as_json or not err_console.is_terminal,
        ) as bar:
            task = bar.add_task(f"bench {file.name}", total=runs)
            rows = bench_model(
                file,
                devices=devices,
                batch_sizes=sizes,
                warmup=warmup,
                iterations=iterations,
                threads=threads,
                shapes=shapes,
                cache_dir=cache_dir,
                progress=lambda done: bar.advance(task, done),
            )
    if as_json:
        typer.echo(json.dumps([row.to_json() for row in rows], indent=2))
        return
    _print_bench(rows)


def _devices(file: Path, wanted: list[str]) -> list[str]:
    if "all" not in wanted:
        return list(dict.fromkeys(wanted))
    from edgekernel.device.models.registry import runtime_for_file  # noqa: PLC0415 (heavy import)
    from edgekernel.device.models.runtime import RuntimeUnavailableError  # noqa: PLC0415

    runtime = runtime_for_file(file)
    if not runtime.available():
        raise RuntimeUnavailableError(f"the {runtime.name} runtime is not installed")
    found = runtime.devices()
    return list(dict.fromkeys(name for entry in wanted for name in (found if entry == "all" else [entry])))


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return (
        "("
        + ", ".join("?" if dim is None else str(dim) for dim in shape)
        + ("," if len(shape) == 1 else "")
        + ")"
    )


def _quant_text(info: TensorInfo) -> str:
    q = info.quantization
    if q is None:
        return ""
    if len(q.scale) == 1:
        return f"scale {q.scale[0]:.6g}, zero {q.zero_point[0]}"
    return f"per-axis {q.axis}: {len(q.scale)} scales"


def _print_report(report: ModelReport) -> None:
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    rows = [
        ("file", str(report.path)),
        ("format", report.format),
        ("size", f"{report.size:,} bytes"),
        ("sha256", report.sha256),
        ("producer", report.producer or "-"),
        ("opsets", ", ".join(f"{domain} {version}" for domain, version in report.opsets) or "-"),
        ("quantized", ", ".join(report.quantization) if report.quantized else "no"),
        (
            "parameters",
            f"{report.parameters:,} ({', '.join(f'{d} {n:,}' for d, n in report.parameter_dtypes)})",
        ),
        ("subgraphs", str(report.subgraphs)),
    ]
    for key, value in rows:
        summary.add_row(key, Text(value))
    console.print(summary)
    tensors = Table("", "name", "shape", "dtype", "quantization", title="tensors")
    for kind, infos in (("input", report.inputs), ("output", report.outputs)):
        for info in infos:
            tensors.add_row(kind, Text(info.name), _shape_text(info.shape), info.dtype, _quant_text(info))
    console.print(tensors)
    ops = Table("op", "count", title=f"top ops ({sum(n for _, n in report.ops)} nodes)")
    for op, count in report.top_ops(10):
        ops.add_row(Text(op), str(count))
    console.print(ops)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)


def _print_quantized(report: QuantizeReport) -> None:
    detail = f"{report.mode}, {report.format}, {'per-channel' if report.per_channel else 'per-tensor'}"
    if report.calibration_batches:
        detail += f", {report.calibration_batches} calibration batches"
    console.print(
        Text(
            f"{report.output}: {report.source_bytes:,} → {report.output_bytes:,} bytes "
            f"({report.ratio:.0%} of the original; {detail})"
        )
    )
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)


def _print_bench(rows: list[BenchRow]) -> None:
    table = Table("device", "ran on", "batch", "mean ms", "p50 ms", "p95 ms", "samples/s", "load ms")
    for row in rows:
        fallback = row.requested != "cpu" and row.device in ("cpu", "CPUExecutionProvider")
        ran_on = Text(row.device + (" (fallback)" if fallback else ""), style="yellow" if fallback else "")
        table.add_row(
            row.requested,
            ran_on,
            str(row.batch),
            f"{row.mean_ms:.3f}",
            f"{row.p50_ms:.3f}",
            f"{row.p95_ms:.3f}",
            f"{row.throughput:,.1f}",
            f"{row.load_ms:.1f}",
        )
    console.print(table)
