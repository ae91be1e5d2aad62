"""Fault test 6 over CoAP: garbage, oversized and malformed requests on every resource of a device and of
the gateway, while a CoAP-only device streams through the gateway's /ingest. Each is refused with a code
and a diagnostic that names what is wrong; nothing crashes; the stream arrives exactly once, in order."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sqlite3
import sys
import time
from pathlib import Path

import cbor2
import pytest
import yaml

from edgekernel.link import Mosquitto, free_port
from edgekernel.link.coap import CoapClient, CoapError
from edgekernel.protocol import Encoding
from tests.waiting import DEADLINE_S

from .harness import FLEET, Program, check_exactly_once, more_than_now, wait_stored

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

MODELS = Path(__file__).resolve().parents[2] / "models"
MAX_PAYLOAD = 64 * 1024
JSON, CBOR = Encoding.JSON, Encoding.CBOR


def programs(tmp: Path, broker_url: str, gw_port: int, dev_port: int) -> tuple[Program, Program]:
    manifest = {m["file"]: m for m in json.loads((MODELS / "manifest.json").read_text())["models"]}
    gw_config = tmp / "gw-1.yaml"
    gw_config.write_text(
        yaml.safe_dump(
            {
                "fleet": FLEET,
                "gateway": "gw-1",
                "broker": {"url": broker_url},
                "store": {"path": str(tmp / "store.db"), "batch_wait_ms": 20},
                "max_payload_bytes": MAX_PAYLOAD,
                "coap": {"host": "127.0.0.1", "port": gw_port},
            }
        )
    )
    dev_config = tmp / "dev-1.yaml"
    dev_config.write_text(
        yaml.safe_dump(
            {
                "fleet": FLEET,
                "device": "dev-1",
                "data_dir": str(tmp / "dev-1"),
                "encoding": "cbor",
                "outbox": {"resend_after_s": 1.0},
                "coap": {
                    "host": "127.0.0.1",
                    "port": dev_port,
                    "gateway_url": f"coap://127.0.0.1:{gw_port}",
                    "timeout_s": 5.0,  # a flood overflows the socket buffer: CoAP retransmits after 2-3 s
                    "reconnect": {"min_delay_s": 0.1, "max_delay_s": 1.0},
                },
                "kernel": {
                    "models": [
                        {
                            "name": "vibration",
                            "file": str(MODELS / "vibration_cnn.int8.onnx"),
                            "sha256": manifest["vibration_cnn.int8.onnx"]["sha256"],
                            "runtime": "onnx",
                            "memory_mb": 8,
                        }
                    ]
                },
                "sensors": [
                    {"stream": "vibration", "rate_hz": 200, "batch": {"max_samples": 10, "max_wait_ms": 100}}
                ],
            }
        )
    )
    run = [sys.executable, "-m", "edgekernel"]
    gw = Program("gw-1", [*run, "gateway", "run", "--config", str(gw_config)], tmp / "gw-1.log")
    dev = Program("dev-1", [*run, "device", "run", "--config", str(dev_config)], tmp / "dev-1.log")
    return gw, dev


def envelope(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"v": 1, "id": "0123456789abcdef", "src": "dev-1", "ts": time.time()}
    return base | fields


def telemetry(**fields: object) -> dict[str, object]:
    body = {"stream": "vibration", "samples": [{"ts": time.time(), "value": 1.0}]}
    return envelope(type="telemetry", body=body) | fields


def nested(depth: int) -> object:
    value: object = 1.0
    for _ in range(depth):
        value = [value]
    return value


# (what, method, path, payload, content format number or None, expected code, words the diagnostic holds)
Case = tuple[str, str, str, bytes, int | None, str, str]


def j(value: object) -> bytes:
    return json.dumps(value).encode()


def gateway_cases() -> list[Case]:
    rng = random.Random(6)
    return [
        ("random bytes as JSON", "POST", "/ingest", rng.randbytes(300), 50, "4.00", "wrong-format"),
        ("random bytes as CBOR", "POST", "/ingest", b"\xff" + rng.randbytes(300), 60, "4.00", ""),
        ("empty", "POST", "/ingest", b"", 50, "4.00", ""),
        ("truncated JSON", "POST", "/ingest", j(telemetry(seq=5))[:40], 50, "4.00", "bad-envelope"),
        ("JSON that is a list", "POST", "/ingest", b"[1, 2, 3]", 50, "4.00", ""),
        ("wrong schema version", "POST", "/ingest", j(telemetry(seq=5, v=2)), 50, "4.00", ""),
        (
            "a command posted to a gateway",
            "POST",
            "/ingest",
            j(envelope(type="cmd", body={})),
            50,
            "4.00",
            "wrong-type",
        ),
        (
            "status with a seq",
            "POST",
            "/ingest",
            j(envelope(type="status", seq=1, body={})),
            50,
            "4.00",
            "seq",
        ),
        ("forged seq 2**63-1", "POST", "/ingest", j(telemetry(seq=2**63 - 1)), 50, "4.00", "seq-jump"),
        ("envelope ts 0", "POST", "/ingest", j(telemetry(seq=7, ts=0.0)), 50, "4.00", "bad-ts"),
        ("envelope ts 1e15", "POST", "/ingest", j(telemetry(seq=7, ts=1e15)), 50, "4.00", "bad-ts"),
        ("negative seq", "POST", "/ingest", j(telemetry(seq=-1)), 50, "4.00", ""),
        (
            "NaN in a sample",
            "POST",
            "/ingest",
            json.dumps(
                telemetry(
                    seq=5, body={"stream": "vibration", "samples": [{"ts": 1.0, "value": float("nan")}]}
                )
            ).encode(),
            50,
            "4.00",
            "",
        ),
        (
            "deeply nested body",
            "POST",
            "/ingest",
            j(envelope(type="event", body={"x": nested(500)})),
            50,
            "4.00",
            "",
        ),
        ("CBOR nesting bomb", "POST", "/ingest", b"\x81" * 100_000 + b"\x01", 60, "4.13", "limit"),
        ("CBOR shared-value bomb", "POST", "/ingest", cbor_bomb(), 60, "4.00", ""),
        ("JSON in a CBOR post", "POST", "/ingest", j(telemetry(seq=5)), 60, "4.00", "wrong-format"),
        ("no content format", "POST", "/ingest", j(telemetry(seq=5)), None, "4.15", "Content-Format"),
        ("text/plain", "POST", "/ingest", b"hello", 0, "4.15", "Content-Format"),
        ("just over the limit", "POST", "/ingest", b" " * (MAX_PAYLOAD + 1), 50, "4.13", "limit"),
        ("four times the limit", "POST", "/ingest", b"[" * (4 * MAX_PAYLOAD), 50, "4.13", "limit"),
        ("GET on /ingest", "GET", "/ingest", b"", None, "4.05", ""),
        ("unknown path", "POST", "/nope", b"{}", 50, "4.04", "no resource at /nope"),
        ("PUT on /health", "PUT", "/health", b"{}", 50, "4.05", ""),
    ]


def device_cases() -> list[Case]:
    rng = random.Random(7)
    return [
        ("random bytes to infer", "POST", "/infer/vibration", rng.randbytes(200), 50, "4.00", ""),
        ("inputs not a list", "POST", "/infer/vibration", b'{"inputs": 3}', 50, "4.00", "inputs"),
        (
            "ragged tensor",
            "POST",
            "/infer/vibration",
            b'{"inputs": [[[1.0], [1.0, 2.0]]]}',
            50,
            "4.00",
            "ragged",
        ),
        (
            "wrong shape for the model",
            "POST",
            "/infer/vibration",
            b'{"inputs": [[1.0, 2.0]]}',
            50,
            "4.00",
            "",
        ),
        (
            "a string in a tensor",
            "POST",
            "/infer/vibration",
            b'{"inputs": [["x"]]}',
            50,
            "4.00",
            "not a number",
        ),
        ("unknown model", "POST", "/infer/nope", b'{"inputs": [[1.0]]}', 50, "4.04", "nope"),
        ("bad model name", "POST", "/infer/../etc", b'{"inputs": [[1.0]]}', 50, "4.04", ""),
        ("oversized inference", "POST", "/infer/vibration", b"[" * (2 << 20), 50, "4.13", "limit"),
        ("CBOR bomb to infer", "POST", "/infer/vibration", cbor_bomb(), 60, "4.00", ""),
        ("unsupported format to infer", "POST", "/infer/vibration", b"{}", 42, "4.15", ""),
        ("unsupported Accept", "GET", "/health?accept", b"", None, "2.05", ""),
        ("unknown stream", "GET", "/telemetry/nope", b"", None, "4.04", "/telemetry/nope"),
        ("POST to a stream", "POST", "/telemetry/vibration", b"{}", 50, "4.05", ""),
        ("bad link filter", "GET", "/.well-known/core?__class__=x", b"", None, "4.00", "filter"),
    ]


def cbor_bomb() -> bytes:
    """A few hundred bytes of CBOR with shared values that would expand to millions of numbers."""
    value: object = [1.0] * 8
    for _ in range(7):
        value = cbor2.CBORTag(28, [value] * 8)  # each level marks a shareable array referenced 8 times
    try:
        return cbor2.dumps({"inputs": [value]}, value_sharing=True)
    except Exception:  # cbor2 without tag 28 support: a deep plain bomb instead
        return b"\xa1\x66inputs" + b"\x81" * 5000 + b"\x01"


async def attack(url: str, cases: list[Case]) -> dict[str, tuple[str, str]]:
    results: dict[str, tuple[str, str]] = {}
    async with CoapClient(timeout=DEADLINE_S) as client:
        for what, method, path, payload, fmt, _, _ in cases:
            results[what] = await one(client, url, method, path, payload, fmt)
    return results


async def one(
    client: CoapClient, url: str, method: str, path: str, payload: bytes, fmt: int | None
) -> tuple[str, str]:
    import aiocoap

    message = aiocoap.Message(code=getattr(aiocoap, method), uri=url + path, payload=payload)
    if fmt is not None:
        message.opt.content_format = fmt
    try:
        response = await asyncio.wait_for(client._send(message, url + path).response, DEADLINE_S)
    except (aiocoap.error.Error, TimeoutError) as err:
        return "none", repr(err)
    except CoapError as err:
        return err.code or "none", err.diagnostic
    return response.code.dotted, bytes(response.payload[:300]).decode("utf-8", "replace")


def udp_garbage(port: int, n: int = 300) -> None:
    rng = random.Random(port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(n):
            sock.sendto(rng.randbytes(rng.randint(0, 1400)), ("127.0.0.1", port))


def test_garbage_on_every_coap_resource_is_refused_and_the_stream_flows(
    broker: Mosquitto, tmp_path: Path
) -> None:
    gw_port, dev_port = free_port(), free_port()
    gw, dev = programs(tmp_path, broker.url, gw_port, dev_port)
    gw.start()
    dev.start()
    try:
        wait_stored(tmp_path, {"dev-1": 10}, what="the CoAP-only device to deliver")

        g_cases, d_cases = gateway_cases(), device_cases()
        g_results = asyncio.run(attack(f"coap://127.0.0.1:{gw_port}", g_cases))
        d_results = asyncio.run(attack(f"coap://127.0.0.1:{dev_port}", d_cases))
        udp_garbage(gw_port)
        udp_garbage(dev_port)

        wrong = []
        for cases, results in ((g_cases, g_results), (d_cases, d_results)):
            for what, _, _, _, _, code, words in cases:
                got, diagnostic = results[what]
                named = bool(diagnostic.strip()) or not code.startswith("4.")
                if got != code or words not in diagnostic or not named:
                    wrong.append(f"{what}: expected {code} naming {words!r}, got {got} {diagnostic!r}")
        assert not wrong, "\n".join(wrong)

        wait_stored(tmp_path, more_than_now(tmp_path, ["dev-1"], 30), what="the stream to keep flowing")
        for program in (gw, dev):
            assert program.proc is not None
            assert program.proc.poll() is None, f"{program.name} died"
        dev.stop()
        time.sleep(1.0)
    finally:
        dev.stop()
        gw.stop()
    assert [p.proc.returncode for p in (gw, dev) if p.proc is not None] == [0, 0]
    assert check_exactly_once(tmp_path, "dev-1") > 30
    with sqlite3.connect(tmp_path / "store.db") as db:
        reasons = {r for (r,) in db.execute("SELECT reason FROM rejected WHERE topic = 'coap:/ingest'")}
    assert {"bad-envelope", "wrong-type", "unexpected-seq", "seq-jump", "bad-ts", "wrong-format"} <= reasons
