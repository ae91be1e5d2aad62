"""A user's own agent, as the README writes it: a package with an entry point, built and installed by
pip, found by a real device process, run in a child process, and its state kept across a SIGKILL of
the kernel."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgekernel.cli.main import app
from edgekernel.link import Mosquitto
from edgekernel.protocol import EventBody, TelemetryBody, decode, topics
from tests.agents.install import install
from tests.waiting import DEADLINE_S

from .helpers import Collector, poll

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
FLEET = "plant"
runner = CliRunner()


def readme_block(language: str, first_line: str) -> str:
    for block in re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S):
        if block.startswith(first_line):
            return str(block)
    raise AssertionError(f"README has no {language} block starting {first_line!r}")


@pytest.fixture
def user_package(tmp_path: Path) -> Path:
    """The README's agent package, installed by pip into a folder on PYTHONPATH."""
    source = tmp_path / "my-agents"
    source.mkdir()
    (source / "my_agents.py").write_text(readme_block("python", "# my_agents.py"))
    project = '[project]\nname = "my-agents"\nversion = "0.1"\n\n' + readme_block(
        "toml", "[project.entry-points"
    )
    project += '\n[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
    project += '\n[tool.setuptools]\npy-modules = ["my_agents"]\n'
    (source / "pyproject.toml").write_text(project)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    install(site)  # the test agents too (their `scale` counts its runs in its state)
    return site


def device_config(tmp_path: Path, broker: Mosquitto) -> Path:
    agents = yaml.safe_load(readme_block("yaml", "agents:"))["agents"]
    agents[0]["config"]["limit"] = 0.0  # every doubled sample is over it: events for sure
    agents.append(
        {"name": "counter", "agent": "scale", "isolation": "process", "config": {"source": "temperature"}}
    )
    config = {
        "fleet": FLEET,
        "device": "dev-01",
        "data_dir": str(tmp_path / "data"),
        "broker": {"url": broker.url, "reconnect": {"min_delay_s": 0.1, "max_delay_s": 0.5}},
        "sensors": [
            {
                "stream": "temperature",
                "rate_hz": 20,
                "batch": {"max_samples": 5, "max_wait_ms": 200},
                "sim": {"kind": "temperature", "offset": 21.5},
            }
        ],
        "agents": agents,
    }
    path = tmp_path / "dev-01.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def run_device(user_package: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(user_package), os.environ.get("PYTHONPATH")])),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgekernel", "device", "run", "--config", str(config)],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def test_the_readme_agent_installs_runs_and_keeps_its_state(
    broker: Mosquitto, tmp_path: Path, run_device: object
) -> None:
    import asyncio

    config = device_config(tmp_path, broker)
    start = run_device  # type: ignore[assignment]

    async def scenario() -> None:
        async with Collector(broker.url, f"ek/v1/{FLEET}/dev-01/#") as seen:
            first = start(config)  # type: ignore[operator]
            await seen.wait_for(
                lambda _: seen.on(topics.telemetry(FLEET, "dev-01", "doubled")), what="doubled"
            )
            await seen.wait_for(
                lambda _: seen.on(topics.events(FLEET, "dev-01", "over-limit")), what="events"
            )
            doubled = TelemetryBody.from_envelope(
                decode(seen.on(topics.telemetry(FLEET, "dev-01", "doubled"))[0].payload)
            )
            assert 40 < doubled.samples[0].value < 50  # type: ignore[operator]

            def runs() -> list[int]:
                found = []
                for message in seen.on(topics.events(FLEET, "dev-01", "started")):
                    data = EventBody.from_envelope(decode(message.payload)).data
                    assert isinstance(data, dict)
                    found.append(int(data["runs"]))  # type: ignore[arg-type]
                return found

            await seen.wait_for(lambda _: runs() == [1], what="the counter's first run")
            os.killpg(first.pid, signal.SIGKILL)  # the kernel and its agent process, at once
            first.wait(30)
            start(config)  # type: ignore[operator]
            await seen.wait_for(
                lambda _: 2 in runs(), what="the counter's second run", timeout=2 * DEADLINE_S
            )

    asyncio.run(scenario())


def test_agent_restart_clears_a_broken_agent_and_device_stats_shows_it(
    broker: Mosquitto, tmp_path: Path, run_device: Callable[[Path], subprocess.Popen[bytes]]
) -> None:
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["fleet", "keygen", "--out", str(keys)]).exit_code == 0
    config = tmp_path / "dev-01.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "fleet": FLEET,
                "device": "dev-01",
                "data_dir": str(tmp_path / "data"),
                "broker": {"url": broker.url},
                "fleet_keys": [str(keys / "fleet.pub")],
                "agents": [{"name": "crasher", "agent": "crash", "max_failures": 2, "backoff_first_s": 0.1}],
            }
        )
    )
    run_device(config)
    common = ["--broker", broker.url, "--fleet", FLEET, "--key", str(keys / "fleet.key"), "--timeout", "30"]

    def stats() -> dict[str, Any]:
        result = runner.invoke(app, ["fleet", "call", "dev-01", "stats", *common, "--json"])
        return json.loads(result.output)["result"] if result.exit_code == 0 else {}

    def crasher() -> dict[str, Any] | None:
        agents = stats().get("agents", [])
        return agents[0] if agents and agents[0]["state"] == "broken" else None

    broken = poll(crasher, 2 * DEADLINE_S, "the crasher broken")
    assert broken["failures"] == 2
    assert "crashed on purpose" in broken["last_error"]
    table = runner.invoke(app, ["device", "stats", "dev-01", *common])
    assert table.exit_code == 0, table.output
    assert "crasher" in table.output
    assert "broken" in table.output
    result = runner.invoke(
        app, ["fleet", "call", "dev-01", "agent-restart", 'agent="nobody"', *common, "--json"]
    )
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["reason"] == "unknown-agent"
    result = runner.invoke(
        app, ["fleet", "call", "dev-01", "agent-restart", 'agent="crasher"', *common, "--json"]
    )
    assert result.exit_code == 0, result.output
    poll(
        lambda: (a := stats().get("agents")) and a[0]["failures"] >= 3 and a, 2 * DEADLINE_S, "a run after it"
    )
