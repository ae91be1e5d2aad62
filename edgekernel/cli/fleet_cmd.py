"""`edgekernel fleet …`: look at the fleet as the broker's retained topics describe it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import JsonValue
from rich.text import Text

from edgekernel.cli.common import BROKER_OPTION_HELP, Exit, console, err_console, fail
from edgekernel.cli.tables import Column, key_values, print_fitted
from edgekernel.config import BrokerConfig, ConfigError, load_fleet
from edgekernel.protocol import topics

if TYPE_CHECKING:
    from edgekernel.fleet import DeviceView

# The fleet and link modules (paho-mqtt) load when a command runs, not with every `edgekernel --help`.

app = typer.Typer(help="See and steer the fleet.", no_args_is_help=True)

DEFAULT_FLEET_CONFIG = Path("firmware-config/fleet.yaml")


def resolve_target(config: Path | None, broker: str | None, fleet: str | None) -> tuple[BrokerConfig, str]:
    """The broker and fleet id: the fleet config file (given, or found in the current folder), with
    --broker and --fleet overriding what it says."""
    path = config if config is not None else DEFAULT_FLEET_CONFIG
    base, fleet_id = BrokerConfig(), fleet
    if config is not None or path.exists():
        try:
            cfg = load_fleet(path)
        except ConfigError as err:
            fail(str(err))
        base, fleet_id = cfg.broker, fleet or cfg.fleet
    if fleet_id is None:
        fail(f"give --fleet (or a fleet config with --config; {DEFAULT_FLEET_CONFIG} not found)", Exit.USAGE)
    if not topics.is_id(fleet_id):
        fail(f"fleet id {fleet_id!r} is not an id (1-63 of a-z 0-9 _ -)", Exit.USAGE)
    try:
        return (base.with_url(broker) if broker else base), fleet_id
    except ValueError as err:
        fail(str(err), Exit.USAGE)


def _age(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    seconds = max(0.0, now - ts)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device: str
    online: bool | None
    boot: int | None
    last_seen: float | None
    cores: int | None
    ram_bytes: int | None
    runtimes: dict[str, str]
    onnx_providers: list[str]
    accelerators: list[str]
    streams: list[str]
    labels: dict[str, str]
    models: list[str]

    @classmethod
    def of(cls, view: DeviceView) -> DeviceRow:
        rep = view.reported
        caps = rep.capabilities if rep else None
        return cls(
            device=view.device,
            online=view.online,
            boot=view.boot,
            last_seen=view.last_seen,
            cores=caps.cores if caps else None,
            ram_bytes=caps.ram_bytes if caps else None,
            runtimes=dict(caps.runtimes) if caps else {},
            onnx_providers=list(caps.onnx_providers) if caps else [],
            accelerators=list(caps.accelerators) if caps else [],
            streams=list(rep.streams) if rep else [],
            labels=dict(rep.labels) if rep else {},
            models=[f"{m.name} v{m.version}" + ("" if m.loaded else " (not loaded)") for m in rep.models]
            if rep
            else [],
        )

    def cells(self, now: float) -> list[Text]:
        status = {
            True: Text("online", style="green"),
            False: Text("offline", style="red"),
            None: Text("unknown", style="dim"),
        }[self.online]
        return [
            Text(self.device),
            status,
            Text("-" if self.boot is None else str(self.boot)),
            Text(_age(self.last_seen, now)),
            Text("-" if self.cores is None else str(self.cores)),
            Text("-" if self.ram_bytes is None else _gib(self.ram_bytes)),
            _lines([f"{k} {v}" for k, v in self.runtimes.items()]),
            _lines(self.accelerators or ["cpu"]),
            _lines(self.streams),
            _lines(self.models),
        ]


def _lines(items: list[str]) -> Text:
    """One item a line: a column is then only as wide as its longest item."""
    return Text("\n".join(items) or "-")


# Dropped from the right of this order first when the terminal is narrow.
COLUMNS = (
    Column("device", keep=9),
    Column("status", keep=8),
    Column("boot", keep=1, justify="right"),
    Column("last seen", keep=7),
    Column("cores", keep=3, justify="right"),
    Column("RAM", keep=4, justify="right"),
    Column("runtimes", keep=0),
    Column("accelerators", keep=2),
    Column("streams", keep=5),
    Column("models", keep=6),
)


@app.command("devices")
def devices(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Fleet config.", show_default=str(DEFAULT_FLEET_CONFIG)),
    ] = None,
    broker: Annotated[str | None, typer.Option("--broker", help=BROKER_OPTION_HELP)] = None,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Fleet id; overrides the config file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 5.0,
) -> None:
    """List the fleet's devices: online or offline, last seen, capabilities."""
    from edgekernel.fleet import snapshot  # noqa: PLC0415 (keeps `--help` fast)
    from edgekernel.link import LinkError  # noqa: PLC0415

    broker_cfg, fleet_id = resolve_target(config, broker, fleet)
    try:
        registry = asyncio.run(snapshot(broker_cfg, fleet_id, timeout=timeout))
    except LinkError as err:
        fail(str(err), Exit.LINK)
    now = time.time()
    rows = [DeviceRow.of(view) for _, view in sorted(registry.devices.items())]
    if as_json:
        console.print_json(json.dumps({"fleet": fleet_id, "devices": [asdict(r) for r in rows]}))
        return
    noun = "device" if len(rows) == 1 else "devices"
    title = f"fleet {fleet_id}: {len(rows)} {noun}"
    print_fitted(console, COLUMNS, [row.cells(now) for row in rows], title=title)
    if not rows:
        console.print(f"[yellow]no device of fleet {fleet_id} has announced itself on {broker_cfg.url}[/]")


