"""Gateway ingest of single-sample telemetry at QoS 0, beside two anchors, on one broker in one run.

The same file of real telemetry envelopes (JSON, one a line, one sample each, seq 1..n per device) is
published by ``mosquitto_pub -l`` (MQTT 5, QoS 0, one publisher per device topic) to a private
Mosquitto, three times, each time with one consumer subscribed to ``ek/v1/bench/#``:

- anchor 1, the physical limit: ``mosquitto_sub`` (Mosquitto's C client), writing each message's
  receive time to a file;
- anchor 2, the ceiling of a Python consumer: a bare paho-mqtt 2 client (MQTT 5) in its own process
  that only counts;
- ours: the real gateway (``python -m edgekernel gateway run``, default store settings), which
  decodes, validates, deduplicates and stores every message in its SQLite file. It counts when the
  message's row is committed (read from the store).

Rate, the same for all three: messages received (stored, for ours) / seconds from the publish start
to the last message received (stored), both wall-clock times. A consumer that cannot keep up pays for
the backlog it drains after the publishers are done. QoS 0 may drop under load: each row shows
received vs sent. Each consumer's CPU per message (its process, all threads, from /proc or its own
clock) is shown too: unlike a rate, it hardly moves when other work shares the cores.

A round runs the three one after the other on a fresh broker; --rounds rounds, medians reported.
Goal: ours >= 70 % of anchor 2. A fourth run has ``processes: 2`` in the gateway's config: two
processes in one share group (``$share/gw-1/…``) writing one store, which puts ingest on two cores.

    .venv/bin/python bench/bench_ingest.py [--messages 100000] [--devices 1] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    BENCH_FLEET,
    GatewayProcess,
    Received,
    anchor_clients,
    cpu_seconds,
    finish,
    publish_files,
    table,
    telemetry_lines,
    wait_progress,
)

from edgekernel.link.broker import Mosquitto
from edgekernel.protocol import topics

IDLE_S = 5.0  # a consumer that gets nothing for this long after the last one it got is done


def paho_counter(port: int, expect: int) -> None:
    """The anchor-2 consumer (run in a child process): count messages, print when subscribed and when
    done (everything arrived, or nothing more for IDLE_S)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    state = {"count": 0, "last": 0.0}

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        state["count"] += 1
        state["last"] = time.time()

    def on_subscribe(*_: object) -> None:
        print("ready", flush=True)  # the process has been idle since; its CPU is counted from here

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, *_: c.subscribe(f"ek/v1/{BENCH_FLEET}/#", qos=0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    cpu = time.process_time()
    wait_progress(lambda: min(int(state["count"]), 1), 1, idle_s=60.0, poll_s=0.01)  # the first one
    wait_progress(lambda: int(state["count"]), expect, idle_s=IDLE_S, poll_s=0.05)
    cpu = time.process_time() - cpu
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"received": state["count"], "last": state["last"], "cpu": cpu}), flush=True)


def anchor_paho(port: int, files: dict[str, Path], counts: dict[str, int]) -> Received:
    argv = [sys.executable, __file__, "--paho-counter", str(port), "--expect", str(sum(counts.values()))]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise SystemExit("the paho counter did not subscribe")
    start, publish_s = publish_files(port, files)
    result = json.loads(child.stdout.readline())
    child.wait()
    received, last, cpu = result["received"], result["last"], result["cpu"]
    return Received(sum(counts.values()), received, start, last, publish_s, cpu)


def ours(
    workdir: Path, broker: Mosquitto, files: dict[str, Path], counts: dict[str, int], processes: int = 1
) -> tuple[Received, dict[str, int]]:
    """The gateway as a process; with `processes` above 1, that many in one share group writing one
    store (the way to put ingest on more than one core), followed by their row count, since they store
    out of order between them; one gateway is followed by its highest seq, which is cheaper."""
    gateway = GatewayProcess(workdir, broker.url, processes=processes)
    devices = [topics.parse(topic).device for topic in files]
    progress = gateway.highest_seqs if processes == 1 else gateway.count_messages
    try:
        if processes == 1:
            gateway.start(broker.port)
        else:
            gateway.start_unprobed()
            time.sleep(0.5)  # the members have just subscribed: let the broker settle its share group
        cpu = process_tree_cpu(gateway.pid)
        start, publish_s = publish_files(broker.port, files)
        last = wait_progress(lambda: progress(devices), sum(counts.values()), idle_s=IDLE_S, poll_s=0.05)
        cpu = process_tree_cpu(gateway.pid) - cpu
        stored = gateway.count_messages(devices)
    finally:
        counters = gateway.stop()
    return Received(sum(counts.values()), stored, start, last, publish_s, cpu), counters


def process_tree_cpu(pid: int | None) -> float:
    """CPU seconds of a process and its children (the gateway's members)."""
    if pid is None:
        return 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(k) for k in children.read_text().split()] if children.exists() else []
    return cpu_seconds(pid) + sum(cpu_seconds(kid) for kid in kids)


GATEWAY_COUNTERS = ("received", "stored", "duplicates", "rejected")  # its own, probes included
CONSUMERS = {
    "anchor1": "anchor 1: mosquitto_sub (C)",
    "anchor2": "anchor 2: paho-mqtt 2, counts only",
    "ours": "ours: gateway, validated and stored",
    "ours_shared": "ours: gateway with processes: 2",
}


