"""Shared by the benchmarks: percentiles, a result table, and the closing JSON line."""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # the seeded datasets live in tools/, outside the installed package

console = Console(width=max(120, Console().width))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank on the sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
    }


def machine() -> dict[str, object]:
    flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
    simd = [f for f in wanted if f" {f}" in flags]
    return {
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "simd": simd,
    }


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        out.add_row(*(f"{cell:.3f}" if isinstance(cell, float) else str(cell) for cell in row))
    console.print(out)


def finish(name: str, figures: dict[str, object]) -> None:
    """The last line of every benchmark: one JSON object with its figures."""
    sys.stdout.flush()
    print(json.dumps({"bench": name, **figures, "machine": machine()}, separators=(",", ":")), flush=True)


def mlp_model(path: str, *, width: int, depth: int = 3, features: int = 256, seed: int = 0) -> str:
    """A dense ONNX model with a dynamic batch dimension, sized by `width` (the benchmarks' ~1 ms model)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    last, size = "x", features
    for layer in range(depth):
        out_size = features if layer == depth - 1 else width
        w = numpy_helper.from_array(
            (rng.standard_normal((size, out_size)) / np.sqrt(size)).astype(np.float32), f"w{layer}"
        )
        b = numpy_helper.from_array(np.zeros(out_size, np.float32), f"b{layer}")
        inits += [w, b]
        nodes.append(helper.make_node("Gemm", [last, f"w{layer}", f"b{layer}"], [f"h{layer}"]))
        nodes.append(helper.make_node("Relu", [f"h{layer}"], [f"r{layer}"]))
        last, size = f"r{layer}", out_size
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["batch", features])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


# -- MQTT benchmarks: telemetry lines, Mosquitto's own clients, a gateway process ----------------


BENCH_FLEET = "bench"
PROBE_DEVICE = "probe"
SUB_TIME_BYTES = 21  # "%U " in a mosquitto_sub line: 10 digits, a dot, 9 digits and a space


def telemetry_lines(device: str, stream: str, count: int, *, first_seq: int = 1) -> bytes:
    """`count` real single-sample telemetry envelopes (JSON), one a line, with seqs from `first_seq`."""
    from edgekernel.protocol import Sample, TelemetryBody, encode

    now = time.time()
    lines = []
    for i in range(count):
        ts = now + i * 1e-4
        body = TelemetryBody(stream=stream, unit="g", samples=[Sample(ts=ts, value=i % 97 / 7)])
        lines.append(encode(body.to_envelope(device, seq=first_seq + i, ts=ts)))
    return b"\n".join(lines) + b"\n"


def probe_until(port: int, seen: Callable[[], bool], *, timeout: float = 30.0) -> None:
    """Publish probe telemetry (device `PROBE_DEVICE`, QoS 0) until `seen()` says a consumer got one."""
    from edgekernel.protocol import topics

    topic = topics.telemetry(BENCH_FLEET, PROBE_DEVICE, "probe")
    deadline = time.monotonic() + timeout
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        payload = telemetry_lines(PROBE_DEVICE, "probe", 1, first_seq=seq).strip()
        argv = ["mosquitto_pub", "-p", str(port), "-V", "5", "-q", "0", "-t", topic, "-s"]
        subprocess.run(argv, input=payload, check=True, capture_output=True)
        for _ in range(10):
            if seen():
                return
            time.sleep(0.05)
    raise SystemExit(f"no consumer got a probe within {timeout}s")


def publish_files(port: int, files: dict[str, Path]) -> tuple[float, float]:
    """One ``mosquitto_pub -l`` (MQTT 5, QoS 0) per topic, all at once, each reading its file of lines.
    Returns the wall-clock start and how long the publishers took."""
    start = time.time()
    procs = []
    for topic, path in files.items():
        with open(path, "rb") as lines:
            argv = ["mosquitto_pub", "-p", str(port), "-V", "5", "-q", "0", "-t", topic, "-l"]
            procs.append(subprocess.Popen(argv, stdin=lines, stdout=subprocess.DEVNULL))
    for proc in procs:
        proc.wait()
    return start, time.time() - start


@dataclass(frozen=True, slots=True)
class Received:
    """What one consumer got of one publish run. `seconds` runs from the publish start (wall clock) to
    the last message received (or stored), so a consumer that falls behind pays for its backlog."""

    sent: int
    received: int
    start: float
    last: float
    publish_s: float
    cpu_s: float = float("nan")  # CPU the consumer's process used meanwhile (all its threads)

    @property
    def seconds(self) -> float:
        return max(self.last - self.start, 1e-9)

    @property
    def rate(self) -> float:
        return self.received / self.seconds

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0


def wait_progress(count: Callable[[], int], expected: int, *, idle_s: float, poll_s: float = 0.02) -> float:
    """Poll `count()` until it reaches `expected` or stops growing for `idle_s`; returns the wall-clock
    time it was last seen to grow."""
    last_value, last_change = count(), time.time()
    while last_value < expected:
        time.sleep(poll_s)
        value = count()
        if value != last_value:
            last_value, last_change = value, time.time()
        elif time.time() - last_change > idle_s:
            break
    return last_change


def anchor_clients(port: int, files: dict[str, Path], counts: dict[str, int], out: Path) -> Received:
    """Mosquitto's own C clients: ``mosquitto_pub -l`` into ``mosquitto_sub`` (MQTT 5, QoS 0), which
    writes each message's receive time (``%U``) and topic to `out`, so nothing is parsed while it runs."""
    sub_filter = f"ek/v1/{BENCH_FLEET}/#"
    with open(out, "wb") as sink:
        argv = ["mosquitto_sub", "-p", str(port), "-V", "5", "-q", "0", "-t", sub_filter, "-F", "%U %t"]
        sub = subprocess.Popen(argv, stdout=sink)
    try:
        probe_until(port, lambda: out.stat().st_size > 0)
        mark = out.stat().st_size
        cpu = cpu_seconds(sub.pid)
        start, publish_s = publish_files(port, files)
        expected = mark + sum(n * (SUB_TIME_BYTES + len(t) + 1) for t, n in counts.items())
        wait_progress(lambda: out.stat().st_size, expected, idle_s=2.0)
        cpu = cpu_seconds(sub.pid) - cpu
    finally:
        sub.terminate()
        sub.wait()
    wanted = {topic.encode() for topic in files}
    times = [
        float(at)
        for at, topic in (line.split(b" ", 1) for line in out.read_bytes().splitlines())
        if topic in wanted
    ]
    return Received(sum(counts.values()), len(times), start, max(times, default=start), publish_s, cpu)


