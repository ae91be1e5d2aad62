"""Calling a device: a signed command over MQTT 5 request/response, and its reply."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from pydantic import JsonValue

from edgekernel.config.models import BrokerConfig
from edgekernel.fleet.acl import REPLY_ROOT
from edgekernel.link import LinkError, MqttSession
from edgekernel.protocol import FleetKey, ProtocolError, ReplyBody, decode, encode, sign_command, topics


class CallTimeoutError(LinkError):
    """The device did not answer in time (offline, or no fleet key to verify with)."""


@dataclass(frozen=True, slots=True)
class CallResult:
    device: str
    command: str
    reply: ReplyBody
    round_trip_s: float


async def call(
    broker: BrokerConfig,
    fleet: str,
    device: str,
    command: str,
    args: dict[str, JsonValue],
    *,
    key: FleetKey,
    timeout: float = 5.0,
    ttl_s: float = 60.0,
) -> CallResult:
    """Sign `command`, publish it to the device with a response topic, wait for the reply."""
    caller = f"cli-{uuid.uuid4().hex[:12]}"
    reply_topic = f"{REPLY_ROOT}/{fleet}/{caller}"
    envelope = sign_command(key, src=caller, device=device, name=command, args=args, ttl_s=ttl_s)
    correlation = envelope.id.encode()
    session = MqttSession(
        broker, client_id=f"ek-{fleet}-{caller}", subscriptions=[(reply_topic, 1)], persistent=False
    )
    async with session:
        await session.wait_subscribed(timeout)
        started = time.perf_counter()
        await session.publish(
            topics.cmd(fleet, device, command),
            encode(envelope),
            qos=1,
            response_topic=reply_topic,
            correlation_data=correlation,
        )
        try:
            async with asyncio.timeout(timeout):
                async for message in session.messages():
                    if message.correlation_data != correlation:
                        continue
                    try:
                        answer = decode(message.payload)
                        reply = ReplyBody.from_envelope(answer)
                    except ProtocolError:
                        continue
                    if answer.src != device or reply.command != envelope.id:
                        continue  # from another sender, or the answer to another command
                    return CallResult(device, command, reply, time.perf_counter() - started)
        except TimeoutError:
            pass
    raise CallTimeoutError(f"{device} did not answer {command!r} within {timeout:g} s")
