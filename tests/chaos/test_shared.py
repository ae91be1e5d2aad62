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
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgekernel.gateway import read_summary
from edgekernel.link import Mosquitto
from edgekernel.protocol import Sample, StatusBody, TelemetryBody, encode, topics
from tests.waiting import wait_until

from .harness import (
    FLEET,
    STALL_S,
    STREAM_DEADLINE_S,
    AckWatcher,
    Program,
    SeenAck,
    check_exactly_once,
    device,
    gateway,
    more_than_now,
    running,
    sent_within,
    stored,
    stored_counts,
    wait_stored,
    wait_subscribed,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

GROUP = "gateways"
# How far apart in time acks from one gateway and from the other are told apart: an ack the
# watcher receives this long after a gateway was killed was not sent by it, even on a loaded machine.
IN_FLIGHT_S = 2.0
RESEND_AFTER_S = 3.0  # the devices' outbox.resend_after_s where a test measures the wait for an ack


def shared_gateways(tmp: Path, broker_url: str) -> tuple[Program, Program]:
    return (
        gateway(tmp, broker_url, name="gw-a", share_group=GROUP),
        gateway(tmp, broker_url, name="gw-b", share_group=GROUP),
    )


def streaming_devices(tmp: Path, broker_url: str, resend_after_s: float = 1.0) -> list[Program]:
    """Three devices, 100 messages a second each (one sample a message)."""
    return [
        device(tmp, f"dev-{i}", broker_url, rate_hz=100, batch=1, resend_after_s=resend_after_s)
        for i in (1, 2, 3)
    ]


def wait_acks(watcher: AckWatcher, at_least: dict[str, int], since: float = 0.0) -> None:
    """Until each gateway named has sent `at_least` acks (received after `since`, monotonic)."""
    wait_until(
        lambda: all(acked_by(watcher.seen(), since)[gw] >= n for gw, n in at_least.items()),
        f"acks {at_least}",
        seen=lambda: acked_by(watcher.seen(), since),
    )


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
        wait_stored(tmp_path, dict.fromkeys(names, 150))
        wait_acks(watcher, {"gw-a": 1, "gw-b": 1})
        gw_b.kill()
        killed = time.monotonic()
        wait_acks(watcher, {"gw-a": 20}, since=killed + IN_FLIGHT_S)
        gw_b.start()
        restarted = time.monotonic()
        wait_acks(watcher, {"gw-a": 20, "gw-b": 20}, since=restarted + IN_FLIGHT_S)
        wait_stored(tmp_path, more_than_now(tmp_path, names, 200), what="200 more messages per device")
    acks = check_acks_follow_commits(watcher)

    assert all(check_exactly_once(tmp_path, name) >= 350 for name in names)
    assert set(acked_by(acks, 0, killed)) == {"gw-a", "gw-b"}
    assert set(acked_by(acks, killed + IN_FLIGHT_S, restarted)) == {"gw-a"}  # gw-b is down: gw-a has it all
    assert set(acked_by(acks, restarted + IN_FLIGHT_S)) == {"gw-a", "gw-b"}

    check_no_store_errors(gw_a, gw_b)
    a, b = final_counters(gw_a.log, "gw-a"), final_counters(gw_b.log, "gw-b")  # b: since its restart
    assert a["stored"] > 0
    assert b["stored"] > 0
    assert a["stored"] + b["stored"] <= sum(stored_counts(tmp_path).values())
    for counters in (a, b):  # each has every device's status and reported, whatever the other wrote
        assert counters["accepted:status"] >= len(names)
        assert counters["accepted:reported"] >= len(names)
        assert counters["rejected"] == 0
    check_status_kept(tmp_path, names)


def test_a_gateway_killed_for_good_leaves_the_whole_load_to_the_other_at_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    gw_a, gw_b = shared_gateways(tmp_path, broker.url)
    devices = streaming_devices(tmp_path, broker.url, resend_after_s=RESEND_AFTER_S)
    names = [dev.name for dev in devices]
    with AckWatcher(broker.url, tmp_path / "store.db") as watcher, running([gw_a, gw_b], devices):
        wait_stored(tmp_path, dict.fromkeys(names, 150))
        wait_acks(watcher, {"gw-a": 1, "gw-b": 1})
        gw_b.kill()
        killed, killed_wall = time.monotonic(), time.time()
        since = killed_wall + IN_FLIGHT_S
        wait_until(
            lambda: sum(sent_within(tmp_path, names, since, time.time() - 1.0).values()) > 300,
            "300 messages sent after the kill stored",
            timeout=STREAM_DEADLINE_S,
            seen=lambda: sent_within(tmp_path, names, since, time.time() - 1.0),
            stalled_after=STALL_S,
        )
        devices_stop_wall = time.time()
    acks = check_acks_follow_commits(watcher)

    assert all(check_exactly_once(tmp_path, name) > 150 for name in names)
    assert set(acked_by(acks, killed + IN_FLIGHT_S)) == {"gw-a"}
    # Sent from IN_FLIGHT_S after the kill until 1 s before the devices stopped: each is acknowledged
    # by gw-a before a resend would be due. A broker still handing gw-b its share would leave half of
    # them to the devices' resend. (The resend is late enough that a loaded machine's slower path
    # from sample to ack does not pass for one.)
    first_ack: dict[tuple[str, int], float] = {}
    for ack in acks:
        for seq in ack.seqs:
            first_ack.setdefault((ack.device, seq), ack.wall)
    waits = [
        first_ack[(name, seq)] - ts
        for name in names
        for seq, ts in stored(tmp_path, name)
        if since <= ts <= devices_stop_wall - 1.0
    ]
    assert len(waits) > 300
    late = [w for w in waits if w >= RESEND_AFTER_S]
    assert len(late) <= len(waits) // 10, f"{len(late)} of {len(waits)} waited for a resend"

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

    warm_up = 0
    try:
        with AckWatcher(broker.url, tmp_path / "store.db") as watcher, running([gw_a, gw_b], []):
            wait_subscribed(gw_a)
            wait_subscribed(gw_b)

            def warmed_up() -> bool:
                """Until both gateways are in the group. Two at a time: the broker deals every message
                under the fleet in turn, the gateways' acks too, so with one message and its ack at a
                time every message would go to the same gateway."""
                nonlocal warm_up
                if len(acked_by(watcher.seen())) == 2:
                    return True
                send(warm_up + 1)
                send(warm_up + 2)
                warm_up += 2
                return False

            wait_until(
                warmed_up, "acks from both gateways", seen=lambda: acked_by(watcher.seen()), interval=0.2
            )
            doubled = range(warm_up + 1, warm_up + 61)
            status = StatusBody(online=True, boot=1).to_envelope("dev-9")
            sender.publish(topics.status(FLEET, "dev-9"), encode(status), qos=1, retain=True)
            for seq in doubled:
                send(seq, copies=2)

            def settled() -> bool:
                acked = {seq for ack in watcher.seen() for seq in ack.seqs}
                (summary,) = read_summary(tmp_path / "store.db")
                return summary.duplicates == len(doubled) and set(doubled) <= acked

            wait_until(settled, "every copy stored or dropped, and every seq acknowledged")
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
