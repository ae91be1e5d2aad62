"""The Block1 assembler: a body comes out whole or not at all, never spliced from two uploads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekernel.link.coap._block1 import Block, Block1Assembler, UploadRefused

SZX = 2  # 64-byte blocks keep the examples small


def blocks(body: bytes, szx: int = SZX, *, size1: bool = True) -> list[Block]:
    size = 1 << (szx + 4)
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [
        Block(n, n < len(chunks) - 1, szx, chunk, len(body) if size1 and n == 0 else None)
        for n, chunk in enumerate(chunks)
    ]


def refused(assembler: Block1Assembler, key: object, block: Block, now: float = 0.0) -> UploadRefused:
    with pytest.raises(UploadRefused) as caught:
        assembler.feed(key, block, now)
    return caught.value


bodies = st.binary(min_size=1, max_size=600)
multi_block = st.binary(min_size=65, max_size=300)  # at least two 64-byte blocks


@given(bodies, st.integers(0, 6), st.booleans())
def test_in_order_blocks_give_the_body(body: bytes, szx: int, size1: bool) -> None:
    assembler = Block1Assembler(max_body=4096)
    parts = blocks(body, szx, size1=size1)
    results = [assembler.feed("k", block, 0.0) for block in parts]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert results[-1] == body
    assert len(assembler) == 0


@settings(max_examples=400)
@given(st.lists(multi_block, min_size=2, max_size=3, unique=True), st.data())
def test_concurrent_uploads_under_one_key_are_never_spliced(
    bodies_: list[bytes], data: st.DataObject
) -> None:
    """Clients that share a key (one endpoint, no Request-Tag), each sending its next block once the
    previous one was answered 2.31 and starting again from block 0 after a refusal or at will, their
    steps interleaved in any order: each body that comes out is the body of the client that sent its
    last block, intact."""
    assembler = Block1Assembler(max_body=4096)
    uploads = [blocks(body, size1=data.draw(st.booleans())) for body in bodies_]
    cursor = [0] * len(uploads)
    done: set[int] = set()
    codes: set[str | None] = set()
    for _ in range(8 * sum(map(len, uploads))):
        waiting = [c for c in range(len(uploads)) if c not in done]
        if not waiting:
            break
        client = data.draw(st.sampled_from(waiting))
        if cursor[client] and data.draw(st.integers(0, 9)) == 0:
            cursor[client] = 0  # gives up and starts again
        try:
            out = assembler.feed("same", uploads[client][cursor[client]], 0.0)
        except UploadRefused as err:
            codes.add(err.code)
            cursor[client] = 0
            continue
        if out is None:
            cursor[client] += 1
        else:
            assert out == bodies_[client]
            done.add(client)
    assert codes <= {"4.08", "5.03"}


@settings(max_examples=300)
@given(bodies, st.data())
def test_blocks_in_any_order_give_the_body_or_nothing(body: bytes, data: st.DataObject) -> None:
    assembler = Block1Assembler(max_body=4096)
    parts = blocks(body)
    codes: set[str | None] = set()
    for block in data.draw(st.lists(st.sampled_from(parts), max_size=3 * len(parts))):
        try:
            out = assembler.feed("k", block, 0.0)
        except UploadRefused as err:
            codes.add(err.code)
            continue
        assert out is None or out == body
    assert codes <= {"4.08"}


@settings(max_examples=200)
@given(st.lists(bodies, min_size=2, max_size=4), st.data())
def test_tagged_uploads_interleaved_in_any_way_all_arrive(bodies_: list[bytes], data: st.DataObject) -> None:
    """Each upload in order under its own key, the uploads interleaved arbitrarily: each body intact."""
    assembler = Block1Assembler(max_body=4096)
    queues = {key: blocks(body) for key, body in enumerate(bodies_)}
    done: dict[int, bytes] = {}
    while queues:
        key = data.draw(st.sampled_from(sorted(queues)))
        out = assembler.feed(key, queues[key].pop(0), 0.0)
        if not queues[key]:
            del queues[key]
            assert out is not None
            done[key] = out
        else:
            assert out is None
    assert done == dict(enumerate(bodies_))


def test_a_missing_or_repeated_block_is_incomplete() -> None:
    assembler = Block1Assembler(max_body=4096)
    parts = blocks(bytes(200))
    assert assembler.feed("k", parts[0], 0.0) is None
    assert refused(assembler, "k", parts[2]).code == "4.08"
    assert refused(assembler, "k", parts[1]).code == "4.08"  # the upload was dropped with the refusal
    assembler.feed("k", parts[0], 0.0)
    assembler.feed("k", parts[1], 0.0)
    assert refused(assembler, "k", parts[1]).code == "4.08"


def test_inconsistent_sizes_are_bad_requests() -> None:
    assembler = Block1Assembler(max_body=4096)
    assembler.feed("k", Block(0, True, 2, bytes(64)), 0.0)
    assert refused(assembler, "k", Block(1, True, 3, bytes(128))).code == "4.00"
    assert refused(assembler, "k", Block(0, True, 2, bytes(10))).code == "4.00"  # short, yet more follow
    assembler.feed("k", Block(0, True, 2, bytes(64), size1=100), 0.0)
    assert refused(assembler, "k", Block(1, False, 2, bytes(64))).code == "4.00"  # 128 != Size1 100
    assembler.feed("k", Block(0, True, 2, bytes(64), size1=100), 0.0)
    assert refused(assembler, "k", Block(1, True, 2, bytes(64), size1=200)).code == "4.00"
    assert refused(assembler, "k", Block(0, False, 7, bytes(10))).code == "4.00"  # BERT: not over UDP


def test_over_the_limit_is_4_13_with_size1() -> None:
    assembler = Block1Assembler(max_body=256)
    err = refused(assembler, "k", Block(0, True, 2, bytes(64), size1=1000))
    assert (err.code, err.size1) == ("4.13", 256)
    for n in range(4):
        assembler.feed("k", Block(n, True, 2, bytes(64)) if n else Block(0, True, 2, bytes(64)), 0.0)
    err = refused(assembler, "k", Block(4, True, 2, bytes(64)))
    assert (err.code, err.size1) == ("4.13", 256)
    assert len(assembler) == 0


def test_at_most_max_uploads_then_503_until_one_expires() -> None:
    assembler = Block1Assembler(max_body=4096, max_uploads=64, lifetime_s=93.0)
    first = Block(0, True, 2, bytes(64))
    for key in range(64):
        assembler.feed(key, first, float(key))
    err = refused(assembler, "one more", first, 64.0)
    assert err.code == "5.03"
    assert err.max_age is not None
    assert 1 <= err.max_age <= 60
    assert assembler.feed("one more", first, 93.0) is None  # the first upload expired at 93 s
    assert len(assembler) == 64
    assert refused(assembler, 0, Block(1, False, 2, b"x"), 93.0).code == "4.08"


def test_a_second_block_0_under_an_open_key_is_told_to_wait() -> None:
    assembler = Block1Assembler(max_body=4096)
    a, b = blocks(bytes(100)), blocks(b"\x01" * 100)
    assembler.feed("k", a[0], 0.0)
    err = refused(assembler, "k", b[0], 1.0)
    assert err.code == "5.03"
    assert err.max_age is not None
    assert assembler.feed("k", a[1], 2.0) == bytes(100)  # the open upload is untouched
    assert assembler.feed("k", b[0], 3.0) is None
    assert assembler.feed("k", b[1], 3.0) == b"\x01" * 100
