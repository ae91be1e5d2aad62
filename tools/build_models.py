"""Train the project's own small models on seeded synthetic data and export them for both runtimes.

Two 1D-CNNs on the datasets of `tools/datasets.py`, whose docstring documents the shared
model interface (input ``signal`` float32 ``[batch, window, channels]``, output ``probs`` float32
``[batch, classes]``):

    vibration_cnn   anomaly detector for machine vibration, 2 classes (normal, anomaly)
    gesture_cnn     3-axis accelerometer gesture classifier, 5 classes

Per model, three files in ``models/``:

    {name}.fp32.onnx     the trained Keras weights written into an ONNX graph with onnx.helper
                         (opset 17, first dimension a dynamic "batch")
    {name}.int8.onnx     ONNX Runtime static quantization, QDQ format, int8 weights (per channel) and
                         activations, calibrated on the calibration split; float32 inputs and outputs
    {name}.int8.tflite   full-integer LiteRT model from the TFLite converter with a representative
                         dataset; int8 input and output tensors (scale and zero point in the manifest)

Every file is then evaluated on the held-out test split the way the kernel runs it (ONNX Runtime on
the CPU; the LiteRT interpreter with inputs quantized and outputs dequantized by the tensors' scale
and zero point), and ``models/manifest.json`` and ``models/README.md`` are written.

TensorFlow lives in a virtualenv of its own, never in the package's dependencies:

    python3 -m venv .venv-tools && echo '*' > .venv-tools/.gitignore
    .venv-tools/bin/pip install -r tools/requirements-models.txt
    .venv-tools/bin/python tools/build_models.py

(the ``.gitignore`` keeps git and ruff out of the venv). Options: ``--out DIR`` (default
``models/``), ``--epochs N`` (override, for a quick try). Training is seeded (Python, NumPy,
TensorFlow, op determinism): a rebuild on the same machine gives the same files; another CPU may
differ in the last bits of the weights, so in sha256, but not in accuracy beyond a sample or two.
"""

# TensorFlow, ONNX Runtime and LiteRT load inside the functions that use them: the log level is set
# first, and `--help` answers without loading TensorFlow.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

REPO = Path(__file__).resolve().parent.parent
OPSET = 17
TRAIN_SEED = 7
MAX_FILE_BYTES = 1_000_000
AGREEMENT_FLOOR = 0.97
ACCURACY_FLOOR = 0.90


