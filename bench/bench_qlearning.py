"""Where to run inference under changing local load: the `qlearning` agent's learned policy against the
two static ones (always local, always offload), on the same load trace with bursts.

Two real device processes and a real Mosquitto: the *edge* device runs the `qlearning` agent, which
scores the latest 128 samples of its vibration stream with the project's vibration model every
`--interval` seconds under a `--deadline-ms` deadline, either on its own kernel or by CoAP
``POST /infer`` on the *neighbour* device; beside it, a load agent runs large batches of the same
model through the edge kernel's scheduler, following a repeating 20 s trace of bursts.

The learned policy first learns for `--learn` seconds (the stated learning period, from an empty Q
table). Then each policy runs one whole trace cycle on a newly started edge device, in turn, for
`--rounds` rounds, so that the machine's own load drifts over all three alike; the learned policy's
device keeps its Q table (in its agent state) from run to run, and goes on learning. Deadline misses
are counted over the same cycle of the trace for each. Goal: the learned policy misses at least
20 % fewer deadlines than the better static one.

    .venv/bin/python bench/bench_qlearning.py [--learn 40] [--rounds 2] [--deadline-ms 12] [--timeline]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from common import BENCH_FLEET, finish, start_program, stop_program, table
from qlearning_load import install

from edgekernel.link import Mosquitto, free_port
from edgekernel.link.coap import CoapClient, CoapError
from edgekernel.protocol import decode

MODELS = Path(__file__).resolve().parents[1] / "models"
MODEL_FILE = "vibration_cnn.int8.onnx"
# (seconds, busy loops of the load agent): one 20 s cycle, busy 45 % of the time at two intensities
TRACE = [(5.0, 0), (3.0, 4), (4.0, 0), (3.0, 2), (2.0, 0), (3.0, 4)]
POLICIES = ("local", "offload", "learn")


def model_spec() -> dict[str, object]:
    manifest = {m["file"]: m for m in json.loads((MODELS / "manifest.json").read_text())["models"]}
    return {
        "name": "vibration-anomaly",
        "file": str(MODELS / MODEL_FILE),
        "sha256": manifest[MODEL_FILE]["sha256"],
        "runtime": "onnx",
        "memory_mb": 16,
        "pinned": True,
    }


def device_settings(workdir: Path, name: str, broker_url: str, threads: int) -> dict[str, object]:
    return {
        "fleet": BENCH_FLEET,
        "device": name,
        "data_dir": str(workdir / name),
        "broker": {"url": broker_url},
        "outbox": {"resend_after_s": 3600, "synchronous": "NORMAL"},
        "kernel": {"threads": threads, "scheduler": {"workers": threads}, "models": [model_spec()]},
    }


def neighbour_config(workdir: Path, broker_url: str, port: int, threads: int) -> Path:
    settings = device_settings(workdir, "neighbour", broker_url, threads)
    settings["coap"] = {"host": "127.0.0.1", "port": port}
    path = workdir / "neighbour.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def edge_config(workdir: Path, broker_url: str, remote: str, policy: str, args: argparse.Namespace) -> Path:
    settings = device_settings(workdir, f"edge-{policy}", broker_url, args.threads)
    settings["sensors"] = [
        {
            "stream": "vibration",
            "rate_hz": 500,
            "best_effort": True,
            "batch": {"max_samples": 25, "max_wait_ms": 50},
            "sim": {"kind": "vibration", "seed": 3, "amplitude": 0.5, "frequency_hz": 40},
        }
    ]
    settings["agents"] = [
        {
            "name": "offload",
            "agent": "qlearning",
            "isolation": args.isolation,
            "config": {
                "source": "vibration",
                "model": "vibration-anomaly",
                "remote": remote,
                "interval_s": args.interval,
                "deadline_ms": args.deadline_ms,
                "policy": policy,
                "report_s": 1.0,
            },
        },
        {
            "name": "batch-load",
            "agent": "ek-bench-burst",
            "quotas": {"max_concurrent_infer": 64},
            "config": {"model": "vibration-anomaly", "batch": args.load_batch, "loops": 4, "trace": TRACE},
        },
    ]
    path = workdir / f"edge-{policy}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@dataclass(frozen=True, slots=True)
class Outcome:
    policy: str
    requests: int
    missed: int
    local: int
    offload: int
    latency_ms_mean: float

    @property
    def miss_rate(self) -> float:
        return self.missed / self.requests if self.requests else float("nan")


def read_stream(path: Path, stream: str) -> list[tuple[float, dict[str, float] | float]]:
    """(ts, value) of every sample of `stream` in a file of envelopes, one a line, without duplicates."""
    seen: set[int] = set()
    out: list[tuple[float, dict[str, float] | float]] = []
    for line in path.read_bytes().splitlines():
        envelope = decode(line)
        body = envelope.body
        if envelope.seq in seen or not isinstance(body, dict) or body.get("stream") != stream:
            continue
        if envelope.seq is not None:
            seen.add(envelope.seq)
        out += [(float(s["ts"]), s["value"]) for s in body["samples"]]
    return sorted(out, key=lambda item: item[0])


CYCLE_S = sum(seconds for seconds, _ in TRACE)
SKIP_S = 2.0  # the agents' first moments after the device starts (the trace's first phase is idle)


def run_edge(
    workdir: Path,
    broker: Mosquitto,
    remote: str,
    policy: str,
    *,
    seconds: float,
    tag: str,
    args: argparse.Namespace,
) -> tuple[float, list[tuple[float, dict[str, float]]], list[tuple[float, float]]]:
    """One edge device process with the agents for `seconds` of the trace: the trace's start (wall
    clock), the agent's reports and the load levels. The learned policy's device keeps its data
    directory, and with it the Q table, from one run to the next."""
    config = edge_config(workdir, broker.url, remote, policy, args)
    log = workdir / f"edge-{policy}.log"
    out = workdir / f"edge-{policy}-{tag}.out"
    topic = f"ek/v1/{BENCH_FLEET}/edge-{policy}/telemetry/+"
    with open(out, "wb") as sink:
        sub = subprocess.Popen(
            ["mosquitto_sub", "-p", str(broker.port), "-V", "5", "-q", "1", "-t", topic, "-F", "%p"],
            stdout=sink,
        )
    started = time.time()
    edge = start_program("device", config, log)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() or b"load-level" not in out.read_bytes():
            if time.monotonic() > deadline or edge.poll() is not None:
                raise SystemExit(f"the edge device never started its agents; see {log}")
            time.sleep(0.1)
        time.sleep(seconds + 1.5)
    finally:
        stop_program(edge, log)
        sub.terminate()
        sub.wait()
    # a restarted device resends what no gateway acknowledged before: only this run's samples count
    levels = [(ts, v) for ts, v in read_stream(out, "load-level") if isinstance(v, float) and ts >= started]
    reports = [
        (ts, v) for ts, v in read_stream(out, "offload-policy") if isinstance(v, dict) and ts >= started
    ]
    return levels[0][0], reports, levels


def measure(
    policy: str, t0: float, reports: list[tuple[float, dict[str, float]]], rounds: int = 1
) -> Outcome:
    """The counts over one trace cycle, from `SKIP_S` after the trace's start."""
    start, end = t0 + SKIP_S, t0 + SKIP_S + CYCLE_S
    first = next(v for ts, v in reports if ts >= start)
    last = next(v for ts, v in reports if ts >= end)
    spans = [v["latency_ms_mean"] for ts, v in reports if start < ts <= end and "latency_ms_mean" in v]

    def delta(key: str) -> int:
        return int(last[key] - first[key])

    return Outcome(
        policy,
        delta("requests"),
        delta("missed"),
        delta("local"),
        delta("offload"),
        sum(spans) / len(spans) if spans else float("nan"),
    )


