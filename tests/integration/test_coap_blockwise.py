"""Concurrent block-wise uploads over real UDP on 127.0.0.1: each body arrives whole or is refused,
never spliced with another; the client tags each POST, and the uplink posts again after a 4.08."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import numpy as np
import pytest
from aiocoap import resource

from edgekernel.link.coap import CoapClient, CoapUplink
from edgekernel.protocol import Encoding, Envelope, encode
from edgekernel.protocol.bodies import AckBody
from tests.waiting import DEADLINE_S

from .test_coap import HOST, FakeStore, aiocoap_context, infer_body, serving, telemetry

pytestmark = pytest.mark.integration

LARGE = 600  # samples: an envelope of several kB, many blocks


def distinct(seq: int) -> Envelope:
    """A large envelope whose samples all carry its seq, so that a spliced body cannot pass for it."""
    envelope = telemetry(seq, n=LARGE)
    body = dict(envelope.body)
    body["samples"] = [{"ts": 1.7e9 + i, "value": float(seq)} for i in range(LARGE)]
    return envelope.model_copy(update={"body": body})


def test_concurrent_large_posts_from_one_client_each_arrive_intact() -> None:
    store = FakeStore()

    async def scenario() -> None:
        async with serving(store) as server, CoapClient(timeout=DEADLINE_S) as client:
            envelopes = [distinct(seq) for seq in range(1, 9)]
            for encoding in (Encoding.CBOR, Encoding.JSON):
                store.envelopes.clear()
                acks = await asyncio.gather(
                    *(client.post_envelope(f"{server.url}/ingest", e, encoding) for e in envelopes)
                )
                assert all(isinstance(ack, AckBody) for ack in acks)
                assert sorted(store.envelopes, key=lambda e: e.seq or 0) == envelopes
                assert server.counters["ingest:4.00"] == 0
            rng = np.random.default_rng(3)
            inputs = [rng.standard_normal((40, 40)).astype(np.float32) for _ in range(4)]
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{server.url}/infer/double",
                        infer_body([x.tolist()], Encoding.JSON),
                        content_format=Encoding.JSON,
                    )
                    for x in inputs
                )
            )
            for sent, answer in zip(inputs, answers, strict=True):
                got = np.asarray(answer.data()["outputs"][0], dtype=np.float32)  # type: ignore[index]
                np.testing.assert_array_equal(got, sent * 2)

    asyncio.run(scenario())


async def untagged_post(context: Any, uri: str, payload: bytes) -> Any:
    """A block-wise POST as aiocoap sends it on its own: no Request-Tag."""
    message = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload, content_format=50)
    return await asyncio.wait_for(context.request(message).response, DEADLINE_S)


def test_untagged_concurrent_uploads_are_refused_not_spliced() -> None:
    """Two clients on one socket with no Request-Tag: the server cannot tell their blocks apart, so one
    upload goes through and the other is told to wait (5.03), never merged into the first."""
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((30, 30)).astype(np.float32) for _ in range(2)]

    async def scenario() -> None:
        async with serving() as server, aiocoap_context() as context:
            uri = f"{server.url}/infer/double"
            answers = await asyncio.gather(
                *(untagged_post(context, uri, infer_body([x.tolist()], Encoding.JSON)) for x in inputs)
            )
            codes = sorted(answer.code.dotted for answer in answers)
            assert codes in (["2.04", "2.04"], ["2.04", "5.03"]), codes
            for sent, answer in zip(inputs, answers, strict=True):
                if answer.code.dotted == "2.04":
                    got = np.asarray(json.loads(answer.payload)["outputs"][0], dtype=np.float32)
                    np.testing.assert_array_equal(got, sent * 2)
                else:
                    assert answer.opt.max_age is not None
                    assert b"Request-Tag" in answer.payload

    asyncio.run(scenario())


def test_infer_answers_carry_an_etag_of_their_body() -> None:
    async def scenario() -> None:
        async with serving() as server, aiocoap_context() as context:
            uri = f"{server.url}/infer/double"
            small, large = (infer_body([[1.5] * n], Encoding.JSON) for n in (3, 3000))
            first, again, other = [await untagged_post(context, uri, body) for body in (small, small, large)]
            assert first.opt.etag
            assert first.opt.etag == again.opt.etag
            assert other.opt.etag
            assert other.opt.etag != first.opt.etag

    asyncio.run(scenario())


class Flaky(resource.Resource):  # type: ignore[misc]
    """An /ingest that answers 4.08 to the first `refusals` posts, then acknowledges seq 1."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals
        self.posts = 0

    async def render_post(self, request: Any) -> Any:
        self.posts += 1
        if self.posts <= self.refusals:
            return aiocoap.Message(code=aiocoap.REQUEST_ENTITY_INCOMPLETE)
        await asyncio.sleep(0.2)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b'{"ranges":[[1,1]]}', content_format=50)

    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(code=aiocoap.CONTENT, payload=b"{}", content_format=50)


