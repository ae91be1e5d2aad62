"""Model files before any runtime sees them: existence, digest, and which format the bytes are."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from edgekernel.device.models.runtime import ModelFileError

ModelFormat = Literal["onnx", "tflite"]
TFLITE_IDENTIFIER = b"TFL3"  # FlatBuffers file identifier, at offset 4


def check_file(path: Path) -> int:
    """The size of `path`; `ModelFileError` when it is missing, not a regular file, or empty."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ModelFileError("no such file", model=str(path)) from None
    except OSError as err:
        raise ModelFileError(f"cannot read it: {err.strerror or err}", model=str(path)) from err
    if not path.is_file():
        raise ModelFileError("not a regular file", model=str(path))
    if stat.st_size == 0:
        raise ModelFileError("the file is empty", model=str(path))
    return stat.st_size


def file_digest(path: Path) -> str:
    """Hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise ModelFileError(f"cannot read it: {err.strerror or err}", model=str(path)) from err
    return digest.hexdigest()


def head(path: Path, size: int = 16) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(size)
    except OSError as err:
        raise ModelFileError(f"cannot read it: {err.strerror or err}", model=str(path)) from err


def is_tflite(path: Path) -> bool:
    return head(path, 8)[4:8] == TFLITE_IDENTIFIER


def detect_format(path: Path) -> ModelFormat:
    """``tflite`` when the bytes say so (``TFL3`` at offset 4), else by extension, else ``onnx`` when the
    file starts like a protobuf ModelProto (field 1, ir_version, as a varint)."""
    check_file(path)
    start = head(path, 8)
    if start[4:8] == TFLITE_IDENTIFIER:
        return "tflite"
    suffix = path.suffix.lower()
    if suffix in (".tflite", ".lite"):
        return "tflite"
    if suffix == ".onnx" or start[:1] == b"\x08":
        return "onnx"
    raise ModelFileError(
        "neither an ONNX nor a TFLite model (unknown extension, no TFL3 identifier)",
        model=str(path),
    )
