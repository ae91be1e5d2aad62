"""Input quoted in logs and error messages is bounded: a 60,000-character topic is logged as its start,
its end and how much was cut between them, never whole."""

from __future__ import annotations

DEFAULT_LIMIT = 200
_MIN_LIMIT = 32  # below this the note would crowd out the text: just cut it


def shorten(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """`text` if it has at most `limit` characters; else its start and end around a note of how many
    characters were cut, `limit` characters at most in all."""
    if len(text) <= limit:
        return text
    if limit < _MIN_LIMIT:
        return text[: max(0, limit)]
    keep = limit - len(_note(len(text)))  # the note for the whole text is at least as long as any
    cut = len(text) - keep
    head, tail = (keep + 1) // 2, keep // 2
    return text[:head] + _note(cut) + text[len(text) - tail :]


def _note(cut: int) -> str:
    return f"…[{cut:,} chars cut]…"
