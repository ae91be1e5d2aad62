"""A CoAP-only device whose envelopes go block-wise, its gateway stopped for 25 s and started again:
the backlog is posted `window` at a time, yet every envelope is stored whole, once, and none is
dead-lettered, spliced with another, or lost."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgekernel.link import Mosquitto, free_port

from .harness import FLEET, Program, check_exactly_once, more_than_now, wait_stored

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RATE_HZ = 1000
BATCH = 100  # ~2.8 kB of CBOR an envelope: three 1 kB blocks
OUTAGE_S = 25.0


def programs(tmp: Path, broker_url: str, gw_port: int) -> tuple[Program, Program]:
    gw_config = tmp / "gw-1.yaml"
    gw_config.write_text(
        yaml.safe_dump(
            {
                "fleet": FLEET,
                "gateway": "gw-1",
                "broker": {"url": broker_url},
                "store": {"path": str(tmp / "store.db"), "batch_wait_ms": 20},
                "coap": {"host": "127.0.0.1", "port": gw_port},
            }
        )
    )
    dev_config = tmp / "dev-1.yaml"
    dev_config.write_text(
        yaml.safe_dump(
            {
                "fleet": FLEET,
                "device": "dev-1",
                "data_dir": str(tmp / "dev-1"),
                "encoding": "cbor",
                "outbox": {"resend_after_s": 2.0},
                "coap": {
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "gateway_url": f"coap://127.0.0.1:{gw_port}",
                    "timeout_s": 5.0,
                    "reconnect": {"min_delay_s": 0.2, "max_delay_s": 2.0},
                },
                "sensors": [
                    {
                        "stream": "vibration",
                        "rate_hz": RATE_HZ,
                        "batch": {"max_samples": BATCH, "max_wait_ms": 200},
                    }
                ],
            }
        )
    )
    run = [sys.executable, "-m", "edgekernel"]
    gw = Program("gw-1", [*run, "gateway", "run", "--config", str(gw_config)], tmp / "gw-1.log")
    dev = Program("dev-1", [*run, "device", "run", "--config", str(dev_config)], tmp / "dev-1.log")
    return gw, dev


def spliced(store: Path) -> list[str]:
    """Messages whose samples are not one envelope's: a count that differs from the message's, sample
    times out of order, or spread wider than one batch can be."""
    wrong = []
    with sqlite3.connect(store) as db:
        messages = db.execute("SELECT id, seq, samples FROM messages WHERE device = 'dev-1'").fetchall()
        for message, seq, count in messages:
            times = [
                ts
                for (ts,) in db.execute("SELECT ts FROM samples WHERE message = ? ORDER BY idx", (message,))
            ]
            if len(times) != count:
                wrong.append(f"seq {seq}: {len(times)} samples stored, {count} announced")
            elif times != sorted(times) or (times and times[-1] - times[0] > 10.0):
                wrong.append(f"seq {seq}: sample times {times[0]}..{times[-1]} are not one batch")
    return wrong


def dead_letters(outbox: Path) -> int:
    with sqlite3.connect(outbox) as db:
        return int(db.execute("SELECT count(*) FROM dead").fetchone()[0])


def test_gateway_outage_with_block_wise_envelopes_loses_and_splices_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    gw, dev = programs(tmp_path, broker.url, free_port())
    gw.start()
    dev.start()
    try:
        wait_stored(tmp_path, {"dev-1": 20}, what="the CoAP-only device to deliver")
        gw.stop()
        time.sleep(OUTAGE_S)
        gw.start()
        backlog = more_than_now(tmp_path, ["dev-1"], int(OUTAGE_S * RATE_HZ / BATCH) + 20)
        wait_stored(tmp_path, backlog, what="the backlog of the outage and the stream after it")
        dev.stop()
        time.sleep(1.0)
    finally:
        dev.stop()
        gw.stop()
    assert [p.proc.returncode for p in (gw, dev) if p.proc is not None] == [0, 0]
    assert check_exactly_once(tmp_path, "dev-1") >= backlog["dev-1"]
    assert spliced(tmp_path / "store.db") == []
    assert dead_letters(tmp_path / "dev-1" / "outbox.db") == 0
    with sqlite3.connect(tmp_path / "store.db") as db:
        rejected = db.execute("SELECT reason, message FROM rejected LIMIT 5").fetchall()
    assert rejected == []
