"""Durable delivery end to end: samples stored per second at the gateway, beside the broker's own
message rate, on one broker in one run.

Anchor 1, the physical limit: ``mosquitto_pub -l`` into ``mosquitto_sub`` (MQTT 5, QoS 0) with the file
of single-sample telemetry envelopes of the ingest benchmark: messages / seconds from the publish start
to the last message received (the median of --anchor-rounds runs).

Ours: real device processes (``python -m edgekernel device run``) with sim streams; every stream packs
its samples into batched envelopes (``batch.max_samples`` N, ``batch.max_wait_ms`` T), commits them to
the device's outbox (default settings: synchronous FULL) and publishes them at QoS 1; the real gateway
process (default store settings unless --store-wait-ms) stores them and acknowledges, and the device
frees the rows. Two loads, each with a fresh gateway and fresh devices: the goal's (--headroom times
anchor 1's rate) and a light one (--light times it), spread over as many streams per device as keep
each stream within the config's 10,000 Hz. After a warm-up, over a fixed window: samples whose message
became visible in the gateway's store during the window / window seconds. The headline is the goal
load's figure. Goal: >= anchor 1's messages per second.

Latency of a sample, sensor read to stored: from the sample's ``ts`` (wall-clock time of its point on
the sim sensor's grid, from the store's ``samples`` table) to the moment this script, polling the store
read-only every --poll-ms, first sees its message's row, i.e. after the gateway's commit (which is also
when the gateway sends the acknowledgement). "Stored" is thus the commit time plus at most one poll
interval, an upper bound. Beside it, from the store's own columns: the wait in the device's batch
(envelope ``ts`` - sample ``ts``; it also holds any lag of a device whose event loop falls behind its
sensors' grid), device to gateway (``received_at`` - envelope ``ts``: outbox commit, publish, broker)
and gateway receive to visible commit (its inbox queue, batch wait, transaction). Also shown: the CPU
each program used during the window, read from /proc.

    .venv/bin/python bench/bench_delivery.py [--devices 2] [--headroom 1.1] [--light 0.5]
        [--batch 200] [--max-wait-ms 50] [--seconds 15] [--store-wait-ms MS] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sqlite3
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from common import (
    BENCH_FLEET,
    GatewayProcess,
    Received,
    anchor_clients,
    cpu_seconds,
    finish,
    start_program,
    stop_program,
    table,
    telemetry_lines,
)

from edgekernel.link.broker import Mosquitto
from edgekernel.protocol import topics


@dataclass(frozen=True, slots=True)
class Seen:
    """A stored message as the poller first saw it."""

    device: str
    seq: int
    observed: float
    ts: float
    received_at: float
    samples: int


class Poller:
    """Watches the gateway's store read-only and notes when each message's row first shows."""

    def __init__(self, store: Path, devices: list[str]) -> None:
        self.db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5.0)
        self.high = dict.fromkeys(devices, 0)
        self.seen: list[Seen] = []

    def poll(self) -> None:
        now = time.time()
        for device, high in self.high.items():
            rows = self.db.execute(
                "SELECT seq, ts, received_at, samples FROM messages "
                "WHERE device = ? AND seq > ? ORDER BY seq",
                (device, high),
            ).fetchall()
            for seq, ts, received_at, samples in rows:
                self.seen.append(Seen(device, seq, now, ts, received_at, samples))
            if rows:
                self.high[device] = rows[-1][0]

    def run(self, seconds: float, poll_s: float) -> tuple[float, float]:
        """Poll for `seconds`; the wall-clock window it covered."""
        self.poll()
        start = time.time()
        end = start + seconds
        while (now := time.time()) < end:
            self.poll()
            time.sleep(max(0.0, min(poll_s, end - now)))
        self.poll()
        return start, time.time()

    def close(self) -> None:
        self.db.close()


def device_config(
    workdir: Path, name: str, url: str, args: argparse.Namespace, *, seed: int, streams: int, rate_hz: float
) -> Path:
    batch = {"max_samples": args.batch, "max_wait_ms": args.max_wait_ms}
    sensors = [
        {
            "stream": f"s{k + 1}",
            "rate_hz": rate_hz,
            "batch": batch,
            "sim": {"kind": "vibration", "seed": seed + k},
        }
        for k in range(streams)
    ]
    settings = {"fleet": BENCH_FLEET, "device": name, "data_dir": str(workdir / name), "broker": {"url": url}}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**settings, "sensors": sensors}))
    return path


def scalar(path: Path, query: str) -> int:
    """One number from a stopped program's SQLite file (0 if there is no file)."""
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute(query).fetchone()[0] or 0)


