"""Every command's `--help` at 80 columns reads whole: defaults shown, no markup eaten."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup

from edgekernel.cli.main import app

ROOT = Path(__file__).resolve().parents[2]


def leaf_commands() -> Iterator[list[str]]:
    def walk(command: object, path: list[str]) -> Iterator[list[str]]:
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                if not getattr(sub, "hidden", False):
                    yield from walk(sub, [*path, name])
        else:
            yield path

    yield from walk(typer.main.get_command(app), [])


def help_text(argv: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edgekernel", *argv, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80", "TERM": "dumb"},
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


COMMANDS = list(leaf_commands())


def test_every_program_is_walked() -> None:
    assert ["fleet", "call"] in COMMANDS
    assert ["demo"] in COMMANDS
    assert len(COMMANDS) >= 12


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_at_80_columns_has_no_eaten_markup(argv: list[str]) -> None:
    text = help_text(argv)
    flat = " ".join(line.strip(" │╭╮╰╯─") for line in text.splitlines())
    assert not re.search(r"\w \.(\s|$)", flat), text  # "Broker port ." once a [default: …] was eaten
    assert "()" not in flat, text
    assert max(len(line) for line in text.splitlines()) <= 80, text


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["demo"], "a free one"),
        (["demo"], "a new temp dir"),
        (["fleet", "call"], "the config's signing_key"),
        (["fleet", "devices"], "firmware-config/fleet.yaml"),
        (["fleet", "keygen"], "[default: keys]"),
    ],
)
def test_defaults_are_shown(argv: list[str], shown: str) -> None:
    flat = " ".join(line.strip(" │") for line in help_text(argv).splitlines())
    assert shown in flat
