"""The README's CoAP commands, taken from README.md and run as written (the device's host name replaced
by the test's address) against a running device."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekernel.link import Mosquitto
from tests.waiting import DEADLINE_S

from .coap_device import coap_device

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
HOST_IN_README = "dev-01.local"


def readme_commands() -> list[str]:
    """The commands of the console block that shows CoAP clients, continuation lines joined."""
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if f"coap://{HOST_IN_README}/" in b)
    commands: list[str] = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("$ "):
            commands.append(line[2:].strip())
    return commands


def shell_env() -> dict[str, str]:
    """The environment a user who installed edgekernel has: its python and aiocoap-client first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(command: str) -> str:
    done = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        env=shell_env(),
        check=False,
    )
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    return done.stdout


def observe_lines(command: str, want: int) -> list[str]:
    """Runs a command that goes on until interrupted; its first `want` lines, then Ctrl-C."""
    lines: list[str] = []
    with subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=shell_env(),
    ) as process:
        try:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if len(lines) >= want:
                    break
            process.send_signal(signal.SIGINT)
            _, errors = process.communicate(timeout=DEADLINE_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert len(lines) >= want, errors
    assert process.returncode == 0, errors
    return lines


@pytest.fixture
def device(broker: Mosquitto, tmp_path: Path) -> Iterator[str]:
    with coap_device(broker, tmp_path) as url:
        yield url


def test_the_readme_coap_commands_work_as_written(device: str) -> None:
    commands = readme_commands()
    assert len(commands) == 4, commands
    address = device.removeprefix("coap://")
    mine = [command.replace(HOST_IN_README, address) for command in commands]
    core, health, observe, infer = mine

    links = run(core)
    for path in ("</health>", "</telemetry/vibration>", "</infer/vibration-anomaly>"):
        assert path in links

    answer = json.loads(run(health))
    assert answer["status"] in {"ok", "offline"}
    assert "uptime_s" in answer

    assert "--observe" not in observe
    notifications = [json.loads(line) for line in observe_lines(observe, 3)]
    seqs = [n["seq"] for n in notifications]
    assert all(n["type"] == "telemetry" for n in notifications)
    assert len(set(seqs)) == 3, seqs

    outputs = json.loads(run(infer))["outputs"]
    probabilities = outputs[0][0]
    assert len(probabilities) == 2
    assert abs(sum(probabilities) - 1) < 0.02  # int8 output
