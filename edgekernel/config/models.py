"""Pydantic models for every file a user writes. Unknown keys are refused everywhere.

Relative paths in a file are resolved against the folder that holds the file (the loader passes it
as ``base_dir`` in the validation context).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    JsonValue,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgekernel.config.agents import AgentSpec
from edgekernel.config.base import FilePath, Id, Model
from edgekernel.config.kernel import KernelConfig
from edgekernel.config.outbox import OutboxConfig
from edgekernel.protocol.codec import DEFAULT_MAX_PAYLOAD, Encoding


class TlsConfig(Model):
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    insecure: bool = Field(False, description="skip host name verification (testing only)")

    @model_validator(mode="after")
    def _cert_with_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class ReconnectConfig(Model):
    min_delay_s: Annotated[float, Field(ge=0.01, le=3600, allow_inf_nan=False)] = 0.5
    max_delay_s: Annotated[float, Field(ge=0.01, le=86_400, allow_inf_nan=False)] = 30.0
    jitter: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.5

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectConfig:
        if self.max_delay_s < self.min_delay_s:
            raise ValueError("max_delay_s must be at least min_delay_s")
        return self


class BrokerConfig(Model):
    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://HOST:PORT or mqtts://HOST:PORT")
    username: str | None = None
    password: SecretStr | None = None
    password_file: FilePath | None = None
    tls: TlsConfig | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=65535)] = 30
    session_expiry_s: Annotated[int, Field(ge=0, le=2**32 - 1)] = 3600
    reconnect: ReconnectConfig = ReconnectConfig()

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parse_broker_url(url)
        return url

    @model_validator(mode="after")
    def _one_password(self) -> BrokerConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    @property
    def host(self) -> str:
        return parse_broker_url(self.url)[1]

    @property
    def port(self) -> int:
        return parse_broker_url(self.url)[2]

    @property
    def uses_tls(self) -> bool:
        return parse_broker_url(self.url)[0] == "mqtts" or self.tls is not None

    def with_url(self, url: str) -> BrokerConfig:
        parse_broker_url(url)
        return self.model_copy(update={"url": url})


def parse_broker_url(url: str) -> tuple[str, str, int]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` → (scheme, host, port)."""
    return _parse_url(url, "broker", {"mqtt": 1883, "mqtts": 8883})


def _parse_url(url: str, what: str, schemes: dict[str, int]) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL that may hold only those, with `schemes`' default ports."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        allowed = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ValueError(f"{what} url {url!r} must start with {allowed}")
    if not parts.hostname:
        raise ValueError(f"{what} url {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{what} url {url!r} may only hold scheme, host and port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{what} url {url!r} has a bad port") from None
    if port == 0:
        raise ValueError(f"{what} url {url!r} has a bad port")
    return parts.scheme, parts.hostname, schemes[parts.scheme] if port is None else port


Port = Annotated[int, Field(ge=0, le=65535, description="UDP port; 0 picks a free one")]


class CoapServerConfig(Model):
    """Where a program serves CoAP (UDP)."""

    host: str = Field("::", description="address to bind; :: takes every IPv4 and IPv6 address")
    port: Port = 5683


class GatewayCoapConfig(CoapServerConfig):
    """The gateway's CoAP ingest for CoAP-only devices."""

    devices: Annotated[list[Id], Field(max_length=100_000)] | None = Field(
        None,
        description="the CoAP-only devices that may post (anything else is refused with 4.03); unset, "
        "any sender is believed, so serve CoAP on a trusted network only",
    )
    offline_after_s: Annotated[float, Field(ge=1, le=86_400, allow_inf_nan=False)] = Field(
        120.0,
        description="a CoAP-only device silent this long is marked offline, retained on its status topic "
        "(CoAP has no Last Will); keep it above the devices' reported_interval_s",
    )


class DeviceCoapConfig(CoapServerConfig):
    """The device's CoAP server (/.well-known/core, /health, /telemetry/{stream}, /infer/{model}) and,
    with `gateway_url`, the CoAP-only mode: envelopes go to the gateway's /ingest instead of the broker."""

    serve: bool = Field(True, description="serve the device's own resources")
    gateway_url: str | None = Field(
        None, description="coap://HOST:PORT of the gateway; set, the device uses CoAP only (no broker)"
    )
    window: Annotated[int, Field(ge=1, le=256)] = Field(16, description="posts awaiting an answer at once")
    timeout_s: Annotated[float, Field(ge=0.1, le=3600, allow_inf_nan=False)] = Field(
        10.0, description="a post unanswered this long counts the gateway as gone"
    )
    reconnect: ReconnectConfig = ReconnectConfig()

    @field_validator("gateway_url")
    @classmethod
    def _check_gateway(cls, url: str | None) -> str | None:
        if url is not None:
            parse_coap_url(url)
        return url


