"""CoAP over real UDP sockets on 127.0.0.1: the device's resources, the gateway's ingest, the client,
block-wise transfer both ways, refusals with their codes, and interop with the `aiocoap-client` CLI."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiocoap  # type: ignore[import-untyped]
import cbor2
import numpy as np
import numpy.typing as npt
import pytest
from aiocoap.util import linkformat  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekernel.link import LinkError
from edgekernel.link.coap import (
    CoapBadRequest,
    CoapClient,
    CoapError,
    CoapNotFound,
    CoapServer,
    CoapUnavailable,
    FloatArray,
    Health,
)
from edgekernel.protocol import Encoding, Envelope, Sample, StatusBody, TelemetryBody, encode
from edgekernel.protocol.bodies import AckBody

pytestmark = pytest.mark.integration

T = TypeVar("T")
HOST = "127.0.0.1"
CF = {Encoding.JSON: 50, Encoding.CBOR: 60}
BOTH = [Encoding.JSON, Encoding.CBOR]


async def fake_infer(model: str, inputs: list[FloatArray]) -> Sequence[npt.NDArray[Any]]:
    if model == "double":
        return [x * 2 for x in inputs]
    if model == "sum":
        return [np.asarray([x.sum() for x in inputs], dtype=np.float32)]
    if model == "busy":
        raise CoapUnavailable("queue full: 8 queued, limit 8", max_age=3)
    if model == "broken":
        raise RuntimeError("the runtime crashed")
    raise CoapNotFound(f"no model named {model!r}")


class FakeStore:
    """A gateway store: acknowledges every seq it holds for the sender."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def ingest(self, envelope: Envelope) -> AckBody | None:
        await asyncio.sleep(0)
        self.envelopes.append(envelope)
        held = [e.seq for e in self.envelopes if e.src == envelope.src and e.seq is not None]
        return AckBody.of(held) if held else None


@asynccontextmanager
async def serving(store: FakeStore | None = None, **options: Any) -> AsyncIterator[CoapServer]:
    server = CoapServer(
        HOST,
        0,
        infer=fake_infer,
        models=lambda: ["double", "sum"],
        ingest=(store or FakeStore()).ingest,
        health=lambda: Health(status="ok", counters={"outbox.pending": 3}),
        streams=["temp"],
        **options,
    )
    async with server:
        yield server


def telemetry(seq: int | None, n: int = 1, device: str = "dev-1", stream: str = "temp") -> Envelope:
    body = TelemetryBody(stream=stream, samples=[Sample(ts=1.7e9 + i, value=float(i)) for i in range(n)])
    return body.to_envelope(device, seq=seq)


def infer_body(inputs: list[Any], encoding: Encoding) -> bytes:
    data = {"inputs": inputs}
    return json.dumps(data).encode() if encoding is Encoding.JSON else cbor2.dumps(data)


@asynccontextmanager
async def aiocoap_context() -> AsyncIterator[Any]:
    """A bare aiocoap client, for requests CoapClient would not send."""
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        yield context
    finally:
        await context.shutdown()


async def raw(
    context: Any, code: Any, uri: str, payload: bytes = b"", *, block1: Any = None, **options: Any
) -> Any:
    """A request with any options; returns aiocoap's response message."""
    message = aiocoap.Message(code=code, uri=uri, payload=payload, **options)
    if block1 is not None:
        message.opt.block1 = block1
    request = context.request(message, handle_blockwise=block1 is None)
    return await asyncio.wait_for(request.response, 5)


def test_well_known_core_lists_every_resource() -> None:
    async def scenario() -> None:
        async with serving() as server, CoapClient(timeout=5) as client:
            server.publish("vibration", telemetry(1, stream="vibration"))
            response = await client.get(f"{server.url}/.well-known/core")
            assert response.content_format == 40
            links = {
                link.href: dict(link.attr_pairs) for link in linkformat.parse(response.payload.decode()).links
            }
            assert set(links) >= {
                "/health",
                "/ingest",
                "/telemetry/temp",
                "/telemetry/vibration",
                "/infer/double",
                "/infer/sum",
            }
            assert "obs" in links["/telemetry/temp"]
            assert links["/telemetry/temp"]["rt"] == "ek.telemetry"
            assert links["/infer/double"]["ct"] == "50 60"
            filtered = await client.get(f"{server.url}/.well-known/core?rt=ek.infer")
            assert filtered.payload.count(b"<") == 2

    asyncio.run(scenario())