def wait_all_storing(gateway: GatewayProcess, devices: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while any(gateway.count_messages([d]) == 0 for d in devices):
        if time.monotonic() > deadline:
            raise SystemExit(f"not every device had a message stored within {timeout}s")
        time.sleep(0.2)


@dataclass(frozen=True, slots=True)
class Phase:
    """One load level: what the store showed during the window, and what the programs counted."""

    streams: int  # per device
    rate_hz: float
    offered: float
    window: tuple[float, float]
    seen: list[Seen]
    lat: dict[str, np.ndarray]
    devices: dict[str, dict[str, int]]
    gateway: dict[str, int]
    held: int
    cores: dict[str, float]  # CPU used during the window, in cores, by program
    duplicates: int  # dropped by the gateway, from its store (its counters die with a killed gateway)

    def device_count(self, name: str) -> int:
        return sum(c.get(name, 0) for c in self.devices.values())

    @property
    def seconds(self) -> float:
        return self.window[1] - self.window[0]

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.seen)

    @property
    def rate(self) -> float:
        return self.samples / self.seconds

    def ms(self, part: str, q: float) -> float:
        values = self.lat[part]
        return float(np.percentile(values, q) * 1000) if values.size else float("nan")


def ours(workdir: Path, broker: Mosquitto, args: argparse.Namespace, load: float) -> Phase:
    """A fresh gateway and devices offering `load` samples/s; the store watched for the window."""
    workdir.mkdir()
    streams = math.ceil(load / (args.devices * MAX_STREAM_HZ))
    rate_hz = load / (args.devices * streams)
    store: dict[str, object] = {} if args.store_wait_ms is None else {"batch_wait_ms": args.store_wait_ms}
    gateway = GatewayProcess(workdir, broker.url, store=store)
    names = [f"dev-{i + 1:02d}" for i in range(args.devices)]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    device_counters: dict[str, dict[str, int]] = {}
    poller: Poller | None = None
    try:
        gateway.start(broker.port)
        for i, name in enumerate(names):
            config = device_config(
                workdir, name, broker.url, args, seed=100 * i, streams=streams, rate_hz=rate_hz
            )
            procs[name] = start_program("device", config, workdir / f"{name}.log")
        wait_all_storing(gateway, names)
        time.sleep(args.warmup)
        poller = Poller(gateway.store_path, names)
        pids: dict[str, list[int | None]] = {
            "gateway": [gateway.pid],
            "devices": [p.pid for p in procs.values()],
            "broker": [broker.pid],
        }
        before = {k: sum(cpu_seconds(pid) for pid in v) for k, v in pids.items()}
        window = poller.run(args.seconds, args.poll_ms / 1000)
        seconds = window[1] - window[0]
        cores = {k: (sum(cpu_seconds(pid) for pid in v) - before[k]) / seconds for k, v in pids.items()}
    finally:
        if poller is not None:
            poller.close()
        for name, proc in procs.items():
            device_counters[name] = stop_program(proc, workdir / f"{name}.log")
        gateway_counters = gateway.stop()
    seen = [s for s in poller.seen if window[0] < s.observed <= window[1]]
    return Phase(
        streams,
        rate_hz,
        args.devices * streams * rate_hz,
        window,
        seen,
        latencies(gateway.store_path, seen),
        device_counters,
        gateway_counters,
        sum(scalar(workdir / name / "outbox.db", "SELECT count(*) FROM messages") for name in names),
        cores,
        scalar(gateway.store_path, "SELECT sum(count) FROM duplicates"),
    )


