"""The one small interface every model runtime implements (ONNX Runtime, LiteRT).

A `Runtime` opens a model file into a `Session`. Callers always pass and get float32 arrays: a session
whose tensors are int8/uint8 quantizes inputs and dequantizes outputs from each tensor's scale and
zero point. Sessions are used by one thread at a time (the scheduler guarantees it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edgekernel.errors import EdgeKernelError

FloatArray = npt.NDArray[np.float32]


class ModelError(EdgeKernelError):
    """A model could not be verified, loaded or run. `model` names it when known."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        self.model = model
        self.detail = message  # without the model, which a session names by its file's path
        super().__init__(f"model {model}: {message}" if model else message)


class ModelFileError(ModelError):
    """The file is missing, truncated, corrupt, not a model, or does not match its spec (sha256, tensors)."""


class RuntimeUnavailableError(ModelError):
    """The runtime the model needs is not installed on this box."""


class InferenceError(ModelError):
    """The runtime failed while running the model, or the inputs do not fit it."""


@dataclass(frozen=True, slots=True)
class Quantization:
    """Affine quantization: real = scale * (q - zero_point). Per-tensor when scale has one element."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    def quantize(
        self, values: npt.NDArray[np.floating], dtype: np.dtype[np.integer]
    ) -> npt.NDArray[np.integer]:
        info = np.iinfo(dtype)
        scale, zero = self._broadcast(values.ndim)
        q = np.round(values / scale) + zero
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, values: npt.NDArray[np.integer]) -> FloatArray:
        scale, zero = self._broadcast(values.ndim)
        return ((values.astype(np.float32) - zero) * scale).astype(np.float32)

    def _broadcast(self, ndim: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        scale = np.asarray(self.scale, dtype=np.float32)
        zero = np.asarray(self.zero_point, dtype=np.float32)
        if self.axis is not None and scale.size > 1:
            shape = [1] * ndim
            shape[self.axis] = scale.size
            return scale.reshape(shape), zero.reshape(shape)
        return scale.reshape(()), zero.reshape(())


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...]  # None for a dynamic dimension
    dtype: str  # numpy dtype name: float32, int8, uint8, ...
    quantization: Quantization | None = None


class Session(Protocol):
    """A loaded model, ready to run."""

    @property
    def runtime(self) -> str:
        """``onnx`` or ``litert``."""

    @property
    def device(self) -> str:
        """What runs it: an ONNX Runtime execution provider or a LiteRT delegate (``cpu`` for none)."""

    @property
    def inputs(self) -> tuple[TensorInfo, ...]: ...

    @property
    def outputs(self) -> tuple[TensorInfo, ...]: ...

    @property
    def batch_capable(self) -> bool:
        """True when the first dimension of every input and output is a batch dimension that may vary."""

    def run(self, inputs: Sequence[FloatArray]) -> list[FloatArray]:
        """Run once. Inputs in the order of `inputs`, float32, with the batch dimension when there is one."""

    def close(self) -> None: ...


class Runtime(Protocol):
    """Opens model files of one format."""

    @property
    def name(self) -> str: ...

    def available(self) -> bool:
        """Whether the runtime's package is installed here."""

    def devices(self) -> list[str]:
        """Accelerators this runtime can reach on this box, best first; always ends with ``cpu``."""

    def open(
        self,
        path: Path,
        *,
        preferred: Sequence[str] = ("cpu",),
        threads: int = 1,
        cache_dir: Path | None = None,
    ) -> Session:
        """Load and prepare `path` on the first available device of `preferred`, falling back to the CPU.

        `threads` is this session's share of the kernel's thread budget (intra-op threads). Raises
        `ModelFileError` for a file that is not a valid model of this format, `RuntimeUnavailableError`
        when the runtime is not installed.
        """
