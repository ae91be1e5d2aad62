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


def printed_line(lines: list[str], label: str) -> list[str]:
    """The command the demo printed after `label`, as argv."""
    found = [line.split(None, 1)[1] for line in list(lines) if line.split(None, 1)[:1] == [label]]
    return shlex.split(found[0]) if found else []


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
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    watcher: subprocess.Popen[str] | None = None
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

        # the printed `anomalies` line shows the anomaly the printed `inject` line causes on the
        # healthy dev-02 (its machine raises nothing of itself)
        anomalies = wait_until(lambda: printed_line(lines, "anomalies"), "the printed anomalies line")
        inject = wait_until(lambda: printed_line(lines, "inject"), "the printed inject line")
        assert inject[:4] == ["edgekernel", "fleet", "call", "dev-02"], inject
        assert anomalies[0] == "mosquitto_sub", anomalies
        watcher = subprocess.Popen(
            [*anomalies, "-C", "1", "-W", "300"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

        def inject_and_look() -> bool:
            done = subprocess.run(
                [sys.executable, "-m", "edgekernel", *inject[1:], "--json", "--timeout", "30"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert json.loads(done.stdout)["result"]["kind"] == "misalignment", done.stdout
            try:
                watcher.wait(timeout=20)
            except subprocess.TimeoutExpired:
                return False  # injected again: the first may have come before mosquitto_sub subscribed
            return True

        wait_until(inject_and_look, "the anomalies line showing an injected anomaly", timeout=300)
        seen, _ = watcher.communicate(timeout=60)
        topic, payload = seen.strip().split(" ", 1)
        assert topic == "ek/v1/demo/dev-02/events/anomaly", seen
        body = json.loads(payload)["body"]
        assert (body["agent"], body["data"]["state"]) == ("vibration-watch", "raised"), body
        raised = wait_until(
            lambda: [
                body for device, kind, body in stored_events(store) if (device, kind) == ("dev-02", "anomaly")
            ],
            "the anomaly stored by the gateway",
            seen=lambda: stored_events(store),
        )
        assert raised[0]["data"]["state"] == "raised", raised

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
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (workdir / "logs").glob("*.log")
            )
            pytest.fail(f"the demo did not stop within 120 s of SIGINT:\n{''.join(lines)}\n{logs}")
        finally:
            reader.join(timeout=10)
            proc.stdout.close()
    output = "".join(lines)
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
        return printed_line(lines, label)

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