def latencies(store: Path, seen: list[Seen]) -> dict[str, np.ndarray]:
    """Per sample of the messages seen in the window: read to stored, and its parts (seconds)."""
    by_key = {(s.device, s.seq): s for s in seen}
    parts: dict[str, list[np.ndarray]] = {"total": [], "batch": [], "link": [], "store": []}
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        for device in sorted({s.device for s in seen}):
            seqs = [s.seq for s in seen if s.device == device]
            rows = db.execute(
                "SELECT seq, ts FROM samples WHERE device = ? AND seq BETWEEN ? AND ?",
                (device, min(seqs), max(seqs)),
            ).fetchall()
            rows = [(seq, ts) for seq, ts in rows if (device, seq) in by_key]
            msgs = [by_key[(device, seq)] for seq, _ in rows]
            sample_ts = np.fromiter((ts for _, ts in rows), float, len(rows))
            observed = np.fromiter((m.observed for m in msgs), float, len(rows))
            envelope_ts = np.fromiter((m.ts for m in msgs), float, len(rows))
            received = np.fromiter((m.received_at for m in msgs), float, len(rows))
            parts["total"].append(observed - sample_ts)
            parts["batch"].append(envelope_ts - sample_ts)
            parts["link"].append(received - envelope_ts)
            parts["store"].append(observed - received)
    finally:
        db.close()
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


MAX_STREAM_HZ = 10_000  # SensorConfig.rate_hz's upper bound
PARTS = (
    ("total", "sensor read -> stored"),
    ("batch", "  waiting in the device's batch"),
    ("link", "  envelope -> gateway received"),
    ("store", "  gateway received -> stored"),
)


def phase_figures(phase: Phase, anchor_rate: float) -> dict[str, object]:
    return {
        "streams": phase.streams * len(phase.devices),
        "rate_hz": round(phase.rate_hz, 1),
        "offered_per_s": round(phase.offered),
        "samples_per_s": round(phase.rate),
        "messages_per_s": round(len(phase.seen) / phase.seconds),
        "over_anchor1": round(phase.rate / anchor_rate, 3),
        "stored_over_offered": round(phase.rate / phase.offered, 3),
        **{f"{key}_p50_ms": round(phase.ms(key, 50), 1) for key, _ in PARTS},
        **{f"{key}_p99_ms": round(phase.ms(key, 99), 1) for key, _ in PARTS},
        "samples_put": phase.device_count("samples_sent"),
        "device_resends": phase.device_count("outbox_resends"),
        "device_refused": phase.device_count("outbox_refused"),
        "held_unacked_at_device_stop": phase.held,
        "gateway_duplicates": phase.duplicates,
        "gateway_rejected": phase.gateway.get("rejected", 0),
        "gateway_stopped_cleanly": bool(phase.gateway),
        "cores_used": {k: round(v, 2) for k, v in phase.cores.items()},
    }


