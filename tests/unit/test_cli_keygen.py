"""`fleet keygen` writes into keys/ by default, outside firmware-config/, and git ignores it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgekernel.cli.main import app

ROOT = Path(__file__).resolve().parents[2]


def test_keygen_writes_keys_folder_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["fleet", "keygen"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "keys" / "fleet.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "fleet.pub").exists()
    assert not (tmp_path / "firmware-config").exists()


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
@pytest.mark.parametrize("path", ["keys/fleet.key", "keys/fleet.pub", "firmware-config/keys/fleet.key"])
def test_git_ignores_the_keys(path: str) -> None:
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, check=False)
    assert done.returncode == 0, f"{path} is not ignored by .gitignore"
