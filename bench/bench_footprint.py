"""Kernel idle footprint with the demo's agents loaded, and the time from start to online.

A real device process (``python -m edgekernel device run``) with the demo's sensors, one model (the
int8 vibration model) and the demo's agents: `pipeline` inline on the vibration stream, `monitor` as
a process agent. Measured: start → `…/status` online on the broker (retained, seen by
``mosquitto_sub``), then, once the agents run and the kernel has idled, RSS and PSS
(/proc/PID/smaps_rollup) of the kernel and of each agent process; and `import edgekernel.device.kernel`
in a fresh interpreter.

Anchor in the same run: the floor, a bare Python that imports ONNX Runtime and serves the same model
(one session, one run), measured the same way. Quoted anchors (not runnable here): Greengrass's Java
nucleus ≥ 96 MB, an Ankaios agent (Rust) 5.6 MB PSS. Goal: kernel ≤ 60 MB PSS, online ≤ 0.5 s.

    .venv/bin/python bench/bench_footprint.py [--rounds 3] [--idle 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import BENCH_FLEET, finish, start_program, stop_program, table

from edgekernel.link.broker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "vibration_cnn.int8.onnx"
DEVICE = "fp-1"
FLOOR = """
import sys, time
import numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
session.run(None, {session.get_inputs()[0].name: np.zeros((1, 128, 1), np.float32)})
print("ready", flush=True)
time.sleep(3600)
"""
IMPORT = (
    "import time; t = time.perf_counter(); import edgekernel.device.kernel; print(time.perf_counter() - t)"
)


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB from /proc/PID/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields["Rss"] / 1024, fields["Pss"] / 1024


def agent_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == pid and b"edgekernel.device.agents.child" in cmdline:
            found.append(int(entry.name))
    return found


def device_config(workdir: Path, url: str) -> Path:
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    sha = next(m["sha256"] for m in manifest["models"] if m["file"] == MODEL.name)
    settings = {
        "fleet": BENCH_FLEET,
        "device": DEVICE,
        "data_dir": str(workdir / "data"),
        "broker": {"url": url},
        "sensors": [
            {
                "stream": "vibration",
                "rate_hz": 50,
                "unit": "g",
                "batch": {"max_samples": 25, "max_wait_ms": 500},
                "sim": {"kind": "vibration", "seed": 1, "amplitude": 0.8, "frequency_hz": 12},
            },
            {
                "stream": "temperature",
                "rate_hz": 1,
                "unit": "degC",
                "sim": {"kind": "temperature", "seed": 2, "offset": 21.5},
            },
        ],
        "kernel": {
            "models": [
                {
                    "name": "vibration-anomaly",
                    "file": str(MODEL),
                    "sha256": sha,
                    "runtime": "onnx",
                    "memory_mb": 4,
                    "pinned": True,
                }
            ]
        },
        "agents": [
            {
                "name": "vibration-watch",
                "agent": "pipeline",
                "config": {"source": "vibration", "model": "vibration-anomaly", "window": 128, "hop": 64},
            },
            {"name": "health", "agent": "monitor", "isolation": "process", "config": {"interval_s": 1}},
        ],
    }
    path = workdir / f"{DEVICE}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def one_round(workdir: Path, broker: Mosquitto, idle_s: float) -> dict[str, float]:
    topic = f"ek/v1/{BENCH_FLEET}/{DEVICE}/status"
    out = workdir / "status.out"
    argv = ["mosquitto_sub", "-p", str(broker.port), "-V", "5", "-t", topic, "-F", "%U %p"]
    with open(out, "wb") as sink:
        sub = subprocess.Popen(argv, stdout=sink)
    time.sleep(0.5)  # subscribed before the device starts
    config = device_config(workdir, broker.url)
    log_path = workdir / "device.log"
    start = time.time()
    proc = start_program("device", config, log_path)
    try:
        online = wait_online(out, proc, log_path)
        deadline = time.monotonic() + 60
        while not agent_children(proc.pid) or "health: starting → running" not in log_path.read_text(
            errors="replace"
        ):
            if time.monotonic() > deadline:
                raise SystemExit(f"the process agent did not start; see {log_path}")
            time.sleep(0.1)
        time.sleep(idle_s)
        kernel_rss, kernel_pss = memory(proc.pid)
        agents = [memory(pid) for pid in agent_children(proc.pid)]
    finally:
        stop_program(proc, log_path)
        sub.terminate()
        sub.wait()
    return {
        "online_s": online - start,
        "kernel_rss_mb": kernel_rss,
        "kernel_pss_mb": kernel_pss,
        "agent_rss_mb": max(rss for rss, _ in agents),
        "agent_pss_mb": max(pss for _, pss in agents),
    }


def wait_online(out: Path, proc: subprocess.Popen[bytes], log_path: Path) -> float:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in out.read_bytes().splitlines():
            at, payload = line.split(b" ", 1)
            try:
                body = json.loads(payload).get("body", {})
            except ValueError:
                continue
            if body.get("online") is True:
                return float(at)
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    raise SystemExit(f"the device did not come online; see {log_path}")


def floor(workdir: Path, idle_s: float) -> tuple[float, float, float]:
    """A bare ONNX Runtime process serving the model: (seconds to ready, RSS, PSS)."""
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR, str(MODEL)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        ready = time.time() - start
        time.sleep(min(idle_s, 2.0))
        rss, pss = memory(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    return ready, rss, pss


def import_seconds() -> float:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT], capture_output=True, text=True, check=True, env=dict(os.environ)
    )
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idling before measuring")
    args = parser.parse_args()
    rounds: list[dict[str, float]] = []
    floors: list[tuple[float, float, float]] = []
    imports: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        for i in range(args.rounds):
            workdir = Path(tmp) / f"round{i}"
            workdir.mkdir()
            rounds.append(one_round(workdir, broker, args.idle))
            floors.append(floor(workdir, args.idle))
            imports.append(import_seconds())

    def span(key: str) -> str:
        values = [r[key] for r in rounds]
        return f"{min(values):.2f}–{max(values):.2f}"

    floor_pss = statistics.median(f[2] for f in floors)
    floor_rss = statistics.median(f[1] for f in floors)
    table(
        f"idle footprint, {args.rounds} rounds (min–max)",
        ["what", "ours", "anchor"],
        [
            [
                "start → online, s",
                span("online_s"),
                f"floor process ready: {statistics.median(f[0] for f in floors):.2f}",
            ],
            ["kernel RSS, MB", span("kernel_rss_mb"), f"floor: {floor_rss:.1f}; Greengrass nucleus ≥ 96"],
            ["kernel PSS, MB", span("kernel_pss_mb"), f"floor: {floor_pss:.1f}"],
            ["process agent RSS, MB", span("agent_rss_mb"), ""],
            ["process agent PSS, MB", span("agent_pss_mb"), "Ankaios agent: 5.6"],
            ["import edgekernel.device.kernel, s", f"{min(imports):.2f}–{max(imports):.2f}", ""],
        ],
    )
    pss = statistics.median(r["kernel_pss_mb"] for r in rounds)
    online = statistics.median(r["online_s"] for r in rounds)
    finish(
        "footprint",
        {
            "online_s": round(online, 3),
            "kernel_rss_mb": round(statistics.median(r["kernel_rss_mb"] for r in rounds), 1),
            "kernel_pss_mb": round(pss, 1),
            "agent_rss_mb": round(statistics.median(r["agent_rss_mb"] for r in rounds), 1),
            "agent_pss_mb": round(statistics.median(r["agent_pss_mb"] for r in rounds), 1),
            "floor_rss_mb": round(floor_rss, 1),
            "floor_pss_mb": round(floor_pss, 1),
            "import_s": round(statistics.median(imports), 3),
            "goal": "kernel PSS <= 60 MB, online <= 0.5 s",
            "met": pss <= 60 and online <= 0.5,
        },
    )


if __name__ == "__main__":
    main()