@pytest.mark.parametrize("accept", [None, *BOTH])
def test_observe_telemetry_gets_each_new_envelope(accept: Encoding | None) -> None:
    async def scenario() -> None:
        async with serving() as server, CoapClient(timeout=5) as client:
            uri = f"{server.url}/telemetry/temp"
            async with client.observe(uri, accept=accept) as observation:
                with pytest.raises(TimeoutError):  # nothing published yet; the wait may be given up
                    await asyncio.wait_for(anext(observation), 0.1)
                for seq in (1, 2, 3):
                    sent = telemetry(seq, n=seq)
                    server.publish("temp", sent)
                    notification = await asyncio.wait_for(anext(observation), 5)
                    assert notification.encoding is (accept or Encoding.CBOR)
                    assert notification.envelope() == sent
                large = telemetry(4, n=2000)  # tens of kB: the notification goes block-wise
                server.publish("temp", large)
                notification = await asyncio.wait_for(anext(observation), 5)
                assert len(notification.payload) > 30_000
                assert notification.envelope() == large
            latest = await client.get(uri, accept=accept)
            assert latest.envelope() == large

    asyncio.run(scenario())


def test_observation_ends_with_503_when_the_server_stops() -> None:
    async def scenario() -> None:
        async with CoapClient(timeout=5) as client:
            async with serving() as server:
                observation = client.observe(f"{server.url}/telemetry/temp")
                server.publish("temp", telemetry(1))
                assert (await asyncio.wait_for(anext(observation), 5)).envelope().seq == 1
                waiting = asyncio.ensure_future(anext(observation))
                await asyncio.sleep(0.05)
            with pytest.raises(CoapUnavailable, match="shutting down"):
                await asyncio.wait_for(waiting, 5)

    asyncio.run(scenario())


@pytest.mark.parametrize("accept", BOTH)
def test_health_in_json_and_cbor(accept: Encoding) -> None:
    async def scenario() -> None:
        async with serving() as server, CoapClient(timeout=5) as client:
            response = await client.get(f"{server.url}/health", accept=accept)
            assert response.code == "2.05"
            assert response.content_format == CF[accept]
            health = response.data()
            assert isinstance(health, dict)
            assert health["status"] == "ok"
            assert 0 <= health["uptime_s"] < 10
            assert health["counters"]["outbox.pending"] == 3
            again = await client.get(f"{server.url}/health", accept=accept)
            assert again.data()["counters"]["coap.health:2.05"] == 1  # type: ignore[index]

    asyncio.run(scenario())


@pytest.mark.parametrize("encoding", BOTH)
def test_infer_block_wise_both_ways(encoding: Encoding) -> None:
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((96, 96)).astype(np.float32), rng.standard_normal(100).astype(np.float32)]
    payload = infer_body([x.tolist() for x in inputs], encoding)
    assert len(payload) > 64 * 1024

    async def scenario() -> None:
        async with serving() as server, CoapClient(timeout=5) as client:
            response = await client.post(f"{server.url}/infer/double", payload, content_format=encoding)
            assert response.code == "2.04"
            assert response.encoding is encoding
            outputs = response.data()["outputs"]  # type: ignore[index]
            assert len(outputs) == 2
            for sent, got in zip(inputs, outputs, strict=True):
                np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), sent * 2)
            other = Encoding.CBOR if encoding is Encoding.JSON else Encoding.JSON
            small = infer_body([[1, 2.5], [[3]]], encoding)
            answer = await client.post(
                f"{server.url}/infer/sum", small, content_format=encoding, accept=other
            )
            assert answer.encoding is other
            assert answer.data() == {"outputs": [[3.5, 3.0]]}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("model", "payload", "expected", "diagnostic"),
    [
        ("double", b"{", CoapBadRequest, "bad-json"),
        ("double", b"[1, 2]", CoapBadRequest, 'the body is a map {"inputs": [...]}'),
        ("double", b'{"inputs": []}', CoapBadRequest, "non-empty array"),
        ("double", b'{"inputs": [[1]], "deadline": 3}', CoapBadRequest, "unknown key 'deadline'"),
        ("double", b'{"inputs": [[1, 2], [[1, 2], [3]]]}', CoapBadRequest, "inputs[1] is ragged"),
        ("double", b'{"inputs": [[1, [2]]]}', CoapBadRequest, "mixes numbers and arrays"),
        ("double", b'{"inputs": [["1.5"]]}', CoapBadRequest, "inputs[0] holds the string '1.5'"),
        ("double", b'{"inputs": [[true]]}', CoapBadRequest, "holds a boolean"),
        ("double", b'{"inputs": [3]}', CoapBadRequest, "inputs[0] is the number 3, not an array"),
        ("double", b'{"inputs": [[1e39]]}', CoapBadRequest, "not a finite float32"),
        ("double", b'{"inputs": [[NaN]]}', CoapBadRequest, "NaN is not a JSON number"),
        ("nope", b'{"inputs": [[1]]}', CoapNotFound, "no model named 'nope'"),
        ("Bad.Name", b'{"inputs": [[1]]}', CoapNotFound, "no model at /infer/Bad.Name"),
        ("busy", b'{"inputs": [[1]]}', CoapUnavailable, "queue full"),
    ],
)
def test_infer_refusals_name_what_is_wrong(
    model: str, payload: bytes, expected: type[CoapError], diagnostic: str
) -> None:
    async def scenario() -> None:
        async with serving() as server, CoapClient(timeout=5) as client:
            with pytest.raises(expected) as caught:
                await client.post(f"{server.url}/infer/{model}", payload, content_format=Encoding.JSON)
            assert diagnostic in caught.value.diagnostic
            assert caught.value.code == expected.code
            if expected is CoapUnavailable:
                assert caught.value.max_age == 3
            assert (await client.get(f"{server.url}/health")).code == "2.05"

    asyncio.run(scenario())