@app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Folder for fleet.key (private) and fleet.pub.")] = Path(
        "keys"
    ),
) -> None:
    """Make the fleet's ed25519 signing key: fleet.key (mode 0600; it stays with the operator, outside
    firmware-config/, and git ignores keys/ and *.key) and fleet.pub (copy it into the firmware config
    and list it under `fleet_keys` in each device's config)."""
    from edgekernel.protocol import FleetKey  # noqa: PLC0415

    private, public = out / "fleet.key", out / "fleet.pub"
    if private.exists():
        fail(f"{private} exists; move it away first (devices trust the key they were given)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        key = FleetKey.generate()
        key.save(private)
        public.write_bytes(key.public_pem())
    except OSError as err:
        fail(f"cannot write the key: {err}")
    console.print(f"fleet key {key.key_id}: private {private} (0600), public {public}")


@app.command("acl")
def acl(
    gateway: Annotated[
        list[str], typer.Option("--gateway-user", help="A gateway's broker user name (repeat for more).")
    ] = [],  # noqa: B006 (typer reads the default)
    operator: Annotated[
        list[str],
        typer.Option("--operator-user", help="A user that may read and write the whole fleet (repeat)."),
    ] = [],  # noqa: B006
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Fleet config.")] = None,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Fleet id; overrides the config file.")] = None,
) -> None:
    """Print a Mosquitto acl_file for the fleet: devices (user name = device id) publish only as
    themselves and read only their own desired, ack and cmd; gateways read everything and write acks."""
    from edgekernel.fleet.acl import mosquitto_acl  # noqa: PLC0415 (keeps `--help` fast)

    _, fleet_id = resolve_target(config, None, fleet)
    try:
        text = mosquitto_acl(fleet_id, gateways=gateway, operators=operator)
    except ValueError as err:
        fail(str(err), Exit.USAGE)
    typer.echo(text, nl=False)


def _parse_args(pairs: list[str]) -> dict[str, JsonValue]:
    """``name=value`` pairs; a value is read as JSON when it parses, else kept as text."""
    args: dict[str, JsonValue] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            fail(f"argument {pair!r} is not NAME=VALUE", Exit.USAGE)
        try:
            args[name] = json.loads(raw)
        except ValueError:
            args[name] = raw
    return args


