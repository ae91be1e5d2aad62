"""Programs as real processes, to kill and restart, and what their stores and outboxes hold after."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgekernel.link import Outbox
from edgekernel.protocol import ProtocolError, TopicKind, decode, topics
from edgekernel.protocol.bodies import AckBody

FLEET = "chaos"


@dataclass
class Program:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)
    starts: int = 0

    def start(self) -> None:
        handle = open(self.log, "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            self.argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        handle.close()
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def device(
    tmp: Path,
    name: str,
    broker_url: str,
    *,
    rate_hz: float = 200,
    batch: int = 10,
    fleet_keys: list[Path] | None = None,
    best_effort_hz: float = 0,
) -> Program:
    """A device process; with `batch` 1 each sample is its own message (rate_hz messages a second).
    With `fleet_keys` (public key files) it verifies and runs signed commands. With `best_effort_hz`
    it also sends a best-effort stream, "temp", one sample a message."""
    config = tmp / f"{name}.yaml"
    settings: dict[str, object] = {
        "fleet": FLEET,
        "device": name,
        "data_dir": str(tmp / name),
        "reported_interval_s": 5,
        "broker": {"url": broker_url, "reconnect": {"min_delay_s": 0.1, "max_delay_s": 1.0}},
        "outbox": {"resend_after_s": 1.0},
        "sensors": [
            {
                "stream": "vibration",
                "rate_hz": rate_hz,
                "batch": {"max_samples": batch, "max_wait_ms": 100},
            }
        ],
    }
    if fleet_keys:
        settings["fleet_keys"] = [str(key) for key in fleet_keys]
    if best_effort_hz:
        temp = {"stream": "temp", "rate_hz": best_effort_hz, "best_effort": True, "batch": {"max_samples": 1}}
        settings["sensors"] = [*cast(list[object], settings["sensors"]), temp]
    config.write_text(yaml.safe_dump(settings))
    argv = [sys.executable, "-m", "edgekernel", "device", "run", "--config", str(config)]
    return Program(name, argv, tmp / f"{name}.log")


def gateway(
    tmp: Path,
    broker_url: str,
    *,
    name: str = "gw-1",
    share_group: str | None = None,
    processes: int = 1,
) -> Program:
    """A gateway process storing into `tmp`/store.db; gateways given the same `share_group` split the
    fleet's messages between them (and share that store)."""
    config = tmp / f"{name}.yaml"
    settings: dict[str, object] = {
        "fleet": FLEET,
        "gateway": name,
        "broker": {"url": broker_url, "reconnect": {"min_delay_s": 0.1, "max_delay_s": 1.0}},
        "store": {"path": str(tmp / "store.db"), "batch_wait_ms": 20},
    }
    if share_group is not None:
        settings["share_group"] = share_group
    if processes != 1:
        settings["processes"] = processes
    config.write_text(yaml.safe_dump(settings))
    argv = [sys.executable, "-m", "edgekernel", "gateway", "run", "--config", str(config)]
    return Program(name, argv, tmp / f"{name}.log")


@contextmanager
def running(gw: Program | list[Program], devices: list[Program]) -> Iterator[None]:
    """The gateway (or gateways) and the devices run inside the block; at its end the devices stop
    first (their outboxes keep what was not acknowledged), then the gateways, after a moment to store
    what came."""
    gateways = gw if isinstance(gw, list) else [gw]
    for each in gateways:
        each.start()
    for dev in devices:
        dev.start()
    try:
        yield
        for dev in devices:
            dev.stop()
        time.sleep(1.0)
    finally:
        for dev in devices:
            dev.stop()
        for each in gateways:
            each.stop()


def highest_stored(tmp: Path) -> dict[str, int]:
    if not (tmp / "store.db").exists():
        return {}
    with sqlite3.connect(tmp / "store.db", timeout=5) as db:
        return {d: int(n) for d, n in db.execute("SELECT device, count(*) FROM messages GROUP BY device")}


