"""What both runtimes share: checking a caller's arrays against a model's inputs, and converting
between the float32 the caller speaks and each tensor's own dtype (float16, int8/uint8 quantized,
plain integers, bool)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgekernel.device.models.runtime import FloatArray, InferenceError, TensorInfo

AnyArray = npt.NDArray[Any]


def shape_text(shape: Sequence[int | None]) -> str:
    """`(None, 4)` reads as `(?, 4)`: what a user sees in errors and tables."""
    dims = ", ".join("?" if dim is None else str(dim) for dim in shape)
    return f"({dims},)" if len(shape) == 1 else f"({dims})"


def check_inputs(model: str, infos: Sequence[TensorInfo], arrays: Sequence[Any]) -> None:
    """Raise `InferenceError` naming the input when the count, type, rank or a fixed dimension is wrong."""
    if len(arrays) != len(infos):
        names = ", ".join(repr(info.name) for info in infos)
        raise InferenceError(f"expected {len(infos)} input(s) ({names}), got {len(arrays)}", model=model)
    for info, array in zip(infos, arrays, strict=True):
        if not isinstance(array, np.ndarray):
            raise InferenceError(
                f"input {info.name!r}: expected a numpy array, got {type(array).__name__}", model=model
            )
        if array.dtype.kind not in "fiub":
            raise InferenceError(f"input {info.name!r}: expected float32, got {array.dtype}", model=model)
        if array.ndim != len(info.shape):
            raise InferenceError(
                f"input {info.name!r}: expected rank {len(info.shape)} {shape_text(info.shape)}, "
                f"got shape {array.shape}",
                model=model,
            )
        for axis, (want, got) in enumerate(zip(info.shape, array.shape, strict=True)):
            if want is not None and want != got:
                raise InferenceError(
                    f"input {info.name!r}: dimension {axis} must be {want}, got {got} "
                    f"(expected {shape_text(info.shape)}, got {array.shape})",
                    model=model,
                )


def to_tensor(model: str, info: TensorInfo, array: AnyArray) -> AnyArray:
    """Convert a caller's float array to the tensor's dtype, quantizing when the tensor is quantized."""
    dtype = np.dtype(info.dtype)
    if array.dtype == dtype:
        return np.ascontiguousarray(array)
    if dtype.kind == "f":
        with np.errstate(over="ignore"):  # float16 overflow becomes inf, as it would on the device
            return np.ascontiguousarray(array, dtype=dtype)
    if dtype.kind == "b":
        return np.ascontiguousarray(array != 0)
    if dtype.kind in "iu":
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InferenceError(
                f"input {info.name!r}: NaN or infinity cannot be fed to a {dtype} tensor", model=model
            )
        if info.quantization is not None:
            return np.ascontiguousarray(info.quantization.quantize(array, dtype))
        limits = np.iinfo(dtype)
        with np.errstate(invalid="ignore", over="ignore"):  # int64 bounds are not exact in float64
            clipped = np.clip(np.rint(array.astype(np.float64)), limits.min, limits.max)
            return np.ascontiguousarray(clipped.astype(dtype))
    raise InferenceError(f"input {info.name!r}: cannot feed a {dtype} tensor from floats", model=model)


def to_float(info: TensorInfo, array: AnyArray) -> FloatArray:
    """A tensor's value as float32, dequantized when the tensor is quantized."""
    if info.quantization is not None and array.dtype.kind in "iu":
        return info.quantization.dequantize(array)
    return np.asarray(array, dtype=np.float32)


def leading_batch(infos: Sequence[TensorInfo]) -> bool:
    """True when every tensor has a first dimension and it is dynamic."""
    return bool(infos) and all(info.shape and info.shape[0] is None for info in infos)
