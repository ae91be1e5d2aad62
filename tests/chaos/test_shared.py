"""Two gateways in one `$share/…` group, writing one SQLite store, with real processes.

The broker hands each telemetry message to one of them; both write the same store file (WAL, one
`BEGIN IMMEDIATE` transaction per batch), so a duplicate reaching either one is found and dropped.
Each acknowledges what it committed, and an `AckWatcher` checks at every ack that the seqs it names
are already in the store. Status and reported are subscribed by both without sharing (each keeps
them up to date), so both write them: the same upsert twice.
"""

from __future__ import annotations

import ast
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgekernel.gateway import read_summary
from edgekernel.link import Mosquitto
from edgekernel.protocol import Sample, StatusBody, TelemetryBody, encode, topics

from .harness import (
    FLEET,
    AckWatcher,
    Program,
    SeenAck,
    check_exactly_once,
    device,
    gateway,
    highest_stored,
    running,
    stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

GROUP = "gateways"
RESEND_AFTER_S = 1.0  # the devices' outbox.resend_after_s (harness.device)


def shared_gateways(tmp: Path, broker_url: str) -> tuple[Program, Program]:
    return (
        gateway(tmp, broker_url, name="gw-a", share_group=GROUP),
        gateway(tmp, broker_url, name="gw-b", share_group=GROUP),
    )


def streaming_devices(tmp: Path, broker_url: str) -> list[Program]:
    """Three devices, 100 messages a second each (one sample a message)."""
    return [device(tmp, f"dev-{i}", broker_url, rate_hz=100, batch=1) for i in (1, 2, 3)]


def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.1)


def stored_counts(tmp: Path) -> dict[str, int]:
    """Messages stored per device; none while the first gateway is still creating the store."""
    try:
        return highest_stored(tmp)
    except sqlite3.OperationalError:
        return {}


def stored_at_least(tmp: Path, names: list[str], counts: int | dict[str, int]) -> Callable[[], bool]:
    def check() -> bool:
        now = stored_counts(tmp)
        return all(now.get(n, 0) >= (counts if isinstance(counts, int) else counts[n]) for n in names)

    return check


def final_counters(log: Path, name: str) -> Counter[str]:
    """The counters a gateway logs when it stops (the last time it stopped cleanly)."""
    text = re.sub(r"\s+", " ", log.read_text())
    found = re.findall(rf"gateway {name} stopped: (\{{.*?\}})", text)
    assert found, f"{name} never stopped cleanly:\n{log.read_text()[-2000:]}"
    return Counter(ast.literal_eval(found[-1]))


def acked_by(acks: list[SeenAck], start: float = 0.0, end: float = float("inf")) -> Counter[str]:
    return Counter(ack.gateway for ack in acks if start <= ack.at < end)


def check_acks_follow_commits(watcher: AckWatcher) -> list[SeenAck]:
    acks = watcher.seen()
    assert not watcher.errors
    early = [ack for ack in acks if ack.not_stored]
    assert not early, f"acknowledged before stored: {early[:5]}"
    return acks


def check_no_store_errors(*gateways: Program) -> None:
    for gw in gateways:
        assert "store write failed" not in gw.log.read_text(), f"{gw.name} could not write its batch"


def check_status_kept(tmp: Path, names: list[str]) -> None:
    """The devices stopped cleanly before the gateways: their last status (offline) is what is kept."""
    summaries = {s.device: s for s in read_summary(tmp / "store.db")}
    assert {n: summaries[n].online for n in names} == dict.fromkeys(names, False)
    with sqlite3.connect(tmp / "store.db") as db:
        assert db.execute("SELECT count(*) FROM rejected").fetchone() == (0,)
        reported = dict(db.execute("SELECT device, reported IS NOT NULL FROM devices"))
    assert reported == dict.fromkeys(names, 1)


def test_two_gateways_on_one_store_through_a_sigkill_and_restart_of_one(
    broker: Mosquitto, tmp_path: Path
) -> None:
    gw_a, gw_b = shared_gateways(tmp_path, broker.url)
    devices = streaming_devices(tmp_path, broker.url)
    names = [dev.name for dev in devices]
    with AckWatcher(broker.url, tmp_path / "store.db") as watcher, running([gw_a, gw_b], devices):
        wait_for(stored_at_least(tmp_path, names, 150), "150 messages stored per device", 30)
        wait_for(lambda: len(acked_by(watcher.seen())) == 2, "acks from both gateways", 10)
        gw_b.kill()
        killed = time.monotonic()
        time.sleep(1.5)
        gw_b.start()
        restarted = time.monotonic()
        wait_for(lambda: acked_by(watcher.seen(), restarted)["gw-b"] > 20, "acks from gw-b restarted", 20)
        more = {name: count + 200 for name, count in stored_counts(tmp_path).items()}
        wait_for(stored_at_least(tmp_path, names, more), "200 more messages per device", 20)
    acks = check_acks_follow_commits(watcher)

    assert all(check_exactly_once(tmp_path, name) > 350 for name in names)
    assert set(acked_by(acks, 0, killed)) == {"gw-a", "gw-b"}
    assert set(acked_by(acks, killed + 0.5, restarted)) == {"gw-a"}  # gw-b is down: gw-a has it all
    assert set(acked_by(acks, restarted + 2.0)) == {"gw-a", "gw-b"}

    check_no_store_errors(gw_a, gw_b)
    a, b = final_counters(gw_a.log, "gw-a"), final_counters(gw_b.log, "gw-b")  # b: since its restart
    assert a["stored"] > 0
    assert b["stored"] > 0
    assert a["stored"] + b["stored"] <= sum(highest_stored(tmp_path).values())
    for counters in (a, b):  # each has every device's status and reported, whatever the other wrote
        assert counters["accepted:status"] >= len(names)
        assert counters["accepted:reported"] >= len(names)
        assert counters["rejected"] == 0
    check_status_kept(tmp_path, names)