def total(policy: str, outcomes: list[Outcome]) -> Outcome:
    mine = [o for o in outcomes if o.policy == policy]
    requests = sum(o.requests for o in mine)
    return Outcome(
        policy,
        requests,
        sum(o.missed for o in mine),
        sum(o.local for o in mine),
        sum(o.offload for o in mine),
        sum(o.latency_ms_mean * o.requests for o in mine) / requests if requests else float("nan"),
    )


def timeline(
    policy: str,
    levels: list[tuple[float, float]],
    reports: list[tuple[float, dict[str, float]]],
    t0: float,
) -> None:
    """Each report beside the load level then: what the policy chose and missed, second by second."""
    rows: list[list[object]] = []
    for (ts, now), (_, before) in zip(reports[1:], reports, strict=False):
        level = next((v for t, v in reversed(levels) if t <= ts - 0.5), 0.0)
        rows.append(
            [
                f"{ts - t0:7.1f}",
                level,
                int(now["local"] - before["local"]),
                int(now["offload"] - before["offload"]),
                int(now["missed"] - before["missed"]),
                int(now["errors"] - before["errors"]),
                now.get("latency_ms_mean", float("nan")),
                now.get("latency_ms_max", float("nan")),
                now["epsilon"],
            ]
        )
    table(
        policy, ["t s", "load", "local", "offload", "missed", "failed", "mean ms", "max ms", "epsilon"], rows
    )