def parse_coap_url(url: str) -> tuple[str, int]:
    """``coap://host[:port]`` → (host, port); coaps is not supported."""
    _, host, port = _parse_url(url, "gateway", {"coap": 5683})
    return host, port


class BatchConfig(Model):
    """Samples are packed into one envelope until either limit is reached."""

    max_samples: Annotated[int, Field(ge=1, le=10_000)] = 10
    max_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = 1000


AnomalyKind = Literal["noise", "bearing", "misalignment", "burst"]


class PlantConfig(Model):
    """A first-order thermal plant: the temperature settles towards ambient + heat_rise − cooling × duty
    with the time constant, where duty (0 to 1) is the fan's, set by an actuator call."""

    ambient_c: Annotated[float, Field(ge=-100, le=200, allow_inf_nan=False)] = 25.0
    heat_rise_c: Annotated[float, Field(ge=0, le=500, allow_inf_nan=False)] = Field(
        40.0, description="how far above ambient the temperature settles with the fan off"
    )
    cooling_c: Annotated[float, Field(ge=0, le=500, allow_inf_nan=False)] = Field(
        35.0, description="how much the fan at full duty takes off that"
    )
    time_constant_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = 30.0
    initial_duty: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0


class SimSignal(Model):
    """The `sim` driver's settings: a seeded synthetic signal with known ground truth."""

    kind: Literal["sine", "vibration", "temperature", "random-walk", "plant"] = "sine"
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    amplitude: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] = 1.0
    frequency_hz: Annotated[float, Field(gt=0, le=10_000, allow_inf_nan=False)] = 1.0
    offset: Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)] = 0.0
    noise: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] = 0.05
    anomaly_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        0.0, description="probability per sample that an anomaly starts"
    )
    anomaly_kind: AnomalyKind = Field(
        "noise",
        description="what a random anomaly is: noise (a burst of gaussian noise), or a machine fault like "
        "those the vibration model learned: bearing (impulse train), misalignment (2x harmonic), burst "
        "(broadband rubbing)",
    )
    plant: PlantConfig = PlantConfig()


class SensorConfig(Model):
    """One sensor stream: a driver (entry point in ``edgekernel.drivers``) and its settings."""

    stream: Id
    driver: Id = Field("sim", description="the driver's entry point name: sim, replay, mqtt, coap, …")
    rate_hz: Annotated[float, Field(gt=0, le=10_000, allow_inf_nan=False)] = Field(
        1.0, description="how often a polled driver is read (push drivers send as samples come)"
    )
    unit: Annotated[str, Field(max_length=32)] | None = None
    best_effort: bool = Field(False, description="publish at QoS 0 outside the outbox")
    publish: bool = Field(
        True,
        description="false: the samples stay on the device, for its agents (the local bus) only; nothing "
        "goes to …/telemetry (raw high-rate data an agent turns into scores and events)",
    )
    batch: BatchConfig = BatchConfig()
    sim: SimSignal | None = Field(None, description="the sim driver's settings (driver sim only)")
    config: Annotated[dict[str, JsonValue], Field(max_length=256)] = Field(
        default_factory=dict, description="the driver's settings, validated by the driver's Config model"
    )
    _base_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _driver_settings(self, info: ValidationInfo) -> SensorConfig:
        if self.sim is not None and self.driver != "sim":
            raise ValueError(f"sim: is for driver sim; driver {self.driver} takes its settings in config:")
        if self.driver == "sim" and self.config:
            if self.sim is not None:
                raise ValueError("give sim: or config:, not both")
            object.__setattr__(self, "sim", SimSignal.model_validate(self.config))
            object.__setattr__(self, "config", {})
        base = (info.context or {}).get("base_dir")
        if base is not None:  # validated again inside a DeviceConfig without a context: keep it
            self._base_dir = Path(base)
        return self

    @property
    def base_dir(self) -> Path | None:
        """The folder of the file this came from: the driver resolves its relative paths against it."""
        return self._base_dir

    @property
    def settings(self) -> dict[str, JsonValue] | SimSignal:
        """What the driver's Config model validates."""
        if self.driver == "sim":
            return self.sim if self.sim is not None else SimSignal()
        return self.config