def test_infer_handler_failure_is_a_500_and_the_server_goes_on() -> None:
    async def scenario() -> None:
        async with serving() as server, CoapClient(timeout=5) as client:
            with pytest.raises(CoapError) as caught:
                await client.post(
                    f"{server.url}/infer/broken", b'{"inputs": [[1]]}', content_format=Encoding.JSON
                )
            assert caught.value.code == "5.00"
            response = await client.post(
                f"{server.url}/infer/double", b'{"inputs": [[1]]}', content_format=Encoding.JSON
            )
            assert response.data() == {"outputs": [[2.0]]}

    asyncio.run(scenario())


def test_cbor_shared_values_cannot_blow_up_the_inputs() -> None:
    row: list[float] = [1.0] * 64
    for _ in range(12):
        row = [row, row]  # type: ignore[list-item]
    payload = cbor2.dumps({"inputs": [row]}, value_sharing=True)
    assert len(payload) < 1024

    async def scenario() -> None:
        async with serving() as server, CoapClient(timeout=5) as client:
            with pytest.raises(CoapBadRequest, match="more elements than the payload has bytes"):
                await client.post(f"{server.url}/infer/double", payload, content_format=Encoding.CBOR)

    asyncio.run(scenario())


def test_ingest_acknowledges_the_stored_seq_ranges() -> None:
    store = FakeStore()

    async def scenario() -> None:
        async with serving(store) as server, CoapClient(timeout=5) as client:
            uri = f"{server.url}/ingest"
            acks = []
            for seq, encoding in [
                (1, Encoding.CBOR),
                (2, Encoding.JSON),
                (3, Encoding.CBOR),
                (5, Encoding.JSON),
            ]:
                acks.append(await client.post_envelope(uri, telemetry(seq, n=3), encoding))
            assert acks[0] == AckBody(ranges=[[1, 1]])
            assert acks[-1] == AckBody(ranges=[[1, 3], [5, 5]])
            large = telemetry(6, n=3000)
            assert len(encode(large, Encoding.CBOR)) > 20_000
            ack = await client.post_envelope(uri, large)
            assert ack == AckBody(ranges=[[1, 3], [5, 6]])
            status = StatusBody(online=True, boot=1).to_envelope("dev-2")
            assert await client.post_envelope(uri, status) is None
            assert [e.seq for e in store.envelopes] == [1, 2, 3, 5, 6, None]
            assert store.envelopes[-2] == large

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("payload", "content_format", "code", "diagnostic"),
    [
        (b"\xff\x00garbage", 60, "4.00", "bad-cbor"),
        (b"{not json", 50, "4.00", "bad-envelope"),
        (b"", 60, "4.00", "empty"),
        (
            encode(StatusBody(online=True, boot=1).to_envelope("dev-1", seq=4)),
            50,
            "4.00",
            "unexpected-seq: a status envelope carries a seq",
        ),
        (encode(telemetry(1), Encoding.CBOR), 50, "4.00", "wrong-format: the payload is not JSON"),
        (encode(AckBody(ranges=[[1, 1]]).to_envelope("gw")), 50, "4.00", "wrong-type"),
        (encode(Envelope.new(src="dev-1", type="telemetry", body={"x": 1}, seq=1)), 50, "4.00", "bad-body"),
        (encode(telemetry(1)).replace(b'"dev-1"', b'"Dev 1!"'), 50, "4.00", "src"),
        (encode(telemetry(1)), None, "4.15", "no Content-Format"),
        (encode(telemetry(1)), 0, "4.15", "Content-Format 0"),
        (encode(telemetry(1, n=1000)), 50, "4.13", "over the 10000-byte limit"),
    ],
)
def test_ingest_refuses_with_a_reason(
    payload: bytes, content_format: int | None, code: str, diagnostic: str
) -> None:
    store = FakeStore()

    async def scenario() -> None:
        async with (
            serving(store, max_payload=10_000) as server,
            CoapClient(timeout=5) as client,
            aiocoap_context() as context,
        ):
            options = {} if content_format is None else {"content_format": content_format}
            response = await raw(context, aiocoap.POST, f"{server.url}/ingest", payload, **options)
            assert response.code.dotted == code
            assert diagnostic in response.payload.decode()
            if code == "4.13":
                assert response.opt.size1 == 10_000
            good = await client.post_envelope(f"{server.url}/ingest", telemetry(9))
            assert good == AckBody(ranges=[[9, 9]])
            assert [e.seq for e in store.envelopes] == [9]

    asyncio.run(scenario())