def test_a_gateway_killed_for_good_leaves_the_whole_load_to_the_other_at_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    gw_a, gw_b = shared_gateways(tmp_path, broker.url)
    devices = streaming_devices(tmp_path, broker.url)
    names = [dev.name for dev in devices]
    with AckWatcher(broker.url, tmp_path / "store.db") as watcher, running([gw_a, gw_b], devices):
        wait_for(stored_at_least(tmp_path, names, 150), "150 messages stored per device", 30)
        wait_for(lambda: len(acked_by(watcher.seen())) == 2, "acks from both gateways", 10)
        gw_b.kill()
        killed, killed_wall = time.monotonic(), time.time()
        time.sleep(5.0)
        devices_stop_wall = time.time()
    acks = check_acks_follow_commits(watcher)

    assert all(check_exactly_once(tmp_path, name) > 500 for name in names)
    assert set(acked_by(acks, killed + 0.5)) == {"gw-a"}
    # Sent from 2 s after the kill (past the one resend of what gw-b held when it died) until 1 s
    # before the devices stopped: each is acknowledged by gw-a before a resend would be due. A
    # broker still handing gw-b its share would leave half of them to the devices' resend.
    first_ack: dict[tuple[str, int], float] = {}
    for ack in acks:
        for seq in ack.seqs:
            first_ack.setdefault((ack.device, seq), ack.wall)
    waits = [
        first_ack[(name, seq)] - ts
        for name in names
        for seq, ts in stored(tmp_path, name)
        if killed_wall + 2.0 <= ts <= devices_stop_wall - 1.0
    ]
    assert len(waits) > 300
    late = [w for w in waits if w >= RESEND_AFTER_S]
    assert len(late) <= len(waits) // 20, f"{len(late)} of {len(waits)} waited for a resend"

    check_no_store_errors(gw_a, gw_b)
    assert final_counters(gw_a.log, "gw-a")["stored"] > 0
    check_status_kept(tmp_path, names)


def test_a_message_sent_twice_is_stored_once_and_both_gateways_acknowledge_it(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Each message is published twice in a row: the broker hands the copies to one gateway after the
    other, so most pairs are split. The one that commits second finds the row and drops its copy, and
    each acknowledges its own copy once that row is committed."""
    gw_a, gw_b = shared_gateways(tmp_path, broker.url)
    sender = paho.Client(CallbackAPIVersion.VERSION2, client_id="dev-9", protocol=MQTTProtocolVersion.MQTTv5)
    sender.connect(broker.host, broker.port)
    sender.loop_start()

    def send(seq: int, copies: int = 1) -> None:
        body = TelemetryBody(stream="vibration", samples=[Sample(ts=1.7e9 + seq, value=float(seq))])
        payload = encode(body.to_envelope("dev-9", seq=seq, ts=1.7e9 + seq))
        for _ in range(copies):
            sender.publish(topics.telemetry(FLEET, "dev-9", "vibration"), payload, qos=1)

    doubled = range(101, 161)
    try:
        with AckWatcher(broker.url, tmp_path / "store.db") as watcher, running([gw_a, gw_b], []):
            # Until both gateways are in the group. Two at a time: the broker deals every message
            # under the fleet in turn, the gateways' acks too, so with one message and its ack at a
            # time every message would go to the same gateway.
            warm_up = 0
            while warm_up < 100 and len(acked_by(watcher.seen())) < 2:
                send(warm_up + 1)
                send(warm_up + 2)
                warm_up += 2
                time.sleep(0.2)
            assert len(acked_by(watcher.seen())) == 2, "the two gateways did not both acknowledge"
            status = StatusBody(online=True, boot=1).to_envelope("dev-9")
            sender.publish(topics.status(FLEET, "dev-9"), encode(status), qos=1, retain=True)
            for seq in doubled:
                send(seq, copies=2)

            def settled() -> bool:
                acked = {seq for ack in watcher.seen() for seq in ack.seqs}
                (summary,) = read_summary(tmp_path / "store.db")
                return summary.duplicates == len(doubled) and set(doubled) <= acked

            wait_for(settled, "every copy stored or dropped, and every seq acknowledged", 10)
    finally:
        sender.loop_stop()
        sender.disconnect()
    acks = check_acks_follow_commits(watcher)

    rows = [seq for seq, _ in stored(tmp_path, "dev-9")]
    assert len(rows) == len(set(rows))  # (the first few were sent before any gateway subscribed)
    assert set(doubled) <= set(rows) <= {*range(1, warm_up + 1), *doubled}
    (summary,) = read_summary(tmp_path / "store.db")
    assert summary.duplicates == len(doubled)
    by_both = {seq for seq in doubled if {a.gateway for a in acks if seq in a.seqs} == {"gw-a", "gw-b"}}
    assert len(by_both) >= len(doubled) // 4, f"only {len(by_both)} of {len(doubled)} pairs were split"

    check_no_store_errors(gw_a, gw_b)
    a, b = final_counters(gw_a.log, "gw-a"), final_counters(gw_b.log, "gw-b")
    assert a["stored"] + b["stored"] == len(rows)
    assert a["duplicates"] + b["duplicates"] == len(doubled)
    # both subscribe to status without sharing (and one also gets it through the share): the same
    # upsert two or three times leaves one row with the device's state
    assert a["accepted:status"] >= 1
    assert b["accepted:status"] >= 1
    assert (summary.online, summary.messages) == (True, len(rows))