@app.command("call")
def call_device(
    device: Annotated[str, typer.Argument(help="The device id.")],
    command: Annotated[str, typer.Argument(help="ping, stats, …")],
    args: Annotated[list[str] | None, typer.Argument(help="NAME=VALUE arguments (values as JSON).")] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Fleet config.", show_default=str(DEFAULT_FLEET_CONFIG)),
    ] = None,
    broker: Annotated[str | None, typer.Option("--broker", help=BROKER_OPTION_HELP)] = None,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Fleet id; overrides the config file.")] = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="The fleet's private key.", show_default="the config's signing_key"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply as JSON.")] = False,
) -> None:
    """Send a signed command to a device and print its reply (ping answers with the round-trip time)."""
    from edgekernel.fleet import CallTimeoutError, call  # noqa: PLC0415 (keeps `--help` fast)
    from edgekernel.link import LinkError  # noqa: PLC0415
    from edgekernel.protocol import FleetKey, ProtocolError  # noqa: PLC0415

    broker_cfg, fleet_id = resolve_target(config, broker, fleet)
    key_path = key
    if key_path is None and (config is not None or DEFAULT_FLEET_CONFIG.exists()):
        key_path = load_fleet(config or DEFAULT_FLEET_CONFIG).signing_key
    if key_path is None:
        fail("give --key (or signing_key in the fleet config)", Exit.USAGE)
    if not topics.is_id(device) or not topics.is_id(command):
        fail("device and command must be ids (1-63 of a-z 0-9 _ -)", Exit.USAGE)
    try:
        fleet_key = FleetKey.load(key_path)
        result = asyncio.run(
            call(
                broker_cfg, fleet_id, device, command, _parse_args(args or []), key=fleet_key, timeout=timeout
            )
        )
    except (ProtocolError, OSError) as err:
        fail(f"cannot use the key {key_path}: {err}")
    except CallTimeoutError as err:
        hint = "is it online, and does its config list this fleet key under fleet_keys?"
        fail(f"{err}: {hint}", Exit.NO_REPLY)
    except LinkError as err:
        fail(str(err), Exit.LINK)
    reply = result.reply
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "device": device,
                    "command": command,
                    "round_trip_ms": result.round_trip_s * 1000,
                    **reply.model_dump(mode="json"),
                }
            )
        )
    elif reply.ok:
        console.print(f"{device} {command}: ok in {result.round_trip_s * 1000:.1f} ms")
        if command == "stats" and isinstance(reply.result, dict):
            render_stats(reply.result)
        elif reply.result is not None:
            console.print_json(json.dumps(reply.result))
    if not reply.ok:
        error = reply.error
        if not as_json:
            err_console.print(
                f"[red]{device} refused {command}[/]: {error.reason if error else '?'}: "
                f"{error.message if error else ''}",
                highlight=False,
            )
        raise typer.Exit(int(Exit.FAILED))


def render_stats(stats: Mapping[str, object]) -> None:
    """A device's `stats` reply as tables: its link, its backlog, its counters, models and inference."""
    for section, title, header in (
        ("link", f"{stats.get('device')}: link", "what"),
        ("outbox", "backlog (outbox)", "what"),
        ("counters", "counters", "counter"),
        ("commands", "commands", "counter"),
        ("inference", "inference", "what"),
    ):
        values = stats.get(section)
        if isinstance(values, dict) and values:
            ordered = values if section in ("link", "outbox", "inference") else dict(sorted(values.items()))
            console.print(key_values(title, ordered, header=header))
    models = stats.get("models")
    if isinstance(models, list) and models:
        names = ("name", "version", "runtime", "device", "loaded")
        rows = [[Text(str(m.get(c, ""))) for c in names] for m in models if isinstance(m, dict)]
        print_fitted(
            console, [Column(c, keep=len(names) - i) for i, c in enumerate(names)], rows, title="models"
        )
    agents = stats.get("agents")
    if isinstance(agents, list) and agents:
        render_agents([a for a in agents if isinstance(a, dict)])


def render_agents(agents: list[dict[str, object]]) -> None:
    """One line an agent: its state, restarts and failures, and its last error (cut to fit)."""
    names = ("name", "agent", "isolation", "state", "restarts", "failures", "last_error")
    rows = [[Text(str(a.get(c, ""))) for c in names] for a in agents]
    keep = {"name": 7, "state": 6, "restarts": 5, "failures": 4, "agent": 3, "isolation": 2, "last_error": 1}
    print_fitted(console, [Column(c, keep=keep[c]) for c in names], rows, title="agents")