def test_size_limit_applies_before_block_wise_assembly() -> None:
    async def scenario() -> None:
        async with (
            serving(max_payload=10_000) as server,
            CoapClient(timeout=5) as client,
            aiocoap_context() as context,
        ):
            uri = f"{server.url}/infer/double"
            with pytest.raises(CoapError) as caught:  # aiocoap announces the size (Size1) in block 0
                await client.post(
                    uri, infer_body([[0.5] * 5000], Encoding.JSON), content_format=Encoding.JSON
                )
            assert caught.value.code == "4.13"
            far = await raw(context, aiocoap.POST, uri, b"1" * 1024, block1=(20, True, 6), content_format=50)
            assert far.code.dotted == "4.13"  # no Size1: refused by the block's offset
            gap = await raw(context, aiocoap.POST, uri, b"1" * 1024, block1=(3, True, 6), content_format=50)
            assert gap.code.dotted == "4.08"
            unacceptable = await raw(context, aiocoap.GET, f"{server.url}/health", accept=0)
            assert unacceptable.code.dotted == "4.06"

    asyncio.run(scenario())


def test_failures_are_link_errors() -> None:
    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind((HOST, 0))
            port = silent.getsockname()[1]
            async with CoapClient(timeout=0.3) as client:
                with pytest.raises(CoapError, match=r"no response within 0\.3 s") as caught:
                    await client.get(f"coap://{HOST}:{port}/health")
                assert caught.value.code is None
                with pytest.raises(CoapError, match="not a CoAP URI"):
                    await client.get("coap://[::1/health")
                async with serving() as server:
                    with pytest.raises(CoapNotFound) as missing:
                        await client.get(f"{server.url}/telemetry/nothing")
                    assert isinstance(missing.value, LinkError)
                    with pytest.raises(CoapError, match="Address already in use"):
                        async with CoapServer(HOST, server.port):
                            pass
        with pytest.raises(CoapError, match="not open"):
            await CoapClient().get(f"coap://{HOST}:5683/health")
        with pytest.raises(CoapError, match=r"cannot serve CoAP on coap://192\.0\.2\.1:0") as refused:
            async with CoapServer("192.0.2.1", 0):  # TEST-NET: never an address of this host
                pass
        assert isinstance(refused.value.__cause__, OSError)

    asyncio.run(scenario())


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_serves_on_ipv6_loopback() -> None:
    async def scenario() -> None:
        async with CoapServer("::1", 0) as server, CoapClient(timeout=5) as client:
            assert server.url == f"coap://[::1]:{server.port}"
            assert (await client.get(f"{server.url}/health")).data()["status"] == "ok"  # type: ignore[index]

    asyncio.run(scenario())


def test_publish_checks_the_stream_and_type() -> None:
    server = CoapServer(HOST, 0)
    with pytest.raises(Exception, match="not a valid id"):
        server.publish("Bad Stream", telemetry(1))
    with pytest.raises(Exception, match="a status envelope on telemetry stream"):
        server.publish("temp", StatusBody(online=True, boot=1).to_envelope("dev-1"))


AIOCOAP_CLIENT = Path(sys.executable).parent / "aiocoap-client"


