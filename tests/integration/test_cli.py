"""The command line against a real broker: fleet devices, topics watch, device and gateway run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgekernel.cli.main import app
from edgekernel.link import Mosquitto
from edgekernel.protocol import ReportedBody, StatusBody, decode, topics
from tests.waiting import DEADLINE_S

from .helpers import poll

pytestmark = pytest.mark.integration

runner = CliRunner()


def write_device(tmp_path: Path, name: str = "dev-01", **extra: object) -> Path:
    path = tmp_path / "devices" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "fleet": "demo",
        "device": name,
        "data_dir": f"../data/{name}",
        "sensors": [{"stream": "temp", "rate_hz": 20, "batch": {"max_samples": 5, "max_wait_ms": 200}}],
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgekernel", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def retained(broker: Mosquitto, topic: str) -> bytes:
    done = subprocess.run(
        ["mosquitto_sub", "-p", str(broker.port), "-t", topic, "-C", "1", "-W", "20"],
        capture_output=True,
        check=False,
    )
    return done.stdout.strip()


def test_device_run_then_sigterm_goes_offline_cleanly(broker: Mosquitto, tmp_path: Path) -> None:
    config = write_device(tmp_path)
    proc = start("device", "run", "--config", str(config), "--broker", broker.url)
    try:
        status = topics.status("demo", "dev-01")
        poll(
            lambda: (
                retained(broker, status) and StatusBody.from_envelope(decode(retained(broker, status))).online
            ),
            timeout=120,  # a device program starting on a loaded machine
            what="online status",
        )
        reported = decode(retained(broker, topics.reported("demo", "dev-01")))
        assert ReportedBody.from_envelope(reported).streams == ["temp"]
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, output
    assert not StatusBody.from_envelope(decode(retained(broker, status))).online
    assert (tmp_path / "data" / "dev-01" / "state.db").exists()


def test_fleet_devices_lists_the_fleet_as_a_table_and_as_json(broker: Mosquitto, tmp_path: Path) -> None:
    procs = [
        start("device", "run", "--config", str(write_device(tmp_path, name)), "--broker", broker.url)
        for name in ("dev-01", "dev-02")
    ]
    try:

        def listed_all() -> dict[str, dict[str, object]]:
            result = runner.invoke(
                app,
                ["fleet", "devices", "--broker", broker.url, "--fleet", "demo", "--json", "--timeout", "60"],
            )
            assert result.exit_code == 0, result.output
            return {d["device"]: d for d in json.loads(result.output)["devices"]}

        def listed() -> dict[str, dict[str, object]] | None:
            devices = listed_all()
            ready = all(d.get("online") and d.get("cores") for d in devices.values())
            return devices if len(devices) == 2 and ready else None

        devices = poll(listed, timeout=120, what="two online devices with capabilities")
        assert devices["dev-01"]["streams"] == ["temp"]
        table = runner.invoke(
            app, ["fleet", "devices", "--broker", broker.url, "--fleet", "demo"], terminal_width=200
        )
        assert table.exit_code == 0
        assert "dev-01" in table.output
        assert "online" in table.output
        assert "dev-02" in table.output
        procs[1].kill()
        procs[1].wait()
        poll(
            lambda: (listed_all() or {}).get("dev-02", {}).get("online") is False,
            what="dev-02 offline",
        )
    finally:
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=DEADLINE_S)


def test_fleet_devices_without_a_broker_exits_3(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["fleet", "devices", "--broker", "mqtt://127.0.0.1:1", "--fleet", "demo", "--timeout", "1"]
    )
    assert result.exit_code == 3
    assert "cannot reach mqtt://127.0.0.1:1" in result.output


def test_topics_watch_decodes_envelopes_and_flags_bad_messages(broker: Mosquitto) -> None:
    good = StatusBody(online=True, boot=3).to_envelope("dev-01")
    from edgekernel.protocol import encode

    # retained, so the watch gets them however long it takes to subscribe
    sent = {
        topics.status("demo", "dev-01"): encode(good),
        "ek/v1/demo/dev-01/bogus": b"{}",
        topics.telemetry("demo", "dev-01", "temp"): b"\x00garbage",
    }
    for topic, payload in sent.items():
        subprocess.run(
            ["mosquitto_pub", "-p", str(broker.port), "-t", topic, "-r", "-s"], input=payload, check=True
        )
    result = runner.invoke(app, ["topics", "watch", "ek/v1/#", "--broker", broker.url, "--json", "-n", "3"])
    assert result.exit_code == 0, result.output
    records = {r["topic"]: r for r in (json.loads(line) for line in result.output.splitlines())}
    assert set(records) == set(sent)
    assert records[topics.status("demo", "dev-01")]["envelope"]["body"] == {"online": True, "boot": 3}
    assert records["ek/v1/demo/dev-01/bogus"]["error"]["reason"] == "unknown-kind"
    assert records[topics.telemetry("demo", "dev-01", "temp")]["error"]["reason"] == "bad-cbor"


def test_device_run_with_an_invalid_config_exits_1_naming_file_and_line(tmp_path: Path) -> None:
    config = write_device(tmp_path, encoding="xml")
    result = runner.invoke(app, ["device", "run", "--config", str(config)])
    assert result.exit_code == 1
    assert f"{config}:" in result.output
    assert "encoding" in result.output
    assert "json" in result.output


def test_gateway_run_with_a_bad_broker_url_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "gw-1.yaml"
    config.write_text(yaml.safe_dump({"fleet": "demo", "gateway": "gw-1", "store": {"path": "store.db"}}))
    result = runner.invoke(app, ["gateway", "run", "--config", str(config), "--broker", "http://x"])
    assert result.exit_code == 1
    assert "mqtt://" in result.output


def test_demo_without_mosquitto_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edgekernel.link.broker.MOSQUITTO_CANDIDATES", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    result = runner.invoke(app, ["demo", "--duration", "1", "--workdir", str(tmp_path / "demo")])
    assert result.exit_code == 4
    assert "apt-get install -y mosquitto mosquitto-clients" in result.output


def test_topics_watch_refuses_a_bad_filter_with_exit_2() -> None:
    result = runner.invoke(app, ["topics", "watch", "a/#/b", "--broker", "mqtt://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "'#' must be the whole last level" in result.output


def test_demo_on_a_busy_port_exits_1_and_leaves_nothing_running(broker: Mosquitto, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["demo", "--port", str(broker.port), "--duration", "1", "--workdir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "already in use" in result.output