def _load(name: str, path: Path) -> ModuleType:
    """A module by path: this venv does not have the package's dependencies."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


_load("edgekernel_faults", REPO / "edgekernel" / "device" / "drivers" / "faults.py")
datasets = _load("edgekernel_datasets", REPO / "tools" / "datasets.py")


@dataclass(frozen=True)
class Conv:
    filters: int
    kernel: int
    stride: int


@dataclass(frozen=True)
class Family:
    name: str
    dataset: str
    description: str
    convs: tuple[Conv, ...]
    pool: Literal["max", "avg"]
    epochs: int
    batch_size: int = 64
    learning_rate: float = 3e-3

    def architecture(self) -> str:
        layers = [f"Conv1D({c.filters}, k={c.kernel}, s={c.stride})+ReLU" for c in self.convs]
        classes = len(datasets.DATASETS[self.dataset].classes)
        pool = "GlobalMaxPool" if self.pool == "max" else "GlobalAveragePool"
        return " -> ".join([*layers, pool, f"Dense({classes})", "Softmax"])


FAMILIES = (
    Family(
        name="vibration_cnn",
        dataset="vibration",
        description=(
            "Vibration anomaly detector: a 128-sample window of a 1 kHz accelerometer (g) -> "
            "P(normal), P(anomaly). Faults: bearing impulse trains, misalignment/looseness harmonics, "
            "broadband bursts, at random severity."
        ),
        # Four valid convolutions: a receptive field of 49 samples, a shaft period at 20 Hz.
        convs=(Conv(16, 9, 2), Conv(24, 5, 2), Conv(32, 5, 2), Conv(32, 3, 1)),
        pool="max",  # a fault may last a few milliseconds: keep the strongest response
        epochs=40,
    ),
    Family(
        name="gesture_cnn",
        dataset="gesture",
        description=(
            "Gesture classifier: a 64-sample window (1.28 s) of a 50 Hz 3-axis wrist accelerometer (g) "
            "-> P(idle, shake, circle, tap, swipe)."
        ),
        convs=(Conv(16, 5, 1), Conv(32, 5, 2), Conv(32, 3, 2)),
        pool="avg",
        epochs=30,
    ),
)


# ---------------------------------------------------------------------------------------- training


def _seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_keras(family: Family) -> Any:
    import keras

    info = datasets.DATASETS[family.dataset]
    inputs = keras.Input(shape=(info.window, info.channels), name=info.input_name)
    x = inputs
    for i, conv in enumerate(family.convs):
        x = keras.layers.Conv1D(
            conv.filters, conv.kernel, strides=conv.stride, activation="relu", name=f"conv{i}"
        )(x)
    pool = keras.layers.GlobalMaxPooling1D if family.pool == "max" else keras.layers.GlobalAveragePooling1D
    x = pool(name="pool")(x)
    x = keras.layers.Dense(len(info.classes), name="dense")(x)
    outputs = keras.layers.Softmax(name=info.output_name)(x)
    return keras.Model(inputs, outputs, name=family.name)


def train(family: Family, epochs: int) -> Any:
    import keras

    _seed_everything(TRAIN_SEED)
    x, y = datasets.split(family.dataset, "train")
    model = build_keras(family)
    steps = epochs * -(-len(x) // family.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(family.learning_rate, steps, alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=family.batch_size, epochs=epochs, shuffle=True, verbose=0)
    return model


# ------------------------------------------------------------------------------------------ export


def export_onnx(family: Family, model: Any, path: Path) -> None:
    """Write the Keras weights into an equivalent ONNX graph (channels-last input, like LiteRT)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    info = datasets.DATASETS[family.dataset]
    inits: list[onnx.TensorProto] = []
    nodes = [helper.make_node("Transpose", [info.input_name], ["ncw"], perm=[0, 2, 1], name="to_ncw")]
    current = "ncw"
    for i, conv in enumerate(family.convs):
        kernel, bias = model.get_layer(f"conv{i}").get_weights()  # kernel [k, in, out]
        inits += [
            numpy_helper.from_array(kernel.transpose(2, 1, 0).astype(np.float32), f"conv{i}.weight"),
            numpy_helper.from_array(bias.astype(np.float32), f"conv{i}.bias"),
        ]
        nodes += [
            helper.make_node(
                "Conv",
                [current, f"conv{i}.weight", f"conv{i}.bias"],
                [f"conv{i}"],
                kernel_shape=[conv.kernel],
                strides=[conv.stride],
                name=f"conv{i}",
            ),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"),
        ]
        current = f"relu{i}"
    weight, bias = model.get_layer("dense").get_weights()  # [in, out]
    inits += [
        numpy_helper.from_array(weight.astype(np.float32), "dense.weight"),
        numpy_helper.from_array(bias.astype(np.float32), "dense.bias"),
    ]
    pool = "GlobalMaxPool" if family.pool == "max" else "GlobalAveragePool"
    nodes += [
        helper.make_node(pool, [current], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["features", "dense.weight", "dense.bias"], ["logits"], name="dense"),
        helper.make_node("Softmax", ["logits"], [info.output_name], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        family.name,
        [
            helper.make_tensor_value_info(
                info.input_name, TensorProto.FLOAT, ["batch", info.window, info.channels]
            )
        ],
        [helper.make_tensor_value_info(info.output_name, TensorProto.FLOAT, ["batch", len(info.classes)])],
        inits,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgekernel tools/build_models.py",
        doc_string=family.description,
    )
    onnx_model.ir_version = 8  # readable by every ONNX Runtime the package accepts (>= 1.18)
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(path))