def one_round(
    workdir: Path, files: dict[str, Path], counts: dict[str, int]
) -> tuple[dict[str, Received], dict[str, int]]:
    """The three consumers, one after the other, each alone on a fresh broker; and the gateway's
    own counters."""
    with Mosquitto(workdir / "broker") as broker:
        first = anchor_clients(broker.port, files, counts, workdir / "sub.out")
        second = anchor_paho(broker.port, files, counts)
        ours_run, counters = ours(workdir / "one", broker, files, counts)
        shared, _ = ours(workdir / "shared", broker, files, counts, processes=2)
    return {"anchor1": first, "anchor2": second, "ours": ours_run, "ours_shared": shared}, counters


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000, help="messages per consumer and round")
    parser.add_argument("--devices", type=int, default=1, help="devices (one publisher and topic each)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all three; medians are reported")
    parser.add_argument("--quick", action="store_true", help="one round of 20,000 messages")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where the store goes (a real disk)")
    parser.add_argument("--paho-counter", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paho_counter is not None:
        paho_counter(args.paho_counter, args.expect)
        return
    messages, rounds = (20_000, 1) if args.quick else (args.messages, args.rounds)
    share, extra = divmod(messages, args.devices)
    runs: list[dict[str, Received]] = []
    gateway_counters = dict.fromkeys(GATEWAY_COUNTERS, 0)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        files: dict[str, Path] = {}
        counts: dict[str, int] = {}
        for i in range(args.devices):
            device, count = f"dev-{i + 1:02d}", share + (i < extra)
            topic = topics.telemetry(BENCH_FLEET, device, "vibration")
            files[topic] = workdir / f"{device}.jsonl"
            files[topic].write_bytes(telemetry_lines(device, "vibration", count))
            counts[topic] = count
        size = sum(p.stat().st_size for p in files.values()) / messages - 1
        for number in range(rounds):
            for sub in ("one", "shared"):
                (workdir / f"round-{number}" / sub).mkdir(parents=True)
            run, counters = one_round(workdir / f"round-{number}", files, counts)
            runs.append(run)
            for key in GATEWAY_COUNTERS:
                gateway_counters[key] += counters.get(key, 0)
    rows: list[list[object]] = []
    medians: dict[str, float] = {}
    for key, name in CONSUMERS.items():
        rates = [run[key].rate for run in runs]
        medians[key] = statistics.median(rates)
        for number, run in enumerate(runs):
            r = run[key]
            per_msg = r.cpu_s / max(r.received, 1) * 1e6
            rows.append(
                [f"{name} #{number + 1}", r.sent, r.received, f"{r.loss:.2%}", r.seconds, r.rate, per_msg]
            )
    table(
        f"{messages} single-sample telemetry messages of {size:.0f} bytes, QoS 0, {args.devices} device(s), "
        f"{rounds} round(s); msg/s = received (stored) / publish start to last received (stored)",
        ["consumer, round", "sent", "received", "loss", "to last s", "msg/s", "CPU us/msg"],
        rows,
    )
    ratio2, ratio1 = medians["ours"] / medians["anchor2"], medians["ours"] / medians["anchor1"]
    round_ratio2 = statistics.median(run["ours"].rate / run["anchor2"].rate for run in runs)
    cpu_us = {
        k: statistics.median(run[k].cpu_s / max(run[k].received, 1) * 1e6 for run in runs) for k in runs[0]
    }
    publish_s = statistics.median(run[k].publish_s for run in runs for k in run)
    table(
        "medians over the rounds",
        ["figure", "value"],
        [
            ["anchor 1 msg/s", round(medians["anchor1"])],
            ["anchor 2 msg/s", round(medians["anchor2"])],
            ["ours msg/s", round(medians["ours"])],
            ["ours / anchor 2 (goal >= 0.70)", ratio2],
            ["ours, processes: 2, msg/s", round(medians["ours_shared"])],
            ["ours, processes: 2 / anchor 2", medians["ours_shared"] / medians["anchor2"]],
            ["ours / anchor 1", ratio1],
            ["ours / anchor 2, median of the rounds' ratios", round_ratio2],
            ["consumer CPU us/msg: anchor 1, anchor 2, ours", " / ".join(f"{cpu_us[k]:.1f}" for k in cpu_us)],
            ["mosquitto_pub -l: seconds to publish all", publish_s],
        ],
    )
    figures: dict[str, object] = {"messages": messages, "devices": args.devices, "size": round(size)}
    figures["rounds"] = rounds
    for key in CONSUMERS:
        figures[f"{key}_per_s"] = round(medians[key])
        figures[f"{key}_per_s_rounds"] = [round(run[key].rate) for run in runs]
        figures[f"{key}_received"] = [run[key].received for run in runs]
    figures |= {
        "ours_over_anchor2": round(ratio2, 3),
        "ours_over_anchor1": round(ratio1, 3),
        "processes2_over_anchor2": round(medians["ours_shared"] / medians["anchor2"], 3),
        "ours_over_anchor2_rounds": [round(run["ours"].rate / run["anchor2"].rate, 3) for run in runs],
        "ours_over_anchor2_median_of_rounds": round(round_ratio2, 3),
        "cpu_us_per_msg": {k: round(v, 1) for k, v in cpu_us.items()},
        "publish_s": round(publish_s, 3),
        "goal_ours_over_anchor2": 0.70,
        "gateway_counters": gateway_counters,
    }
    finish("ingest", figures)


if __name__ == "__main__":
    main()