def start_program(program: str, config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m edgekernel {program} run --config {config}``, logging to `log_path`."""
    argv = [sys.executable, "-m", "edgekernel", program, "run", "--config", str(config)]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "1000"},  # one log line per record
        )


def stop_program(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> dict[str, int]:
    """SIGTERM and wait; then the counters the program logs as it stops ("… stopped: {…}")."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    found = re.findall(r"stopped: (\{.*\})", log_path.read_text(errors="replace"))
    counters: dict[str, int] = ast.literal_eval(found[-1]) if found else {}
    return counters


class GatewayProcess:
    """``python -m edgekernel gateway run`` with its own config and store, stopped with SIGTERM."""

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        *,
        store: dict[str, object] | None = None,
        name: str = "gw-1",
        share_group: str | None = None,
        processes: int = 1,
    ) -> None:
        import yaml

        self.store_path = workdir / "gateway.db"
        self.log_path = workdir / f"{name}.log"
        config = workdir / f"{name}.yaml"
        settings: dict[str, object] = {
            "fleet": BENCH_FLEET,
            "gateway": name,
            "broker": {"url": broker_url},
            "store": {"path": str(self.store_path), **(store or {})},
        }
        if share_group is not None:
            settings["share_group"] = share_group
        self.processes = processes
        if processes != 1:
            settings["processes"] = processes
        config.write_text(yaml.safe_dump(settings))
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, port: int) -> None:
        """Start it and return once it has stored a probe (so it is subscribed)."""
        self.proc = start_program("gateway", self.config, self.log_path)
        probe_until(port, lambda: self.count_messages([PROBE_DEVICE]) > 0, timeout=60.0)

    def start_unprobed(self, timeout: float = 60.0) -> None:
        """Start it and return once each of its processes has logged its subscriptions (a probe
        reaches only one member of a share group)."""
        self.proc = start_program("gateway", self.config, self.log_path)
        deadline = time.monotonic() + timeout
        while (self.log_path.read_text() if self.log_path.exists() else "").count(
            "subscribed to"
        ) < self.processes:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the gateway did not subscribe; see {self.log_path}")
            time.sleep(0.05)

    def count_messages(self, devices: Sequence[str]) -> int:
        """Messages stored for these devices (read-only, beside the running gateway)."""
        if not self.store_path.exists():
            return 0
        marks = ",".join("?" * len(devices))
        query = f"SELECT count(*) FROM messages WHERE device IN ({marks})"
        try:
            db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=1.0)
            try:
                return int(db.execute(query, tuple(devices)).fetchone()[0])
            finally:
                db.close()
        except sqlite3.OperationalError:  # the gateway has not created its tables yet
            return 0

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM, then the gateway's own counters (none if it had to be killed: it stores all it has
        received before it exits, which takes long after an overload)."""
        return stop_program(self.proc, self.log_path, timeout) if self.proc is not None else {}

    def highest_seqs(self, devices: Sequence[str]) -> int:
        """The sum of each device's highest stored seq: cheap (the primary key), to watch progress."""
        if not self.store_path.exists():
            return 0
        try:
            db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=1.0)
            try:
                return sum(
                    int(db.execute("SELECT max(seq) FROM messages WHERE device = ?", (d,)).fetchone()[0] or 0)
                    for d in devices
                )
            finally:
                db.close()
        except sqlite3.OperationalError:
            return 0


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far, from /proc; 0 where that is not readable."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
