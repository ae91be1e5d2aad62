"""The layering rule (tools/check_architecture.py) holds for the real tree and catches breaks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_checker() -> ModuleType:
    path = REPO / "tools" / "check_architecture.py"
    spec = importlib.util.spec_from_file_location("check_architecture", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


CLEAN = {
    "edgekernel/__init__.py": "from edgekernel.errors import EdgeKernelError\n",
    "edgekernel/errors.py": "class EdgeKernelError(Exception): ...\n",
    "edgekernel/lifeline.py": "import os\n",
    "edgekernel/protocol/__init__.py": "from ..errors import EdgeKernelError\n",
    "edgekernel/protocol/codec.py": "from . import topics\nfrom .topics import X\n",
    "edgekernel/protocol/topics.py": "X = 1\n",
    "edgekernel/config/__init__.py": "from edgekernel.protocol import topics\n",
    "edgekernel/link/__init__.py": "import edgekernel.config\nfrom edgekernel import errors, lifeline\n",
    "edgekernel/device/__init__.py": "from edgekernel import EdgeKernelError, link\n",
    "edgekernel/fleet/__init__.py": "def f() -> None:\n    from edgekernel import errors\n",
    "edgekernel/cli/__init__.py": "from edgekernel import device, fleet, gateway\n",
}


def test_real_tree_follows_the_layering(capsys: pytest.CaptureFixture[str]) -> None:
    assert checker.main([str(REPO)]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.startswith("architecture OK:")


def test_clean_fake_tree_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = dict(CLEAN)
    files["edgekernel/cli/big.py"] = "# size: a generated table\n" + "x = 1\n" * 700
    _write_tree(tmp_path, files)
    assert checker.main([str(tmp_path)]) == 0, capsys.readouterr().out


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        (
            "edgekernel/errors.py",
            "import edgekernel\n",
            "edgekernel/errors.py:1: edgekernel.errors imports edgekernel (errors imports nothing",
        ),
        (
            "edgekernel/lifeline.py",
            "from edgekernel.errors import EdgeKernelError\n",
            "edgekernel/lifeline.py:1: edgekernel.lifeline imports edgekernel.errors "
            "(lifeline imports nothing",
        ),
        (
            "edgekernel/protocol/codec.py",
            '"""Doc."""\nfrom ..config import loader\n',
            "edgekernel/protocol/codec.py:2: edgekernel.protocol.codec imports edgekernel.config "
            "(protocol may import only errors)",
        ),
        (
            "edgekernel/config/__init__.py",
            "from edgekernel.link import mqtt\n",
            "edgekernel/config/__init__.py:1: edgekernel.config imports edgekernel.link "
            "(config may import only errors, protocol)",
        ),
        (
            "edgekernel/device/__init__.py",
            "def f() -> None:\n    from edgekernel.fleet import registry\n",
            "edgekernel/device/__init__.py:2: edgekernel.device imports edgekernel.fleet "
            "(device, gateway, fleet and firmware never import each other",
        ),
        (
            "edgekernel/fleet/__init__.py",
            'import importlib\nimportlib.import_module("edgekernel.gateway.store")\n',
            "edgekernel/fleet/__init__.py:2: edgekernel.fleet imports edgekernel.gateway.store",
        ),
        (
            "edgekernel/device/__init__.py",
            "from edgekernel import cli\n",
            "edgekernel/device/__init__.py:1: edgekernel.device imports edgekernel.cli "
            "(device may import only config, errors, lifeline, link, protocol)",
        ),
        (
            "edgekernel/__init__.py",
            "from edgekernel.protocol import Envelope\n",
            "edgekernel/__init__.py:1: edgekernel imports edgekernel.protocol "
            "(edgekernel/__init__.py may import only errors)",
        ),
        (
            "edgekernel/big.py",
            "x = 1\n" * 601,
            "edgekernel/big.py:1: edgekernel.big is in no layer",
        ),
        (
            "edgekernel/cli/big.py",
            "x = 1\n" * 601,
            "edgekernel/cli/big.py:1: edgekernel.cli.big has 601 lines",
        ),
    ],
)
def test_violation_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rel: str, source: str, expected: str
) -> None:
    files = dict(CLEAN)
    files[rel] = source
    _write_tree(tmp_path, files)
    assert checker.main([str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(expected) for line in lines), lines


def test_runs_as_a_script(tmp_path: Path) -> None:
    files = dict(CLEAN)
    files["edgekernel/gateway/__init__.py"] = "from edgekernel.device import kernel\n"
    _write_tree(tmp_path, files)
    script = REPO / "tools" / "check_architecture.py"
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "edgekernel.gateway imports edgekernel.device (" in result.stdout