def wait_serving(remote: str, timeout: float = 120.0) -> None:
    async def probe() -> None:
        async with CoapClient(timeout=2.0) as client:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await client.get(f"{remote}/health")
                    return
                except CoapError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"the neighbour never served CoAP on {remote}") from None
                    await asyncio.sleep(0.3)

    asyncio.run(probe())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--learn", type=float, default=40.0, help="learning period, seconds (2 trace cycles)")
    parser.add_argument("--rounds", type=int, default=2, help="trace cycles measured per policy, interleaved")
    parser.add_argument("--deadline-ms", type=float, default=12.0)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between the agent's requests")
    parser.add_argument("--load-batch", type=int, default=1024, help="windows in each load request")
    parser.add_argument("--isolation", choices=["inline", "process"], default="process")
    parser.add_argument(
        "--timeline", action="store_true", help="print each policy's reports, second by second"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="the edge kernel's thread budget (workers too)"
    )
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        install(workdir / "load")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(workdir / "load"), os.environ.get("PYTHONPATH", "")) if p
        )
        with Mosquitto(workdir / "broker") as broker:
            port = free_port()
            neighbour_log = workdir / "neighbour.log"
            neighbour = start_program(
                "device", neighbour_config(workdir, broker.url, port, args.threads), neighbour_log
            )
            remote = f"coap://127.0.0.1:{port}"
            try:
                wait_serving(remote)
                outcomes: list[Outcome] = []
                if "learn" in args.policies and args.learn > 0:
                    t0, reports, levels = run_edge(
                        workdir, broker, remote, "learn", seconds=args.learn, tag="learning", args=args
                    )
                    if args.timeline:
                        timeline("learn (learning period)", levels, reports, t0)
                for round_ in range(args.rounds):
                    for policy in args.policies:
                        t0, reports, levels = run_edge(
                            workdir,
                            broker,
                            remote,
                            policy,
                            seconds=SKIP_S + CYCLE_S,
                            tag=f"r{round_}",
                            args=args,
                        )
                        if args.timeline:
                            timeline(f"{policy}, round {round_ + 1}", levels, reports, t0)
                        outcomes.append(measure(policy, t0, reports))
            finally:
                stop_program(neighbour, neighbour_log)
    outcomes = [total(policy, outcomes) for policy in args.policies]
    report(outcomes, args)


def report(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    by = {o.policy: o for o in outcomes}
    table(
        f"deadline {args.deadline_ms:g} ms, a request every {args.interval * 1000:g} ms, "
        f"{args.rounds} x {CYCLE_S:g} s measured after {args.learn:g} s of learning, trace {TRACE} "
        "(s, busy load loops)",
        ["policy", "requests", "missed", "miss rate %", "local", "offload", "mean latency ms"],
        [
            [o.policy, o.requests, o.missed, 100 * o.miss_rate, o.local, o.offload, o.latency_ms_mean]
            for o in outcomes
        ],
    )
    figures: dict[str, object] = {f"{o.policy}_miss_rate": round(o.miss_rate, 4) for o in outcomes}
    statics = [by[p] for p in ("local", "offload") if p in by]
    if statics and "learn" in by:
        best = min(statics, key=lambda o: o.miss_rate)
        fewer = 1 - by["learn"].miss_rate / best.miss_rate if best.miss_rate > 0 else float("nan")
        figures.update(
            best_static=best.policy,
            fewer_misses=round(fewer, 4),
            goal=">= 0.20 fewer misses than the better static policy",
            met=bool(fewer >= 0.20),
        )
    figures.update(
        learn_s=args.learn,
        eval_s=args.rounds * CYCLE_S,
        deadline_ms=args.deadline_ms,
        isolation=args.isolation,
    )
    finish("qlearning", figures)


if __name__ == "__main__":
    sys.exit(main())
