"""A device process that serves CoAP, with the vibration model (at an absolute path) and a sim stream."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from edgekernel.link import Mosquitto, free_port
from edgekernel.link.coap import CoapClient, CoapError
from tests.waiting import DEADLINE_S

MODELS = Path(__file__).resolve().parents[2] / "models"
HOST = "127.0.0.1"


def _wait_serving(url: str) -> None:
    async def probe() -> None:
        async with CoapClient(timeout=2) as client:
            deadline = time.monotonic() + DEADLINE_S
            while True:
                try:
                    await client.get(f"{url}/health")
                    return
                except CoapError:
                    assert time.monotonic() < deadline, f"the device never served CoAP on {url}"
                    await asyncio.sleep(0.3)

    asyncio.run(probe())


@contextmanager
def coap_device(broker: Mosquitto, tmp: Path) -> Iterator[str]:
    """Runs the device for the block; its CoAP URL, once it answers."""
    manifest = {m["file"]: m for m in json.loads((MODELS / "manifest.json").read_text())["models"]}
    port = free_port()
    config = tmp / "dev-1.yaml"
    model = {
        "name": "vibration-anomaly",
        "file": str(MODELS / "vibration_cnn.int8.onnx"),
        "sha256": manifest["vibration_cnn.int8.onnx"]["sha256"],
        "runtime": "onnx",
        "memory_mb": 8,
        "pinned": True,
    }
    settings = {
        "fleet": "coap",
        "device": "dev-1",
        "data_dir": str(tmp / "dev-1"),
        "encoding": "cbor",
        "broker": {"url": broker.url},
        "coap": {"host": HOST, "port": port},
        "kernel": {"models": [model]},
        "sensors": [{"stream": "vibration", "rate_hz": 50, "batch": {"max_samples": 10, "max_wait_ms": 200}}],
    }
    config.write_text(yaml.safe_dump(settings))
    with open(tmp / "dev-1.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgekernel", "device", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        url = f"coap://{HOST}:{port}"
        _wait_serving(url)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