async def flaky_gateway(refusals: int) -> tuple[Any, Flaky, int]:
    root = resource.Site()
    ingest = Flaky(refusals)
    root.add_resource(["ingest"], ingest)
    root.add_resource(["health"], ingest)
    context = await aiocoap.Context.create_server_context(root, bind=(HOST, 0), transports=["udp6"])
    for interface in context.request_interfaces:
        transport = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        if transport is not None:
            return context, ingest, int(transport._local_port())
    raise AssertionError("no port")


@pytest.mark.parametrize("refusals", [2, 3])
def test_uplink_posts_again_after_4_08_and_coalesces_duplicates(refusals: int) -> None:
    async def scenario() -> None:
        context, ingest, port = await flaky_gateway(refusals)
        acks: list[AckBody] = []
        uplink = CoapUplink(f"coap://{HOST}:{port}", encoding=Encoding.JSON, on_ack=acks.append, timeout_s=10)
        try:
            uplink.start()
            await uplink.wait_connected(DEADLINE_S)
            payload = encode(telemetry(1), Encoding.JSON)
            first = uplink.publish_nowait("t", payload, qos=1)
            second = uplink.publish_nowait(
                "t", payload, qos=1
            )  # the same bytes, while the first is in flight
            assert second is first
            if refusals < 3:
                await asyncio.wait_for(first, DEADLINE_S)
                assert ingest.posts == refusals + 1
                assert uplink.retried["4.08"] == refusals
                assert [ack.ranges for ack in acks] == [[[1, 1]]]
                assert uplink.stats.disconnects == 0
            else:  # three tries in all: then the gateway counts as gone, and nothing is dead-lettered
                with pytest.raises(Exception, match=r"4\.08"):
                    await asyncio.wait_for(first, DEADLINE_S)
                assert ingest.posts == 3
                assert uplink.refused == {}
            assert uplink.retried["coalesced"] == 1
        finally:
            await uplink.close()
            await context.shutdown()

    asyncio.run(scenario())


# Debian's libcoap3-bin names it by TLS library
COAP_CLIENT = next(
    filter(None, map(shutil.which, ["coap-client", "coap-client-notls", "coap-client-openssl"])), None
)


@pytest.mark.skipif(COAP_CLIENT is None, reason="libcoap's coap-client is not installed (apt libcoap3-bin)")
def test_interop_with_libcoap_coap_client_block_wise_post(tmp_path: Path) -> None:
    assert COAP_CLIENT is not None
    rng = np.random.default_rng(11)
    tensor = rng.standard_normal((30, 30)).astype(np.float32)
    body = tmp_path / "body.json"
    body.write_bytes(infer_body([tensor.tolist()], Encoding.JSON))
    assert body.stat().st_size > 4 * 1024
    sent = distinct(7)
    envelope = tmp_path / "envelope.cbor"
    envelope.write_bytes(encode(sent, Encoding.CBOR))
    store = FakeStore()

    async def run(*args: str) -> bytes:
        process = await asyncio.create_subprocess_exec(
            COAP_CLIENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), DEADLINE_S)
        assert process.returncode == 0, err.decode()
        return out

    async def scenario() -> None:
        async with serving(store) as server:
            port = server.port
            out = await run(
                "-m",
                "post",
                "-b",
                "1024",
                "-t",
                "50",
                "-A",
                "50",
                "-f",
                str(body),
                f"coap://{HOST}:{port}/infer/double",
            )
            got = np.asarray(json.loads(out)["outputs"][0], dtype=np.float32)
            np.testing.assert_array_equal(got, tensor * 2)
            await run(
                "-m", "post", "-b", "512", "-t", "60", "-f", str(envelope), f"coap://{HOST}:{port}/ingest"
            )
            assert [e.seq for e in store.envelopes] == [7]
            assert store.envelopes[0] == sent

    asyncio.run(scenario())


def test_interop_with_aiocoap_client_block_wise_post(tmp_path: Path) -> None:
    """aiocoap's own CLI sets no Request-Tag: its block-wise POST still arrives whole."""
    client = Path(sys.executable).parent / "aiocoap-client"
    rng = np.random.default_rng(13)
    tensor = rng.standard_normal((40, 40)).astype(np.float32)
    body = tmp_path / "body.json"
    body.write_bytes(infer_body([tensor.tolist()], Encoding.JSON))
    assert body.stat().st_size > 8 * 1024

    async def scenario() -> None:
        async with serving() as server:
            process = await asyncio.create_subprocess_exec(
                str(client),
                "--no-color",
                "--no-pretty-print",
                "-m",
                "POST",
                "--content-format",
                "application/json",
                "--accept",
                "application/json",
                "--payload",
                f"@{body}",
                f"{server.url}/infer/double",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), DEADLINE_S)
            assert process.returncode == 0, err.decode()
            got = np.asarray(json.loads(out)["outputs"][0], dtype=np.float32)
            np.testing.assert_array_equal(got, tensor * 2)

    asyncio.run(scenario())
