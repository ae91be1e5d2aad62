"""Programs as real processes, to kill and restart, and what their stores and outboxes hold after."""

from __future__ import annotations

import asyncio
import re
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

from edgekernel.lifeline import child_env
from edgekernel.link import Outbox
from edgekernel.protocol import ProtocolError, TopicKind, decode, topics
from edgekernel.protocol.bodies import AckBody
from tests.stores import rows
from tests.waiting import DEADLINE_S, wait_until

FLEET = "chaos"

# A wait on a stream of messages: long, as devices on a loaded machine may deliver a tenth of their
# rate, but it ends early when nothing is stored for STALL_S.
STREAM_DEADLINE_S = 400.0
STALL_S = 60.0


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
            self.argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env()
        )
        handle.close()
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(DEADLINE_S)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(DEADLINE_S)
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
    resend_after_s: float = 1.0,
    data_dir: Path | None = None,
    reported_interval_s: float = 5,
    best_effort_hz: float = 0,
    keepalive_s: int | None = None,
    reconnect: dict[str, float] | None = None,
) -> Program:
    """A device process; with `batch` 1 each sample is its own message (rate_hz messages a second).
    With `fleet_keys` (public key files) it verifies and runs signed commands. Its data is in
    `data_dir`, by default `tmp`/`name`. With `best_effort_hz` it also sends a best-effort stream,
    "temp", one sample a message. `keepalive_s` and `reconnect` (ReconnectConfig's fields) replace
    the broker settings' defaults (a quick reconnect)."""
    config = tmp / f"{name}.yaml"
    settings: dict[str, object] = {
        "fleet": FLEET,
        "device": name,
        "data_dir": str(data_dir or tmp / name),
        "reported_interval_s": reported_interval_s,
        "broker": {"url": broker_url, "reconnect": reconnect or {"min_delay_s": 0.1, "max_delay_s": 1.0}},
        "outbox": {"resend_after_s": resend_after_s},
        "sensors": [
            {
                "stream": "vibration",
                "rate_hz": rate_hz,
                "batch": {"max_samples": batch, "max_wait_ms": 100},
            }
        ],
    }
    if keepalive_s is not None:
        cast(dict[str, object], settings["broker"])["keepalive_s"] = keepalive_s
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


def logged(program: Program, pattern: str) -> int:
    """How many times `pattern` (a regular expression) is in the program's log, lines joined."""
    return len(re.findall(pattern, re.sub(r"\s+", " ", program.log.read_text(errors="replace"))))


def wait_subscribed(gw: Program, name: str | None = None, times: int = 1) -> None:
    """Until the gateway (or its process `name`, such as gw-1/1) has said `times` times that it subscribed."""
    pattern = rf"gateway {re.escape(name or gw.name)} subscribed"
    wait_until(
        lambda: logged(gw, pattern) >= times,
        f"{name or gw.name} to subscribe ({times} times)",
        seen=lambda: gw.log.read_text(errors="replace")[-1500:],
    )


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


def stored_counts(tmp: Path) -> dict[str, int]:
    """Messages stored per device; none before the gateway has created its store."""
    found = rows(tmp / "store.db", "SELECT device, count(*) FROM messages GROUP BY device")
    return {str(name): int(count) for name, count in found}


def wait_stored(
    tmp: Path, at_least: dict[str, int], *, timeout: float = STREAM_DEADLINE_S, what: str = ""
) -> dict[str, int]:
    """Until the store holds at least `at_least[device]` messages of each device; the counts then.

    How long that takes depends on how fast the machine runs the devices, so the wait has a long
    deadline and fails early only if the counts stop growing for `STALL_S`."""

    def enough() -> dict[str, int] | None:
        counts = stored_counts(tmp)
        return counts if all(counts.get(name, 0) >= n for name, n in at_least.items()) else None

    return wait_until(
        enough,
        what or f"stored counts of at least {at_least}",
        timeout=timeout,
        seen=lambda: stored_counts(tmp),
        stalled_after=STALL_S,
        interval=0.3,
    )


def more_than_now(tmp: Path, names: list[str], more: int) -> dict[str, int]:
    """`more` messages beyond what the store holds now, for each of `names`, for `wait_stored`."""
    now = stored_counts(tmp)
    return {name: now.get(name, 0) + more for name in names}


def stored(tmp: Path, device_name: str) -> list[tuple[int, float]]:
    """(seq, ts) of every durable message the gateway stored for a device, by seq."""
    query = "SELECT seq, ts FROM messages WHERE device = ? AND seq IS NOT NULL ORDER BY seq"
    found = rows(tmp / "store.db", query, (device_name,))
    return [(int(seq), float(ts)) for seq, ts in found]


def sent_within(tmp: Path, names: list[str], start: float, end: float) -> dict[str, int]:
    """How many messages of each device stored that were sent (sample time, wall clock) from
    `start` to `end`."""
    return {name: sum(1 for _, ts in stored(tmp, name) if start <= ts <= end) for name in names}


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
    assert everything, f"{device_name}: nothing stored and nothing in its outbox: did it ever run?"
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
        assert self._subscribed.wait(DEADLINE_S), f"the ack watcher was not subscribed within {DEADLINE_S}s"
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
                f"file:{self.store}?mode=ro", uri=True, timeout=30, check_same_thread=False
            )
        rows = self._db.execute(
            "SELECT seq FROM messages WHERE device = ? AND epoch = ? AND seq BETWEEN ? AND ?",
            (device_name, epoch, first, last),
        )
        return {seq for (seq,) in rows}

    def seen(self) -> list[SeenAck]:
        with self._lock:
            return list(self.acks)
