"""Starting `edgekernel` costs little: help, config validation and fleet listing never load the
inference runtimes, CoAP or NumPy (they load when a command that needs them runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("onnxruntime", "onnx", "aiocoap", "numpy", "ai_edge_litert", "tflite_runtime")


def imported_modules(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edgekernel", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "edgekernel.cli.main" in names, done.stderr[-2000:]
    return names


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["config", "validate", "firmware-config"],
        ["fleet", "devices", "--help"],
        ["fleet", "call", "--help"],
        ["device", "run", "--help"],
        ["model", "inspect", "--help"],
        ["demo", "--help"],
        ["topics", "watch", "--help"],
    ],
)
def test_light_commands_do_not_import_heavy_modules(argv: list[str]) -> None:
    loaded = imported_modules(*argv)
    heavy = sorted(name for name in loaded if name.split(".")[0] in HEAVY)
    assert not heavy, f"`edgekernel {' '.join(argv)}` imported {heavy}"
