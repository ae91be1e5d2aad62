"""A small JSON path into a decoded payload: ``$.data.readings[0].value``, ``temp``, ``$["a b"][2]``.

A path is a ``$`` (optional), then names after dots or in quoted brackets, and list indexes in
brackets (negative counts from the end). Parsing is strict, so a typo fails when the config loads,
not at the first message.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

from edgekernel.errors import EdgeKernelError

Step = str | int
MAX_PATH = 256
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_INDEX = re.compile(r"\[(-?\d{1,9})\]")
_QUOTED = re.compile(r'\[("(?:[^"\\]|\\.)*")\]')


class PathError(EdgeKernelError):
    """A JSON path that does not parse (.path), or a payload it does not fit."""


def parse_path(text: str) -> tuple[Step, ...]:
    if len(text) > MAX_PATH:
        raise PathError(f"JSON path longer than {MAX_PATH} characters")
    rest = text.strip()
    rest = rest.removeprefix("$")
    steps: list[Step] = []
    first = True
    while rest:
        if rest.startswith("[") and (index := _INDEX.match(rest)):
            steps.append(int(index.group(1)))
            rest = rest[index.end() :]
        elif rest.startswith("[") and (quoted := _QUOTED.match(rest)):
            steps.append(json.loads(quoted.group(1)))
            rest = rest[quoted.end() :]
        elif (rest.startswith(".") or (first and text.strip()[:1] != "$")) and (
            name := _NAME.match(rest.removeprefix("."))
        ):
            steps.append(name.group(0))
            rest = rest.removeprefix(".")[name.end() :]
        else:
            raise PathError(f'JSON path {text!r}: cannot read {rest[:20]!r} (use .name, [0] or ["name"])')
        first = False
    return tuple(steps)


def render_path(steps: Sequence[Step]) -> str:
    out = "$"
    for step in steps:
        if isinstance(step, int):
            out += f"[{step}]"
        elif _NAME.fullmatch(step):
            out += f".{step}"
        else:
            out += f"[{json.dumps(step, ensure_ascii=False)}]"
    return out


def extract(document: object, steps: Sequence[Step]) -> object:
    at = document
    for depth, step in enumerate(steps):
        where = render_path(steps[: depth + 1])
        if isinstance(step, int):
            if not isinstance(at, Sequence) or isinstance(at, str | bytes) or not -len(at) <= step < len(at):
                raise PathError(f"{where}: no such item")
            at = at[step]
        else:
            if not isinstance(at, Mapping) or step not in at:
                raise PathError(f"{where}: no such key")
            at = at[step]
    return at


def number(document: object, steps: Sequence[Step]) -> float:
    """The finite number at `steps` (a numeric string counts; true and false do not)."""
    value = extract(document, steps)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PathError(f"{render_path(steps)}: {type(value).__name__} is not a number")
    try:
        result = float(value)
    except (ValueError, OverflowError):
        raise PathError(f"{render_path(steps)}: {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(result):
        raise PathError(f"{render_path(steps)}: {result!r} is not finite")
    return result