def quantize_onnx(family: Family, fp32: Path, path: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    info = datasets.DATASETS[family.dataset]
    x, _ = datasets.split(family.dataset, "calibration")

    class Calibration(CalibrationDataReader):
        """The calibration split, in batches of 32."""

        def __init__(self) -> None:
            self._batches = iter(np.array_split(x, max(1, len(x) // 32)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {info.input_name: batch}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # ONNX shapes suffice
        quantize_static(
            str(prepared),
            str(path),
            Calibration(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    _drop_unused_opsets(path)


def _drop_unused_opsets(path: Path) -> None:
    """quant_pre_process declares every domain ONNX Runtime knows; keep the ones the graph uses."""
    import onnx

    model = onnx.load(str(path))
    used = {node.domain for node in model.graph.node} | {""}
    kept = [opset for opset in model.opset_import if opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_tflite(family: Family, model: Any, path: Path) -> None:
    import keras
    import tensorflow as tf

    info = datasets.DATASETS[family.dataset]
    x, _ = datasets.split(family.dataset, "calibration")

    def representative() -> Iterator[list[np.ndarray]]:
        for i in range(len(x)):
            yield [x[i : i + 1]]

    # Through a SavedModel with our own signature, so its keys are `signal` and `probs` (Keras's own
    # export would name the output `output_0`).
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda signal: {info.output_name: model(signal, training=False)},
        input_signature=[tf.TensorSpec([None, info.window, info.channels], tf.float32, name=info.input_name)],
    )
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # The converter prints the SavedModel it goes through, and warns that the float input has no
            # recorded range: the representative dataset gives it.
            warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
            flatbuffer = converter.convert()
    path.write_bytes(flatbuffer)


# -------------------------------------------------------------------------------------- evaluation


def _onnx_dims(shape: list[Any]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in shape]


def _onnx_dtype(kind: str) -> str:
    return {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}[kind]


def onnx_run(path: Path, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    probs = session.run([out.name], {inp.name: x})[0]
    tensors = {
        "inputs": [{"name": inp.name, "shape": _onnx_dims(inp.shape), "dtype": _onnx_dtype(inp.type)}],
        "outputs": [{"name": out.name, "shape": _onnx_dims(out.shape), "dtype": _onnx_dtype(out.type)}],
    }
    return probs, tensors


def _litert_tensor(detail: dict[str, Any], signature_name: str) -> dict[str, Any]:
    params = detail["quantization_parameters"]
    tensor: dict[str, Any] = {
        "name": detail["name"],
        "signature_name": signature_name,  # the key in get_signature_runner("serving_default")
        "shape": [None if d < 0 else int(d) for d in detail["shape_signature"]],
        "dtype": np.dtype(detail["dtype"]).name,
    }
    if len(params["scales"]):
        tensor["quantization"] = {
            "scale": [float(s) for s in params["scales"]],
            "zero_point": [int(z) for z in params["zero_points"]],
            "axis": None if len(params["scales"]) == 1 else int(params["quantized_dimension"]),
        }
    return tensor


def litert_run(path: Path, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    scale, zero = inp["quantization"]
    info = np.iinfo(inp["dtype"])
    q = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], q)
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    scale, zero = out["quantization"]
    probs = (interpreter.get_tensor(out["index"]).astype(np.float32) - zero) * scale
    signature = interpreter.get_signature_list()["serving_default"]
    (in_key,), (out_key,) = signature["inputs"], signature["outputs"]
    return probs, {"inputs": [_litert_tensor(inp, in_key)], "outputs": [_litert_tensor(out, out_key)]}


# ---------------------------------------------------------------------------------------- manifest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    names = ("tensorflow-cpu", "keras", "onnx", "onnxruntime", "ai-edge-litert", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _dataset_entry(family: Family) -> dict[str, Any]:
    info = datasets.DATASETS[family.dataset]
    generator = "vibration_windows" if family.dataset == "vibration" else "gesture_windows"
    return {
        "name": info.name,
        "generator": f"tools.datasets.{generator}",
        "classes": list(info.classes),
        "window": info.window,
        "channels": info.channels,
        "sample_rate_hz": info.sample_rate_hz,
        "seeds": dict(datasets.SPLIT_SEEDS),
        "sizes": dict(datasets.SPLIT_SIZES),
        "evaluated_on": "test",
        "test_checksum": _checksum(*datasets.split(family.dataset, "test")),
    }


def _checksum(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """A float-tolerant fingerprint of a split: tells a changed generator from libm's last bits."""
    return {
        "sum_abs": round(float(np.abs(x.astype(np.float64)).sum()), 3),
        "label_counts": np.bincount(y).tolist(),
    }


def build_family(family: Family, out: Path, epochs: int) -> list[dict[str, Any]]:
    started = time.monotonic()
    model = train(family, epochs)
    trained = time.monotonic()
    files = {
        ("onnx", "fp32"): out / f"{family.name}.fp32.onnx",
        ("onnx", "int8"): out / f"{family.name}.int8.onnx",
        ("litert", "int8"): out / f"{family.name}.int8.tflite",
    }
    export_onnx(family, model, files["onnx", "fp32"])
    quantize_onnx(family, files["onnx", "fp32"], files["onnx", "int8"])
    export_tflite(family, model, files["litert", "int8"])

    x, y = datasets.split(family.dataset, "test")
    keras_probs = model.predict(x, verbose=0)
    entries = []
    reference: np.ndarray | None = None
    for (fmt, precision), path in files.items():
        probs, tensors = onnx_run(path, x) if fmt == "onnx" else litert_run(path, x)
        pred = probs.argmax(axis=1)
        if reference is None:
            reference = pred
            drift = float(np.abs(probs - keras_probs).max())
            if drift > 1e-4:
                raise SystemExit(f"{path.name}: ONNX export differs from Keras by {drift:.2g}")
        size = path.stat().st_size
        if size >= MAX_FILE_BYTES:
            raise SystemExit(f"{path.name}: {size} bytes, over the {MAX_FILE_BYTES} limit")
        entries.append(
            {
                "file": path.name,
                "family": family.name,
                "format": fmt,
                "precision": precision,
                "sha256": _sha256(path),
                "size_bytes": size,
                "opset": OPSET if fmt == "onnx" else None,
                **tensors,
                "accuracy": round(float((pred == y).mean()), 4),
                "n": len(y),
                "agreement_with_fp32": round(float((pred == reference).mean()), 4),
                "params": int(model.count_params()),
                "architecture": family.architecture(),
                "dataset": _dataset_entry(family),
                "description": family.description,
            }
        )
    print(
        f"{family.name}: trained in {trained - started:.0f}s, "
        f"exported and evaluated in {time.monotonic() - trained:.0f}s",
        file=sys.stderr,
    )
    return entries


def _table(entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| file | format | precision | size | accuracy (n) | agrees with fp32 |",
        "|---|---|---|---:|---:|---:|",
    ]
    for e in entries:
        lines.append(
            f"| `{e['file']}` | {e['format']} | {e['precision']} | {e['size_bytes'] / 1024:.1f} KiB "
            f"| {100 * e['accuracy']:.2f} % ({e['n']}) | {100 * e['agreement_with_fp32']:.2f} % |"
        )
    return lines


def _readme(entries: list[dict[str, Any]]) -> str:
    families = {e["family"]: e for e in entries}
    parts = [
        "# models",
        "",
        "Small models the project builds itself with `tools/build_models.py`, trained on the seeded",
        "synthetic data of `tools/datasets.py` (known ground truth; train, calibration and",
        "test splits from different seeds). `manifest.json` lists every file with its sha256, size,",
        "tensors (int8 LiteRT: scale and zero point), held-out accuracy and the data it was measured on;",
        "`tests/unit/test_model_artifacts.py` checks all of it again.",
        "",
        "| model | architecture | params | classes |",
        "|---|---|---:|---|",
    ]
    for name, e in families.items():
        classes = ", ".join(e["dataset"]["classes"])
        parts.append(f"| `{name}` | {e['architecture']} | {e['params']:,} | {classes} |")
    parts += [""]
    for name, e in families.items():
        parts.append(f"- `{name}`: {e['description']}")
    parts += [
        "",
        "Interface, every file: input `signal` `[batch, window, channels]` in g (vibration",
        "`[batch, 128, 1]`, gesture `[batch, 64, 3]`), output `probs` `[batch, classes]`, softmax in the",
        "order above; prediction = argmax. ONNX files take and give float32 (the int8 one is QDQ inside,",
        "opset 17, batch dimension `batch`). The `.int8.tflite` files are full-integer: int8 input and",
        "output tensors, quantize with the input's scale and zero point, dequantize the output.",
        "",
        "## Accuracy on the held-out test split",
        "",
        *_table(entries),
        "",
        "## Rebuild",
        "",
        "```sh",
        "python3 -m venv .venv-tools && echo '*' > .venv-tools/.gitignore",
        ".venv-tools/bin/pip install -r tools/requirements-models.txt   # TensorFlow (CPU), ~1.7 GB",
        ".venv-tools/bin/python tools/build_models.py                   # ~2 minutes on 2 cores",
        "```",
        "",
        "Training is seeded; a rebuild on another CPU may change the files' sha256 (last bits of the",
        "weights) but not the accuracy beyond a sample or two. Commit the files, `manifest.json` and",
        "this README together.",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "models")
    parser.add_argument("--epochs", type=int, help="override every family's epochs (a quick try)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    entries: list[dict[str, Any]] = []
    for family in FAMILIES:
        entries += build_family(family, out, args.epochs or family.epochs)
    manifest = {
        "schema": 1,
        "generated_by": "tools/build_models.py",
        "tool_versions": _versions(),
        "models": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(entries), encoding="utf-8")
    print("\n".join(_table(entries)))
    print(f"\nbuilt {len(entries)} files in {out} in {time.monotonic() - started:.0f}s")
    low = [e["file"] for e in entries if e["accuracy"] < ACCURACY_FLOOR]
    apart = [e["file"] for e in entries if e["agreement_with_fp32"] < AGREEMENT_FLOOR]
    if low or apart:
        print(f"below the accuracy floor: {low}; disagreeing with fp32: {apart}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