def stored(tmp: Path, device_name: str) -> list[tuple[int, float]]:
    """(seq, ts) of every durable message the gateway stored for a device, by seq."""
    with sqlite3.connect(tmp / "store.db") as db:
        return list(
            db.execute(
                "SELECT seq, ts FROM messages WHERE device = ? AND seq IS NOT NULL ORDER BY seq",
                (device_name,),
            )
        )


def outbox_pending(tmp: Path, device_name: str) -> set[int]:
    """What a stopped device still holds, unacknowledged."""

    async def read() -> set[int]:
        async with Outbox(tmp / device_name / "outbox.db") as outbox:
            return {m.seq for m in await outbox.pending(10**7)}

    return asyncio.run(read())


def check_exactly_once(tmp: Path, device_name: str) -> int:
    """Every seq the device committed is stored once or still in its outbox; stored ones are in order."""
    rows = stored(tmp, device_name)
    seqs = [seq for seq, _ in rows]
    assert len(seqs) == len(set(seqs))
    waiting = outbox_pending(tmp, device_name)
    everything = set(seqs) | waiting
    assert everything == set(range(1, max(everything) + 1)), (
        f"{device_name}: missing {sorted(set(range(1, max(everything) + 1)) - everything)[:20]}"
    )
    times = [ts for _, ts in rows]
    assert times == sorted(times), f"{device_name}: stored out of order"
    return len(seqs)


@dataclass(frozen=True)
class SeenAck:
    at: float  # time.monotonic() when it arrived
    wall: float  # time.time() when it arrived
    gateway: str
    device: str
    seqs: frozenset[int]
    not_stored: frozenset[int]  # acknowledged seqs the store did not hold when the ack arrived


class AckWatcher:
    """Listens to every device's `…/ack` (an ordinary, not shared, subscription) and, as each ack
    arrives, checks in the store that every seq it acknowledges is already committed there."""

    def __init__(self, broker_url: str, store: Path) -> None:
        host, _, port = broker_url.removeprefix("mqtt://").rpartition(":")
        self.host, self.port, self.store = host, int(port), store
        self.acks: list[SeenAck] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._db: sqlite3.Connection | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="ack-watcher", protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message

    def __enter__(self) -> AckWatcher:
        self._client.connect(self.host, self.port)
        self._client.loop_start()
        assert self._subscribed.wait(10), "the ack watcher was not subscribed within 10 s"
        return self

    def __exit__(self, *_: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        if self._db is not None:
            self._db.close()

    def _on_connect(self, client: paho.Client, *_: object) -> None:
        client.subscribe(topics.subscription(FLEET, TopicKind.ACK), qos=1)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            envelope = decode(bytes(msg.payload))
            ack = AckBody.from_envelope(envelope)
            ranges = ack.ranges
        except ProtocolError as err:
            with self._lock:
                self.errors.append(f"bad ack on {msg.topic}: {err}")
            return
        device_name = topics.parse(msg.topic).device
        seqs = frozenset(seq for first, last in ranges for seq in range(first, last + 1))
        try:
            missing = seqs - self._stored_now(device_name, ack.seq_space, min(seqs), max(seqs))
        except sqlite3.Error as err:
            with self._lock:
                self.errors.append(f"cannot read the store at an ack on {msg.topic}: {err}")
            return
        with self._lock:
            self.acks.append(
                SeenAck(time.monotonic(), time.time(), envelope.src, device_name, seqs, frozenset(missing))
            )

    def _stored_now(self, device_name: str, epoch: int, first: int, last: int) -> set[int]:
        if self._db is None:
            self._db = sqlite3.connect(
                f"file:{self.store}?mode=ro", uri=True, timeout=5, check_same_thread=False
            )
        rows = self._db.execute(
            "SELECT seq FROM messages WHERE device = ? AND epoch = ? AND seq BETWEEN ? AND ?",
            (device_name, epoch, first, last),
        )
        return {seq for (seq,) in rows}

    def seen(self) -> list[SeenAck]:
        with self._lock:
            return list(self.acks)