class DeviceConfig(Model):
    fleet: Id
    device: Id
    broker: BrokerConfig = BrokerConfig()
    data_dir: FilePath = Field(description="where the device keeps its state (seq, boot count)")
    encoding: Encoding = Encoding.JSON
    labels: Annotated[dict[Id, Annotated[str, Field(max_length=128)]], Field(max_length=64)] = {}
    reported_interval_s: Annotated[float, Field(ge=0.5, le=86_400, allow_inf_nan=False)] = Field(
        30.0, description="seconds between `reported` messages (0.5 to a day)"
    )
    sensors: Annotated[list[SensorConfig], Field(max_length=256)] = []
    kernel: KernelConfig = KernelConfig()
    outbox: OutboxConfig = OutboxConfig()
    fleet_keys: Annotated[list[FilePath], Field(max_length=16)] = Field(
        default_factory=list, description="the fleet's public keys (PEM): commands signed by them are run"
    )
    coap: DeviceCoapConfig | None = Field(None, description="CoAP server, and the CoAP-only mode")
    agents: Annotated[list[AgentSpec], Field(max_length=256)] = Field(
        default_factory=list,
        description="the agents this device runs; the fleet may add more on …/desired",
    )

    @property
    def coap_only(self) -> bool:
        return self.coap is not None and self.coap.gateway_url is not None

    @field_validator("agents")
    @classmethod
    def _unique_agents(cls, agents: list[AgentSpec]) -> list[AgentSpec]:
        _refuse_twice("agent", [agent.name for agent in agents])
        return agents

    @field_validator("sensors")
    @classmethod
    def _unique_streams(cls, sensors: list[SensorConfig]) -> list[SensorConfig]:
        _refuse_twice("stream", [sensor.stream for sensor in sensors])
        return sensors


def _refuse_twice(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r} is configured twice")
        seen.add(name)


class StoreConfig(Model):
    path: FilePath
    batch_max: Annotated[int, Field(ge=1, le=100_000)] = 500
    batch_wait_ms: Annotated[int, Field(ge=0, le=10_000)] = 20


class GatewayConfig(Model):
    fleet: Id
    gateway: Id
    broker: BrokerConfig = BrokerConfig()
    store: StoreConfig
    share_group: Id | None = Field(None, description="join $share/{group}/… to split load")
    processes: Annotated[int, Field(ge=1, le=64)] = Field(
        1,
        description="gateway processes that split the fleet's messages through a share group (named "
        "after the gateway unless share_group is set) and write one store: more than 1 uses more cores",
    )
    max_payload_bytes: Annotated[int, Field(ge=256, le=256 * 1024 * 1024)] = DEFAULT_MAX_PAYLOAD
    coap: GatewayCoapConfig | None = Field(None, description="serve POST /ingest for CoAP-only devices")
    max_seq_jump: Annotated[int, Field(ge=1, le=2**62)] = Field(
        1_000_000,
        description="a seq more than this above the highest stored of its device and seq space (plus "
        "max_seq_rate per second since that one came) is refused as a dead letter: more than an outbox "
        "holds, so only a forged or broken seq goes that far",
    )
    max_seq_rate: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] = Field(
        1000.0,
        description="seqs a device may use per second while the gateway does not hear it (drop-oldest)",
    )
    max_clock_skew_s: Annotated[float, Field(ge=0, le=10 * 365 * 86400, allow_inf_nan=False)] = Field(
        600.0,
        description="envelope and sample times later than the gateway's clock plus this, or before "
        "2000-01-01, are refused as dead letters (bad-ts)",
    )

    @property
    def effective_share_group(self) -> str | None:
        return self.share_group if self.share_group is not None or self.processes == 1 else self.gateway


class FleetConfig(Model):
    fleet: Id
    name: Annotated[str, Field(max_length=200)] = ""
    broker: BrokerConfig = BrokerConfig()
    signing_key: FilePath | None = Field(
        None, description="the fleet's private key (PEM, mode 0600) that signs commands to devices"
    )
