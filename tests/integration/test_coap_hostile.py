"""What a hostile or careless CoAP peer can do to a server's logs: undecodable datagrams are counted and
logged in one line, observers that vanish leave no "Task exception was never retrieved", and a 4.00
names the model, never where the device keeps its files."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekernel.link import Mosquitto
from edgekernel.link.coap import CoapBadRequest, CoapClient, CoapServer
from edgekernel.protocol import Encoding
from tests.waiting import DEADLINE_S

from .coap_device import MODELS, coap_device
from .test_coap import HOST, telemetry

pytestmark = pytest.mark.integration


def datagram(mid: int, *options: bytes, token: bytes = b"", code: int = 1, mtype: int = 0) -> bytes:
    """A CoAP message from raw bytes: header, token, then options already encoded."""
    return bytes([0x40 | mtype << 4 | len(token), code]) + struct.pack("!H", mid) + token + b"".join(options)


BAD_OPTIONS = [
    bytes([0xB2, 0xFF, 0xFE]),  # Uri-Path (11) that is not UTF-8
    bytes([0x32, 0xC3, 0x28]),  # Uri-Host (3): an invalid UTF-8 sequence
    bytes([0xD1, 0x02, 0x80]),  # Uri-Query (15), one stray continuation byte
    bytes([0xB4]) + b"\xed\xa0\x80x",  # Uri-Path: an encoded surrogate
]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()[:200]
        for record in caplog.records
        if record.exc_info or record.name == "asyncio" or "Traceback" in record.getMessage()
    ]


def test_undecodable_datagrams_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with CoapServer(HOST, 0, streams=["temp"]) as server, CoapClient(timeout=DEADLINE_S) as client:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for n in range(200):
                    sock.sendto(datagram(n, BAD_OPTIONS[n % len(BAD_OPTIONS)]), (HOST, server.port))
                    if n % 50 == 0:
                        await asyncio.sleep(0.01)
            deadline = time.monotonic() + DEADLINE_S
            while server.counters["datagrams-dropped:undecodable"] < 200:
                assert time.monotonic() < deadline, server.counters
                await asyncio.sleep(0.05)
            health = await client.get(f"{server.url}/health")
            assert health.code == "2.05"

    asyncio.run(scenario())
    assert tracebacks(caplog) == []
    lines = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "UnicodeDecodeError" in lines[0]
    assert "\n" not in lines[0]


def test_observers_that_leave_leave_no_task_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Observers whose sockets close: each next notification fails to send at once (ICMP port
    unreachable), which ends aiocoap's pipe while it is sending."""
    caplog.set_level(logging.INFO)
    observe = bytes([0x60]) + bytes([0x59]) + b"telemetry" + bytes([0x04]) + b"temp"

    async def scenario() -> None:
        async with CoapServer(HOST, 0, streams=["temp"]) as server:
            server.publish("temp", telemetry(1))
            for rounds in range(3):
                socks = []
                for i in range(20):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.bind((HOST, 0))
                    sock.sendto(
                        datagram(100 + i, observe, token=bytes([i + 1]), mtype=1), (HOST, server.port)
                    )
                    socks.append(sock)
                await asyncio.sleep(0.3)
                for sock in socks:
                    sock.close()
                for n in range(10):
                    server.publish("temp", telemetry(2 + rounds * 10 + n))
                    await asyncio.sleep(0)
                    time.sleep(0.01)  # noqa: ASYNC251 (blocks the loop, so the ICMP errors arrive before it reads them)
                await asyncio.sleep(0.2)
            async with CoapClient(timeout=DEADLINE_S) as client:
                assert (await client.get(f"{server.url}/telemetry/temp")).envelope().seq == 31
            gc.collect()
            await asyncio.sleep(0.1)

    asyncio.run(scenario())
    gc.collect()
    assert tracebacks(caplog) == []


@pytest.fixture
def device(broker: Mosquitto, tmp_path: Path) -> Iterator[str]:
    with coap_device(broker, tmp_path) as url:
        yield url


def test_a_wrong_shape_names_the_model_not_its_path(device: str) -> None:
    async def scenario() -> str:
        async with CoapClient(timeout=5) as client:
            with pytest.raises(CoapBadRequest) as caught:
                await client.post(
                    f"{device}/infer/vibration-anomaly",
                    b'{"inputs": [[1.0, 2.0]]}',
                    content_format=Encoding.JSON,
                )
            return caught.value.diagnostic

    diagnostic = asyncio.run(scenario())
    assert "vibration-anomaly" in diagnostic
    assert "shape" in diagnostic or "rank" in diagnostic
    assert str(MODELS) not in diagnostic
    assert "/" not in diagnostic.replace("/infer", ""), diagnostic
