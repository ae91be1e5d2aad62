"""The demo end to end: broker, gateway and three device processes; a SIGKILLed device goes offline."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgekernel.config import BrokerConfig
from edgekernel.fleet import snapshot
from edgekernel.gateway import StoreError, read_summary
from tests.waiting import DEADLINE_S, wait_until

pytestmark = pytest.mark.e2e

DEMO = [sys.executable, "-m", "edgekernel", "demo"]


def fleet_status(url: str) -> dict[str, bool | None]:
    # a generous settle: on a loaded machine the broker's retained messages may come with gaps
    registry = asyncio.run(snapshot(BrokerConfig(url=url), "demo", settle_s=2.0, timeout=DEADLINE_S))
    return {name: view.online for name, view in registry.devices.items()}


def stored_samples(store: Path) -> dict[str, int]:
    try:
        return {s.device: s.samples for s in read_summary(store)}
    except StoreError:
        return {}


def agent_states(url: str) -> dict[str, dict[str, str]]:
    """Per device, its agents' states as it last reported them."""
    registry = asyncio.run(snapshot(BrokerConfig(url=url), "demo", settle_s=2.0, timeout=DEADLINE_S))
    return {
        name: {agent.name: agent.state for agent in view.reported.agents}
        for name, view in registry.devices.items()
        if view.reported is not None
    }


def stored_events(store: Path) -> list[tuple[str, str, dict[str, object]]]:
    """(device, type, body) of every event the gateway has stored."""
    if not store.exists():
        return []
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as db:
            rows = db.execute("SELECT device, type, body FROM events ORDER BY message").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    return [(device, kind, json.loads(body)) for device, kind, body in rows]


def test_demo_with_three_devices(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgekernel",
            "demo",
            "--devices",
            "3",
            "--duration",
            "900",  # only if the test dies before its SIGINT
            "--workdir",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run = wait_until(
            lambda: (workdir / "run.json").exists() and json.loads((workdir / "run.json").read_text()),
            "run.json",
            timeout=120,
        )
        url, store = run["broker_url"], Path(run["store"])
        devices = ["dev-01", "dev-02", "dev-03"]
        wait_until(
            lambda: all(stored_samples(store).get(d, 0) > 0 for d in devices),
            "samples from every device",
            seen=lambda: stored_samples(store),
        )
        wait_until(
            lambda: fleet_status(url) == dict.fromkeys(devices, True),
            "all online",
            seen=lambda: fleet_status(url),
        )
        running = {"vibration-watch": "running", "system-monitor": "running"}
        wait_until(
            lambda: agent_states(url) == dict.fromkeys(devices, running),
            "every device reporting its agents running",
            seen=lambda: agent_states(url),
        )
        wait_until(
            lambda: {d for d, kind, _ in stored_events(store) if kind == "agent"} == set(devices),
            "agent state events stored from every device",
            seen=lambda: stored_events(store),
        )
        # dev-01 and dev-03 have faulty machines: a fault starts about every 50 s on each
        raised = wait_until(
            lambda: [
                (device, body)
                for device, kind, body in stored_events(store)
                if kind == "anomaly" and device in ("dev-01", "dev-03")
            ],
            "an anomaly event stored",
            timeout=300,
            seen=lambda: stored_events(store),
        )
        _device, body = raised[0]
        assert body["agent"] == "vibration-watch", body
        assert body["data"]["state"] == "raised", body

        os.kill(run["pids"]["dev-02"], signal.SIGKILL)
        wait_until(
            lambda: fleet_status(url).get("dev-02") is False,
            "dev-02 offline via Last Will",
            seen=lambda: fleet_status(url),
        )
        status = fleet_status(url)
        assert status["dev-01"] is True
        assert status["dev-03"] is True

        before = stored_samples(store)
        wait_until(
            lambda: stored_samples(store)["dev-01"] > before["dev-01"],
            "the others keep flowing",
            seen=lambda: (before, stored_samples(store)),
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (workdir / "logs").glob("*.log")
            )
            pytest.fail(f"the demo did not stop within 120 s of SIGINT:\n{output}\n{logs}")
    assert proc.returncode == 0, output
    assert f"mosquitto_sub -h 127.0.0.1 -p {run['broker_port']} -t 'ek/v1/#' -v" in output


def test_demo_prints_fleet_call_and_device_stats_lines_that_work(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [*DEMO, "--devices", "1", "--duration", "120", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def printed(label: str) -> list[str]:
        found = [line.split(None, 1)[1] for line in list(lines) if line.split(None, 1)[:1] == [label]]
        return shlex.split(found[0]) if found else []

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        assert argv[0] == "edgekernel", argv
        return subprocess.run(
            [sys.executable, "-m", "edgekernel", *argv[1:], "--timeout", "10"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    try:
        call = wait_until(lambda: printed("call"), "the printed `fleet call` line", timeout=60)
        stats = wait_until(lambda: printed("stats"), "the printed `device stats` line", timeout=30)
        assert call[:3] == ["edgekernel", "fleet", "call"]
        assert stats[:3] == ["edgekernel", "device", "stats"]

        def answered(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
            done = run(argv)
            return done if done.returncode == 0 else None

        pong = wait_until(lambda: answered([*call, "--json"]), "dev-01 answering ping", timeout=120)
        assert json.loads(pong.stdout)["result"]["pong"] is True
        table = wait_until(lambda: answered(stats), "dev-01 answering stats", timeout=120)
        assert "backlog" in table.stdout
        assert "no-keys" not in table.stdout + table.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        proc.stdout.close()
    assert proc.returncode == 0, "".join(lines)
