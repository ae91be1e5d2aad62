"""Programs as real processes, to kill and restart, and what their stores and outboxes hold after."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgekernel.link import Outbox

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


def device(tmp: Path, name: str, broker_url: str, *, rate_hz: float = 200, batch: int = 10) -> Program:
    """A device process; with `batch` 1 each sample is its own message (rate_hz messages a second)."""
    config = tmp / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
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
        )
    )
    argv = [sys.executable, "-m", "edgekernel", "device", "run", "--config", str(config)]
    return Program(name, argv, tmp / f"{name}.log")


def gateway(tmp: Path, broker_url: str) -> Program:
    config = tmp / "gw-1.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "fleet": FLEET,
                "gateway": "gw-1",
                "broker": {"url": broker_url, "reconnect": {"min_delay_s": 0.1, "max_delay_s": 1.0}},
                "store": {"path": str(tmp / "store.db"), "batch_wait_ms": 20},
            }
        )
    )
    argv = [sys.executable, "-m", "edgekernel", "gateway", "run", "--config", str(config)]
    return Program("gw-1", argv, tmp / "gw-1.log")


@contextmanager
def running(gw: Program, devices: list[Program]) -> Iterator[None]:
    """The gateway and the devices run inside the block; at its end the devices stop first (their
    outboxes keep what was not acknowledged), then the gateway, after a moment to store what came."""
    gw.start()
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
        gw.stop()


def highest_stored(tmp: Path) -> dict[str, int]:
    if not (tmp / "store.db").exists():
        return {}
    with sqlite3.connect(tmp / "store.db", timeout=5) as db:
        return {d: int(n) for d, n in db.execute("SELECT device, count(*) FROM messages GROUP BY device")}


def stored(tmp: Path, device_name: str) -> list[tuple[int, float]]:
    """(seq, ts) of every message the gateway stored for a device, by seq."""
    with sqlite3.connect(tmp / "store.db") as db:
        return list(db.execute("SELECT seq, ts FROM messages WHERE device = ? ORDER BY seq", (device_name,)))


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