async def cli(*args: str) -> tuple[int, bytes, str]:
    process = await asyncio.create_subprocess_exec(
        str(AIOCOAP_CLIENT),
        "--no-color",
        "--no-pretty-print",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode is not None
    return process.returncode, out, err.decode()


def test_interop_with_the_aiocoap_client_cli(tmp_path: Path) -> None:
    assert AIOCOAP_CLIENT.exists(), "aiocoap-client comes with aiocoap"
    envelope_file = tmp_path / "envelope.cbor"
    envelope_file.write_bytes(encode(telemetry(42), Encoding.CBOR))
    store = FakeStore()

    async def scenario() -> None:
        async with serving(store) as server:
            health, inferred, ingested, missing = await asyncio.gather(
                cli("--accept", "application/json", f"{server.url}/health"),
                cli(
                    "-m",
                    "POST",
                    "--content-format",
                    "application/json",
                    "--payload",
                    '{"inputs": [[1, 2, 3]]}',
                    f"{server.url}/infer/double",
                ),
                cli(
                    "-m",
                    "POST",
                    "--content-format",
                    "application/cbor",
                    "--accept",
                    "application/cbor",
                    "--payload",
                    f"@{envelope_file}",
                    f"{server.url}/ingest",
                ),
                cli(
                    "-m", "POST", "--content-format", "application/json", "--payload", "{}", f"{server.url}/x"
                ),
            )
        code, out, err = health
        assert code == 0, err
        assert json.loads(out)["status"] == "ok"
        code, out, err = inferred
        assert code == 0, err
        assert json.loads(out) == {"outputs": [[2.0, 4.0, 6.0]]}
        code, out, err = ingested
        assert code == 0, err
        assert cbor2.loads(out) == {"ranges": [[42, 42]]}
        assert [e.seq for e in store.envelopes] == [42]
        code, out, err = missing
        assert code == 1
        assert "4.04" in err

    asyncio.run(scenario())


class LoopThread:
    """An event loop in a thread, so that hypothesis can drive one server from a plain test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[LoopThread, CoapServer, CoapClient, Any]]:
    thread = LoopThread()

    async def double(model: str, inputs: list[FloatArray]) -> Sequence[FloatArray]:
        if model != "double":
            raise CoapNotFound(f"no model named {model!r}")
        return [x * 2 for x in inputs]

    server = CoapServer(HOST, 0, infer=double, ingest=FakeStore().ingest, streams=["temp"])
    client = CoapClient(timeout=5)
    thread.run(server.__aenter__())
    thread.run(client.__aenter__())
    context = thread.run(aiocoap.Context.create_client_context(transports=["udp6"]))
    thread.loop.call_soon_threadsafe(server.publish, "temp", telemetry(1))
    try:
        yield thread, server, client, context
    finally:
        thread.run(context.shutdown())
        thread.run(client.__aexit__(None, None, None))
        thread.run(server.__aexit__(None, None, None))
        thread.close()


PATHS = st.one_of(
    st.sampled_from(
        ["health", "ingest", "infer/double", "infer/x", "telemetry/temp", ".well-known/core"]
    ).map(lambda p: p.split("/")),
    st.lists(st.text(max_size=12), max_size=4),
)
FORMATS = st.one_of(st.none(), st.sampled_from([0, 40, 50, 60, 42]), st.integers(0, 65535))
PAYLOADS = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        lambda d: json.dumps(d).encode(), st.dictionaries(st.text(max_size=8), st.integers(), max_size=3)
    ),
    st.builds(lambda seq: encode(telemetry(seq), Encoding.CBOR), st.integers(0, 10)),
    st.builds(
        lambda xs: json.dumps({"inputs": xs}).encode(), st.lists(st.lists(st.floats() | st.integers()))
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from([aiocoap.GET, aiocoap.POST, aiocoap.PUT, aiocoap.DELETE, aiocoap.FETCH]),
    path=PATHS,
    query=st.lists(st.text(max_size=10), max_size=2),
    content_format=FORMATS,
    accept=FORMATS,
    payload=PAYLOADS,
)
def test_arbitrary_requests_are_refused_never_crash(
    live: tuple[LoopThread, CoapServer, CoapClient, Any],
    method: Any,
    path: list[str],
    query: list[str],
    content_format: int | None,
    accept: int | None,
    payload: bytes,
) -> None:
    thread, server, client, context = live

    async def send() -> Any:
        message = aiocoap.Message(code=method, payload=payload)
        message.set_request_uri(f"{server.url}/")
        message.opt.uri_path = path
        message.opt.uri_query = query
        if content_format is not None:
            message.opt.content_format = content_format
        if accept is not None:
            message.opt.accept = accept
        return await asyncio.wait_for(context.request(message).response, 5)

    response = thread.run(send())
    assert response.code.is_response()
    assert not response.code.dotted.startswith("5."), (response.code, response.payload)
    assert thread.run(client.get(f"{server.url}/health")).code == "2.05"
