"""`edgekernel demo`: a private Mosquitto, a gateway and N simulated devices, as separate processes."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.live import Live
from rich.table import Table

from edgekernel.cli.common import Exit, console, err_console, fail
from edgekernel.config import ConfigError, load_device, load_gateway
from edgekernel.errors import EdgeKernelError
from edgekernel.lifeline import child_env

if TYPE_CHECKING:
    from edgekernel.gateway import DeviceSummary

# The gateway and link modules load when the demo runs, not with every `edgekernel --help`.

FLEET = "demo"
GATEWAY = "gw-1"


def device_config(index: int, data_root: Path) -> dict[str, Any]:
    name = f"dev-{index:02d}"
    kernel = kernel_config()
    return {
        "fleet": FLEET,
        "device": name,
        "data_dir": str(data_root / name),
        "labels": {"site": ("lab", "plant", "yard")[index % 3], "role": "demo"},
        "reported_interval_s": 10,
        **kernel,
        "sensors": [vibration_sensor(index), temperature_sensor(index)],
        "agents": demo_agents(with_model=bool(kernel), monitor_process=index == 1),
    }


# The vibration model was trained on 128-sample windows of a 1 kHz accelerometer (in g) on a machine
# whose shaft turns at 20-60 Hz (tools/datasets.py), so the sensors sample at 1 kHz. The raw samples
# stay on the device (`publish: false`): vibration-watch turns them into 8 scores a second, and only
# those and its events go to the broker (five devices' raw streams would cost the gateway 2 GB an hour).
VIBRATION_RATE_HZ = 1000.0


def vibration_sensor(index: int) -> dict[str, Any]:
    """Odd devices watch a faulty machine: a fault of one kind (bearing, misalignment, rubbing) starts
    now and then and lasts half a second. Even ones watch a healthy machine."""
    faulty = index % 2 == 1
    return {
        "stream": "vibration",
        "rate_hz": VIBRATION_RATE_HZ,
        "unit": "g",
        "publish": False,
        "sim": {
            "kind": "vibration",
            "seed": index,
            "amplitude": (0.8, 1.0, 1.2)[index % 3],
            "frequency_hz": 25.0 + 5.0 * (index % 5),
            "noise": 0.05,
            "anomaly_rate": ANOMALY_RATE if faulty else 0.0,
            "anomaly_kind": FAULTS[(index // 2) % len(FAULTS)],
        },
    }


ANOMALY_RATE = 2e-5  # per sample: a fault about every 50 s at 1 kHz
FAULTS = ("bearing", "misalignment", "burst")  # dev-01, dev-03, dev-05, dev-07…


def temperature_sensor(index: int) -> dict[str, Any]:
    return {
        "stream": "temperature",
        "rate_hz": 1,
        "unit": "degC",
        "batch": {"max_samples": 1, "max_wait_ms": 0},
        "sim": {
            "kind": "temperature",
            "seed": 1000 + index,
            "offset": 21.0 + index,
            "amplitude": 4.0,
            "noise": 0.1,
        },
    }


def demo_agents(*, with_model: bool, monitor_process: bool) -> list[dict[str, Any]]:
    """`vibration-watch` scores every 128-sample window with the anomaly model and raises `anomaly`
    events; `system-monitor` reports the box's health as the `system` stream, in a child process
    where `monitor_process` (one such process per device costs about 90 MB). dev-01's are the specs
    in firmware-config/agents/."""
    monitor: dict[str, Any] = {
        "name": "system-monitor",
        "agent": "monitor",
        "isolation": "process" if monitor_process else "inline",
        "restart": "always",
        "quotas": {"publish_rate": 1, "memory_mb": 256},
        "config": {"interval_s": 10, "output": "system", "disk": "/"},
    }
    if not with_model:
        return [monitor]
    watch = {
        "name": "vibration-watch",
        "agent": "pipeline",
        "quotas": {"max_concurrent_infer": 4, "infer_rate": 50, "publish_rate": 50},
        "config": {
            "source": "vibration",
            "model": "vibration-anomaly",
            "window": 128,
            "hop": 128,
            "features": "raw",
            "score_index": 1,
            "on": 0.9,
            "off": 0.5,
            "output": "anomaly-score",
            "event": "anomaly",
            "deadline_ms": 500,
        },
    }
    return [watch, monitor]


def kernel_config() -> dict[str, Any]:
    """The vibration anomaly model from the checkout's models/, when it is there."""
    models = Path(__file__).resolve().parents[2] / "models"
    try:
        manifest = json.loads((models / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    entry = next((m for m in manifest.get("models", []) if m.get("file") == "vibration_cnn.int8.onnx"), None)
    if entry is None:
        return {}
    model = {
        "name": "vibration-anomaly",
        "file": str(models / entry["file"]),
        "sha256": entry["sha256"],
        "runtime": "onnx",
        "memory_mb": 4,
        "pinned": True,
    }
    return {"kernel": {"memory_budget_mb": 64, "models": [model]}}


def gateway_config(data_root: Path, coap_port: int) -> dict[str, Any]:
    return {
        "fleet": FLEET,
        "gateway": GATEWAY,
        "store": {"path": str(data_root / GATEWAY / "store.db")},
        "coap": {"host": "127.0.0.1", "port": coap_port},
    }


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=child_env(),
            )

    @property
    def state(self) -> str:
        if self.proc is None:
            return "not started"
        code = self.proc.poll()
        if code is None:
            return "running"
        return f"exited ({code})" if code >= 0 else f"killed ({signal.Signals(-code).name})"

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Demo:
    def __init__(self, workdir: Path, devices: int, port: int | None) -> None:
        self.workdir = workdir
        self.config_dir = workdir / "config"
        self.data_dir = workdir / "data"
        self.logs = workdir / "logs"
        from edgekernel.link import Mosquitto, free_port  # noqa: PLC0415 (keeps `--help` fast)

        self.broker = Mosquitto(workdir / "broker", port=port, persistence=True)
        self.store_path = self.data_dir / GATEWAY / "store.db"
        self.key_path = workdir / "keys" / "fleet.key"
        self.public_key_path = workdir / "keys" / "fleet.pub"
        self.device_names = [f"dev-{i:02d}" for i in range(1, devices + 1)]
        self.children: dict[str, Child] = {}
        self.gateway_coap_port = free_port()
        self.device_coap_port = free_port()
        # the first device also serves CoAP; the last of two or more talks to the gateway over CoAP only
        self.coap_only = self.device_names[-1] if devices >= 2 else None
        # a fault injected into a healthy machine (an even device on MQTT: commands come that way)
        healthy = [name for name in self.device_names[1::2] if name != self.coap_only]
        self.inject_target = healthy[0] if healthy else self.device_names[0]

    def write_key(self) -> None:
        """The fleet's signing key (kept from an earlier run in the same workdir): the devices trust
        its public half, and fleet.yaml names the private one, so `fleet call` works at once."""
        from edgekernel.protocol import FleetKey  # noqa: PLC0415 (keeps `--help` fast)

        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        if self.key_path.exists():
            key = FleetKey.load(self.key_path)
        else:
            key = FleetKey.generate()
            key.save(self.key_path)
        self.public_key_path.write_bytes(key.public_pem())

    def write_configs(self) -> None:
        self.write_key()
        (self.config_dir / "devices").mkdir(parents=True, exist_ok=True)
        (self.config_dir / "gateways").mkdir(parents=True, exist_ok=True)
        fleet = {
            "fleet": FLEET,
            "name": "edgekernel demo",
            "broker": {"url": self.broker.url},
            "signing_key": str(self.key_path),
        }
        (self.config_dir / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
        gw_path = self.config_dir / "gateways" / f"{GATEWAY}.yaml"
        gw_path.write_text(
            yaml.safe_dump(gateway_config(self.data_dir, self.gateway_coap_port), sort_keys=False)
        )
        load_gateway(gw_path)
        for index, name in enumerate(self.device_names, start=1):
            config = device_config(index, self.data_dir)
            config["fleet_keys"] = [str(self.public_key_path)]
            if index == 1:
                config["coap"] = {"host": "127.0.0.1", "port": self.device_coap_port}
            if name == self.coap_only:
                gateway_url = f"coap://127.0.0.1:{self.gateway_coap_port}"
                config["coap"] = {"serve": False, "gateway_url": gateway_url}
            path = self.config_dir / "devices" / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            load_device(path)

    def _argv(self, program: str, config: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "edgekernel",
            program,
            "run",
            "--config",
            str(config),
            "--broker",
            self.broker.url,
        ]

    def start(self) -> None:
        self.broker.start()
        self.write_configs()
        gateway = Child(
            GATEWAY,
            self._argv("gateway", self.config_dir / "gateways" / f"{GATEWAY}.yaml"),
            self.logs / f"{GATEWAY}.log",
        )
        self.children[GATEWAY] = gateway
        gateway.start()
        for name in self.device_names:
            child = Child(
                name,
                self._argv("device", self.config_dir / "devices" / f"{name}.yaml"),
                self.logs / f"{name}.log",
            )
            self.children[name] = child
            child.start()
        self.write_run_file()

    def write_run_file(self) -> None:
        info = {
            "fleet": FLEET,
            "broker_url": self.broker.url,
            "broker_port": self.broker.port,
            "broker_pid": self.broker.pid,
            "store": str(self.store_path),
            "config_dir": str(self.config_dir),
            "pids": {name: child.proc.pid for name, child in self.children.items() if child.proc},
            "demo_pid": os.getpid(),
        }
        tmp = self.workdir / "run.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(self.workdir / "run.json")

    def stop(self, timeout: float = 10.0) -> None:
        """Devices first (they say goodbye through the broker), then the gateway, then the broker."""
        devices = [c for name, c in self.children.items() if name != GATEWAY]
        for group in (devices, [c for name, c in self.children.items() if name == GATEWAY]):
            for child in group:
                child.terminate()
            deadline = time.monotonic() + timeout
            for child in group:
                child.wait(deadline - time.monotonic())
        self.broker.stop()

    def summary(self) -> dict[str, DeviceSummary]:
        from edgekernel.gateway import StoreError, read_summary  # noqa: PLC0415 (keeps `--help` fast)

        if not self.store_path.exists():
            return {}
        try:
            return {s.device: s for s in read_summary(self.store_path)}
        except StoreError:
            return {}

    def table(self, started: float) -> Table:
        stored = self.summary()
        table = Table(title=f"edgekernel demo — {time.monotonic() - started:.0f}s", title_justify="left")
        for column in ("process", "state", "status", "messages stored", "samples stored", "highest seq"):
            table.add_column(column, justify="right" if "stored" in column or "seq" in column else "left")
        for name, child in self.children.items():
            row = stored.get(name)
            status = "-" if row is None or row.online is None else ("online" if row.online else "offline")
            table.add_row(
                name,
                child.state,
                status,
                str(row.messages) if row else "-",
                str(row.samples) if row else "-",
                str(row.highest_seq) if row and row.highest_seq is not None else "-",
            )
        return table


def _banner(demo: Demo) -> None:
    port = demo.broker.port
    print_line = functools.partial(console.print, soft_wrap=True, highlight=False)
    print_line(
        f"[bold]edgekernel demo[/]: fleet [cyan]{FLEET}[/], {len(demo.device_names)} devices, "
        f"gateway {GATEWAY}"
    )
    print_line(f"  broker      {demo.broker.url}  (port [bold]{port}[/])")
    print_line(f"  watch       mosquitto_sub -h 127.0.0.1 -p {port} -t 'ek/v1/#' -v")
    print_line(f"  anomalies   mosquitto_sub -h 127.0.0.1 -p {port} -t 'ek/v1/{FLEET}/+/events/anomaly' -v")
    print_line(f"  agents      mosquitto_sub -h 127.0.0.1 -p {port} -t 'ek/v1/{FLEET}/+/events/agent' -v")
    print_line(f"  decoded     edgekernel topics watch 'ek/v1/#' --broker {demo.broker.url}")
    print_line(f"  devices     edgekernel fleet devices --broker {demo.broker.url} --fleet {FLEET}")
    fleet_yaml = demo.config_dir / "fleet.yaml"
    first = demo.device_names[0]
    print_line(f"  call        edgekernel fleet call {first} ping --config {fleet_yaml}")
    print_line(f"  stats       edgekernel device stats {first} --config {fleet_yaml}")
    print_line(
        f"  inject      edgekernel fleet call {demo.inject_target} inject-anomaly stream=vibration "
        f"kind=misalignment duration_s=2 --config {fleet_yaml}"
    )
    coap = f"coap://127.0.0.1:{demo.device_coap_port}"
    print_line(f"  coap        aiocoap-client {coap}/.well-known/core  ({demo.device_names[0]})")
    if demo.coap_only is not None:
        ingest = f"coap://127.0.0.1:{demo.gateway_coap_port}/ingest"
        print_line(f"  coap-only   {demo.coap_only} posts to the gateway's {ingest}")
    print_line(f"  workdir     {demo.workdir}  (configs, logs, the gateway's store.db)")
    print_line("  stop        Ctrl-C")
    sys.stdout.flush()  # the lines to copy come out at once, also into a pipe


def demo(
    devices: Annotated[int, typer.Option("--devices", "-n", min=1, max=200, help="How many devices.")] = 5,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=0.0, help="Stop after this many seconds.", show_default=False),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="Broker port.", show_default="a free one"),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            help="Where to keep configs, logs and data.",
            show_default="a new temp dir",
        ),
    ] = None,
) -> None:
    """Start a private Mosquitto, a gateway and N simulated devices that publish telemetry."""
    from edgekernel.link import BrokerError, find_mosquitto  # noqa: PLC0415 (keeps `--help` fast)

    try:
        find_mosquitto()
    except BrokerError as err:
        fail(str(err), Exit.MISSING)
    root = workdir or Path(tempfile.mkdtemp(prefix="edgekernel-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    runner = Demo(root.resolve(), devices, port)
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in stop_signals}
    started = time.monotonic()
    try:
        runner.start()
        _banner(runner)
        _run(runner, started, duration)
    except BrokerError as err:
        fail(str(err), Exit.FAILED)
    except ConfigError as err:
        fail(f"generated config does not validate (a bug): {err}")
    except (OSError, EdgeKernelError) as err:
        fail(f"cannot set the demo up in {root}: {err}")
    finally:
        for sig in stop_signals:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean stop short
        totals = runner.summary()
        runner.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print(runner.table(started))
    missing = [name for name in runner.device_names if name not in totals or totals[name].samples == 0]
    if missing:
        err_console.print(f"[red]no samples stored from {', '.join(missing)}[/]; see {runner.logs}")
        raise typer.Exit(int(Exit.FAILED))


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _keep_running(runner: Demo, deadline: float | None) -> bool:
    time.sleep(0.5)
    if not runner.broker.running:
        err_console.print("[red]the broker exited[/]")
        return False
    return deadline is None or time.monotonic() < deadline


def _run(runner: Demo, started: float, duration: float | None) -> None:
    deadline = None if duration is None else started + duration
    try:
        if console.is_terminal:
            with Live(runner.table(started), console=console, transient=True, auto_refresh=False) as live:
                while _keep_running(runner, deadline):
                    live.update(runner.table(started), refresh=True)
        else:
            last = started
            while _keep_running(runner, deadline):
                if time.monotonic() - last >= 10:
                    last = time.monotonic()
                    totals = runner.summary()
                    stored = sum(s.samples for s in totals.values())
                    console.print(
                        f"{last - started:.0f}s: {stored} samples stored from {len(totals)} devices"
                    )
    except KeyboardInterrupt:
        pass
