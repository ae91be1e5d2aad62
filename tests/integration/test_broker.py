"""The private Mosquitto that tests and the demo use: start, kill, restart, persistence."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekernel.link import BrokerError, Mosquitto
from edgekernel.link import broker as broker_module
from edgekernel.link.broker import free_port, port_open

pytestmark = pytest.mark.integration


def pub(broker: Mosquitto, topic: str, payload: str, *extra: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-p", str(broker.port), "-t", topic, "-m", payload, "-q", "1", *extra], check=True
    )


def sub_one(broker: Mosquitto, topic: str, wait_s: int = 30) -> str:
    """The retained message on `topic`, or "" if none comes within `wait_s`."""
    done = subprocess.run(
        ["mosquitto_sub", "-p", str(broker.port), "-t", topic, "-C", "1", "-W", str(wait_s)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def test_broker_listens_on_a_free_port_with_generated_config(broker: Mosquitto) -> None:
    assert port_open(broker.host, broker.port)
    config = broker.config_path.read_text()
    assert f"listener {broker.port} 127.0.0.1" in config
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"


def test_kill_and_restart_on_the_same_port(broker: Mosquitto) -> None:
    port, first_pid = broker.port, broker.pid
    broker.kill()
    assert not broker.running
    assert not port_open(broker.host, port)
    broker.start()
    assert broker.port == port
    assert broker.pid != first_pid
    pub(broker, "t/x", "after-restart", "-r")
    assert sub_one(broker, "t/x") == "after-restart"


def test_persistent_broker_keeps_retained_messages_across_a_clean_restart(
    persistent_broker: Mosquitto,
) -> None:
    pub(persistent_broker, "t/keep", "kept", "-r")
    persistent_broker.restart()
    assert sub_one(persistent_broker, "t/keep") == "kept"


def test_broker_without_persistence_forgets_on_restart(broker: Mosquitto) -> None:
    pub(broker, "t/lost", "gone", "-r")
    broker.restart()
    assert sub_one(broker, "t/lost", wait_s=2) == ""


def test_busy_port_gives_a_clear_error(broker: Mosquitto, tmp_path: Path) -> None:
    other = Mosquitto(tmp_path / "other", port=broker.port)
    with pytest.raises(BrokerError, match="already in use"):
        other.start(timeout=3)
    assert not other.running


@pytest.fixture
def taken_port() -> Iterator[socket.socket]:
    """A port bound by someone else (not listening: the broker finds out only when it binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


@pytest.mark.parametrize("listening", [False, True])
def test_a_port_taken_between_choosing_and_binding_it_is_exchanged_for_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken_port: socket.socket, listening: bool
) -> None:
    if listening:
        taken_port.listen()
    taken = taken_port.getsockname()[1]
    ports = iter([taken])
    monkeypatch.setattr(broker_module, "free_port", lambda host: next(ports, None) or free_port(host))
    with Mosquitto(tmp_path / "broker") as instance:
        assert instance.port != taken
        assert port_open(instance.host, instance.port)
        assert f"listener {instance.port} " in instance.config_path.read_text()


def test_a_restarted_broker_keeps_its_port_even_when_it_is_taken(broker: Mosquitto) -> None:
    broker.kill()
    port = broker.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((broker.host, port))
        squatter.listen()
        with pytest.raises(BrokerError, match="already in use"):
            broker.start()
    assert broker.port == port
    assert not broker.running
