"""`edgekernel topics watch`: the fleet's traffic, decoded and pretty-printed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from edgekernel.cli.common import BROKER_OPTION_HELP, Exit, console, fail
from edgekernel.config import BrokerConfig
from edgekernel.protocol import Envelope, ProtocolError, decode, topics

if TYPE_CHECKING:
    from edgekernel.link import Message

app = typer.Typer(help="Watch the wire: every message decoded, bad ones flagged.", no_args_is_help=True)

BODY_PREVIEW = 160


def describe(message: Message) -> tuple[dict[str, object], Envelope | None, ProtocolError | None]:
    """Decode a message for display: the envelope, or the reason it breaks the contract."""
    record: dict[str, object] = {
        "topic": message.topic,
        "retain": message.retain,
        "bytes": len(message.payload),
    }
    try:
        if message.topic.startswith(topics.ROOT + "/"):
            topics.parse(message.topic)
        if not message.payload:
            record["cleared"] = True
            return record, None, None
        envelope = decode(message.payload)
    except ProtocolError as err:
        record["error"] = {"reason": err.reason, "message": str(err)}
        return record, None, err
    record["envelope"] = envelope.model_dump(mode="json", exclude_none=True)
    return record, envelope, None


def _render(message: Message, envelope: Envelope | None, error: ProtocolError | None) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(message.received_at))
    retained = " [dim](retained)[/]" if message.retain else ""
    head = f"[dim]{stamp}[/] [cyan]{escape(message.topic)}[/]{retained}"
    if error is not None:
        return f"{head} [bold red]refused[/] [red]{escape(error.reason)}[/]: {escape(str(error))}"
    if envelope is None:
        return f"{head} [dim]cleared[/]"
    seq = f" seq={envelope.seq}" if envelope.seq is not None else ""
    if envelope.epoch is not None:
        seq += f" epoch={envelope.epoch}"
    body = json.dumps(envelope.body, separators=(",", ":"))
    if len(body) > BODY_PREVIEW:
        body = body[:BODY_PREVIEW] + "…"
    return f"{head} [magenta]{envelope.type}[/] src={envelope.src}{seq} {escape(body)}"


@app.command("watch")
def watch(
    topic_filter: Annotated[str, typer.Argument(help="MQTT topic filter.")] = "ek/v1/#",
    broker: Annotated[str, typer.Option("--broker", help=BROKER_OPTION_HELP)] = "mqtt://127.0.0.1:1883",
    count: Annotated[int | None, typer.Option("--count", "-n", help="Stop after N messages.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 5.0,
) -> None:
    """Subscribe to FILTER and print every message, decoded; messages that break the contract are flagged."""
    from edgekernel.link import LinkError  # noqa: PLC0415 (keeps `--help` fast)

    try:
        broker_cfg = BrokerConfig(url=broker)
        topics.check_filter(topic_filter)
    except (ValueError, ProtocolError) as err:
        fail(str(err), Exit.USAGE)
    try:
        asyncio.run(_watch(broker_cfg, topic_filter, count, as_json, timeout))
    except LinkError as err:
        fail(str(err), Exit.LINK)
    except KeyboardInterrupt:
        pass


async def _watch(
    broker: BrokerConfig, topic_filter: str, count: int | None, as_json: bool, timeout: float
) -> None:
    from edgekernel.link import MqttSession  # noqa: PLC0415 (keeps `--help` fast)

    session = MqttSession(
        broker,
        client_id=f"ek-watch-{uuid.uuid4().hex[:8]}",
        subscriptions=[(topic_filter, 0)],
        persistent=False,
    )
    async with session:
        await session.wait_connected(timeout)
        seen = 0
        async for message in session.messages():
            record, envelope, error = describe(message)
            if as_json:
                print(json.dumps(record, separators=(",", ":")), flush=True)
            else:
                console.print(_render(message, envelope, error), highlight=False, soft_wrap=True)
            seen += 1
            if count is not None and seen >= count:
                return
