"""What is logged is bounded: `shorten` keeps a long text's start and end and says how much it cut, a
`ProtocolError` quotes at most a bounded part of the input it refuses, and logging a 60,000-character
topic through the programs' log handler takes no time (rich's highlighter took ~25 s on one)."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from edgekernel.cli import common
from edgekernel.protocol import ProtocolError, topics
from edgekernel.protocol.text import shorten

LONG_TOPIC = "ek/v1/plant/dev-01/cmd/" + "a" * 60_000
HOSTILE = "ek/v1/" + "/[a]=(1," * 8_000 + "'\"" * 4_000  # what a highlighter's regexes choke on


def test_a_short_text_is_kept_as_it_is() -> None:
    assert shorten("ek/v1/plant/dev-01/status") == "ek/v1/plant/dev-01/status"
    assert shorten("x" * 200) == "x" * 200


def test_a_long_text_keeps_its_start_and_end_and_says_how_much_was_cut() -> None:
    text = "start-" + "m" * 10_000 + "-end"
    short = shorten(text, limit=100)
    assert len(short) <= 100
    assert short.startswith("start-")
    assert short.endswith("-end")
    assert "9,9" in short  # "…[9,9xx chars cut]…"


@given(text=st.text(max_size=2_000), limit=st.integers(min_value=40, max_value=1_000))
def test_shorten_never_passes_its_limit(text: str, limit: int) -> None:
    short = shorten(text, limit=limit)
    assert len(short) <= limit
    assert (short == text) == (len(text) <= limit)


@pytest.mark.parametrize(
    "topic",
    [
        LONG_TOPIC,
        "ek/v1/plant/" + "d" * 900 + "/status",
        "ek/v1/plant/dev-01/" + "k" * 900,
        "ek/v1/plant/dev-01/telemetry/" + "s" * 900,
    ],
)
def test_a_protocol_error_on_a_long_topic_quotes_a_bounded_part_of_it(topic: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        topics.parse(topic)
    assert len(str(caught.value)) <= 1_000
    assert caught.value.topic in (None, topic)  # when it names the topic, the whole of it stays at hand


def test_a_protocol_error_message_is_bounded() -> None:
    error = ProtocolError("bad-id", "device " + "x" * 60_000 + " is not valid", topic="t" * 60_000)
    assert len(str(error)) <= 1_000
    assert str(error).startswith("device xxx")


@pytest.fixture
def program_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The root logger as a program sets it up (`setup_logging`), writing into a buffer."""
    out = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=out, stderr=True))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        common.setup_logging()
        yield out
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize("topic", [LONG_TOPIC, HOSTILE])
def test_logging_a_huge_hostile_topic_is_fast(program_log: io.StringIO, topic: str) -> None:
    started = time.monotonic()
    logging.getLogger("edgekernel.test").warning("refused message on %s: %s", topic, "bad-topic")
    took = time.monotonic() - started
    assert took < 2.0  # the highlighter took ~25 s on 60,000 characters; plain text takes milliseconds
    assert "refused message on" in program_log.getvalue()
