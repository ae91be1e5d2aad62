"""What a program imports at start is what it serves with: `onnx` (0.5-1 s, tens of MB) only when a
model's integer inputs need their scales, and an agent process none of the kernel. Each check runs in
a fresh interpreter, since this one has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = "edgekernel.device.agents.child"
MODEL = Path(__file__).resolve().parents[2] / "models" / "vibration_cnn.int8.onnx"  # float in and out


def imported_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_the_kernel_does_not_import_onnx() -> None:
    modules = imported_after("import edgekernel.device.kernel")
    assert "edgekernel.device.kernel" in modules
    assert not top_level(modules) & {"onnx", "ml_dtypes"}


@pytest.mark.parametrize(
    "statement",
    [
        f"import {CHILD}",
        f"import {CHILD}\nimport edgekernel.device.agents.builtin.monitor\n"
        "import edgekernel.device.agents.builtin.pipeline",
    ],
)
def test_an_agent_process_imports_none_of_the_kernel(statement: str) -> None:
    modules = imported_after(statement)
    assert CHILD in modules
    assert not top_level(modules) & {"onnx", "onnxruntime", "cryptography", "paho", "aiocoap", "yaml"}
    assert not modules & {"edgekernel.device.kernel", "edgekernel.device.inference", "edgekernel.link"}


def test_serving_a_float_model_does_not_import_onnx() -> None:
    statement = (
        "from pathlib import Path\n"
        "from edgekernel.device.models import runtime_for\n"
        f"session = runtime_for('onnx').open(Path({str(MODEL)!r}), threads=1)\n"
        "import numpy as np\n"
        "session.run([np.zeros((1, 128, 1), np.float32)])"
    )
    modules = imported_after(statement)
    assert "onnxruntime" in top_level(modules)
    assert "onnx" not in top_level(modules)


def test_lazy_exports_resolve() -> None:
    code = (
        "import edgekernel.device as d, edgekernel.protocol as p, edgekernel.config as c\n"
        "assert d.Kernel.__name__ == 'Kernel' and p.FleetVerifier.__name__ == 'FleetVerifier'\n"
        "assert c.DeviceConfig.__name__ == 'DeviceConfig' and callable(p.inbound)\n"
        "try:\n    d.nothing\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