def report(
    anchors: list[Received], anchor_rate: float, phases: dict[str, Phase], args: argparse.Namespace
) -> None:
    rows: list[list[object]] = [
        [
            f"anchor 1 #{i + 1}: mosquitto_pub -l | mosquitto_sub, msg",
            a.received,
            a.rate,
            a.rate / anchor_rate,
        ]
        for i, a in enumerate(anchors)
    ]
    for name, p in phases.items():
        label = (
            f"ours at {name}: {args.devices} x {p.streams} streams x {p.rate_hz:.0f} Hz = {p.offered:.0f}/s"
        )
        rows.append([label, p.samples, p.rate, p.rate / anchor_rate])
    table(
        f"anchor: single-sample messages of {args.size:.0f} bytes, QoS 0; ours: samples stored, batch "
        f"{args.batch} / {args.max_wait_ms} ms, QoS 1 via the outbox, {args.seconds:g} s windows",
        ["path", "received / stored", "per s", "over anchor 1"],
        rows,
    )
    names = list(phases)
    table(
        f"latency of a sample, ms (stored = its row seen by a {args.poll_ms:g} ms poll of the store)",
        ["part"] + [f"{n} {q}" for n in names for q in ("p50", "p99")],
        [[label] + [phases[n].ms(key, q) for n in names for q in (50, 99)] for key, label in PARTS],
    )
    table(
        f"during the window (CPU in cores, of {os.cpu_count()})",
        ["", *names],
        [
            *([f"CPU: {k}"] + [phases[n].cores[k] for n in names] for k in phases[names[0]].cores),
            ["stored / offered"] + [f"{phases[n].rate / phases[n].offered:.0%}" for n in names],
            ["device resends (no ack for resend_after_s)"]
            + [phases[n].device_count("outbox_resends") for n in names],
            ["duplicates dropped by the gateway"] + [phases[n].duplicates for n in names],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000, help="anchor: single-sample messages")
    parser.add_argument("--anchor-rounds", type=int, default=3, help="anchor runs; the median counts")
    parser.add_argument("--devices", type=int, default=2, help="device processes")
    parser.add_argument("--headroom", type=float, default=1.1, help="goal load: this times anchor 1's rate")
    parser.add_argument("--light", type=float, default=0.5, help="light load: this times anchor 1's rate")
    parser.add_argument("--batch", type=int, default=200, help="batch.max_samples")
    parser.add_argument("--max-wait-ms", type=int, default=50, help="batch.max_wait_ms")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before each window")
    parser.add_argument("--seconds", type=float, default=15.0, help="each measured window")
    parser.add_argument("--store-wait-ms", type=int, help="gateway store.batch_wait_ms [its default]")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="how often the store is polled")
    parser.add_argument("--quick", action="store_true", help="one anchor run of 20,000, 3 + 8 s windows")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where stores and outboxes go")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.anchor_rounds, args.warmup, args.seconds = 20_000, 1, 3.0, 8.0
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-delivery-") as tmp:
        workdir = Path(tmp)
        topic = topics.telemetry(BENCH_FLEET, "dev-00", "vibration")
        lines = workdir / "anchor.jsonl"
        lines.write_bytes(telemetry_lines("dev-00", "vibration", args.messages))
        args.size = lines.stat().st_size / args.messages - 1
        with Mosquitto(workdir / "broker") as broker:
            anchors = [
                anchor_clients(broker.port, {topic: lines}, {topic: args.messages}, workdir / f"sub{i}.out")
                for i in range(args.anchor_rounds)
            ]
            anchor_rate = statistics.median(a.rate for a in anchors)
            phases = {
                f"{args.headroom:g}x anchor": ours(
                    workdir / "goal", broker, args, args.headroom * anchor_rate
                ),
                f"{args.light:g}x anchor": ours(workdir / "light", broker, args, args.light * anchor_rate),
            }
    report(anchors, anchor_rate, phases, args)
    goal, light = phases.values()
    ratio = goal.rate / anchor_rate
    print(
        f"ours / anchor 1 = {ratio:.2f} (goal >= 1.00); sensor read -> stored at {args.headroom:g}x anchor: "
        f"p50 {goal.ms('total', 50):.0f} ms, p99 {goal.ms('total', 99):.0f} ms; at {args.light:g}x: "
        f"p50 {light.ms('total', 50):.0f} ms, p99 {light.ms('total', 99):.0f} ms"
    )
    finish(
        "delivery",
        {
            "anchor_messages": args.messages,
            "anchor_size": round(args.size),
            "anchor1_per_s": round(anchor_rate),
            "anchor1_per_s_rounds": [round(a.rate) for a in anchors],
            "anchor1_loss": [round(a.loss, 4) for a in anchors],
            "devices": args.devices,
            "batch": args.batch,
            "max_wait_ms": args.max_wait_ms,
            "window_s": args.seconds,
            "store_wait_ms": args.store_wait_ms,
            "ours_samples_per_s": round(goal.rate),
            "ours_over_anchor1": round(ratio, 3),
            "goal_ours_over_anchor1": 1.0,
            "p50_ms": round(goal.ms("total", 50), 1),
            "p99_ms": round(goal.ms("total", 99), 1),
            "light_p50_ms": round(light.ms("total", 50), 1),
            "light_p99_ms": round(light.ms("total", 99), 1),
            "at_goal_load": phase_figures(goal, anchor_rate),
            "at_light_load": phase_figures(light, anchor_rate),
        },
    )


if __name__ == "__main__":
    main()
