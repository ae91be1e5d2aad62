"""``POST /infer/{model}``: tensors in, tensors out, in JSON or CBOR.

The body is ``{"inputs": [tensor, ...]}`` and the answer ``{"outputs": [tensor, ...]}``, each tensor a
nested array of numbers (float32 on the device). What is wrong with a body is named in a 4.00
diagnostic (``inputs[1] is ragged: ...``); the handler refuses an unknown model with `CoapNotFound`
and an overload with `CoapUnavailable`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from aiocoap import resource
from aiocoap.util.linkformat import Link, LinkFormat  # type: ignore[import-untyped]

from edgekernel.link.coap._base import Resource, content, request_encoding, response_encoding
from edgekernel.link.coap._block1 import Block1Assembler
from edgekernel.link.coap.errors import INTERNAL_SERVER_ERROR, CoapBadRequest, CoapNotFound
from edgekernel.link.coap.formats import dumps, loads
from edgekernel.link.coap.resources import LINK_CT
from edgekernel.link.errors import CoapError
from edgekernel.protocol import ProtocolError
from edgekernel.protocol.topics import is_id

FloatArray = npt.NDArray[np.float32]
InferHandler = Callable[[str, list[FloatArray]], Awaitable[Sequence[npt.NDArray[Any]]]]
MAX_NDIM = 32
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def parse_inputs(data: object, *, max_elements: int) -> list[FloatArray]:
    """The tensors of an inference request, or `CoapBadRequest` naming what is wrong."""
    if not isinstance(data, dict):
        raise CoapBadRequest(f'the body is a map {{"inputs": [...]}}, not {_kind(data)}')
    unknown = sorted(repr(key) for key in data if key != "inputs")
    if unknown:
        raise CoapBadRequest(f'unknown key {", ".join(unknown)}: the body is {{"inputs": [...]}}')
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise CoapBadRequest(f'"inputs" is a non-empty array of tensors, not {_kind(inputs)}')
    tensors = []
    budget = max_elements  # CBOR shared values can expand a small payload enormously
    for i, value in enumerate(inputs):
        tensor, used = _tensor(value, f"inputs[{i}]", budget)
        tensors.append(tensor)
        budget -= used
    return tensors


def _tensor(value: object, where: str, budget: int) -> tuple[FloatArray, int]:
    """The tensor, and how many arrays and numbers it took."""
    if not isinstance(value, list):
        raise CoapBadRequest(f"{where} is {_kind(value)}, not an array")
    shape: list[int] = []
    level: list[object] = [value]
    used = 0
    while level and isinstance(level[0], list):
        if len(shape) == MAX_NDIM:
            raise CoapBadRequest(f"{where} has more than {MAX_NDIM} dimensions")
        width = len(level[0])
        below: list[object] = []
        for item in level:
            if not isinstance(item, list) or len(item) != width:
                raise CoapBadRequest(
                    f"{where} is ragged: each array at depth {len(shape) + 1} needs {width} items"
                )
            below.extend(item)
            if used + len(below) > budget:
                raise CoapBadRequest("the inputs have more elements than the payload has bytes")
        used += len(below)
        shape.append(width)
        level = below
    for item in level:
        if isinstance(item, list):
            raise CoapBadRequest(f"{where} is ragged: it mixes numbers and arrays")
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise CoapBadRequest(f"{where} holds {_kind(item)}, not a number")
    try:
        array = np.array(level, dtype=np.float64)
    except OverflowError:
        raise CoapBadRequest(f"{where} holds an integer too large for float32") from None
    if array.size and not (np.isfinite(array).all() and np.abs(array).max() <= _FLOAT32_MAX):
        raise CoapBadRequest(f"{where} holds a number that is not a finite float32")
    return array.reshape(shape).astype(np.float32), used


_KINDS: dict[type, str] = {type(None): "null", bool: "a boolean", dict: "a map"}


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:32]!r}"
    return _KINDS.get(type(value), f"a {type(value).__name__}")


class InferSite(Resource, resource.PathCapable):  # type: ignore[misc]
    """``/infer/{model}`` for every model name; `models` lists them in ``/.well-known/core``."""

    label = "infer"

    def __init__(
        self,
        counters: Counter[str],
        max_payload: int,
        *,
        handler: InferHandler,
        models: Callable[[], Iterable[str]] | None,
        uploads: Block1Assembler | None = None,
    ) -> None:
        super().__init__(counters, max_payload, uploads=uploads)
        self.handler = handler
        self.models = models

    def get_resources_as_linkheader(self) -> Any:
        names = self.models() if self.models is not None else ()
        return LinkFormat([Link(f"/{name}", rt="ek.infer", ct=LINK_CT) for name in names])

    async def render_post(self, request: Any) -> Any:
        path = request.opt.uri_path
        if len(path) != 1 or not is_id(path[0]):
            raise CoapNotFound(f"no model at /infer/{'/'.join(path)}: POST to /infer/{{model}}")
        model = path[0]
        encoding = request_encoding(request)
        answer = response_encoding(request, encoding)
        payload = bytes(request.payload)
        try:
            data = loads(payload, encoding)
        except ProtocolError as err:
            raise CoapBadRequest(f"{err.reason}: {err}") from err
        inputs = parse_inputs(data, max_elements=max(len(payload), 1))
        outputs = await self.handler(model, inputs)
        try:
            body = dumps({"outputs": [np.asarray(out).tolist() for out in outputs]}, answer)
        except (ValueError, TypeError) as err:
            raise CoapError(
                f"the outputs of {model!r} cannot be sent as {answer}: {err}", code=INTERNAL_SERVER_ERROR
            ) from err
        response = content(body, answer, code=aiocoap.CHANGED)
        # a client assembling a block-wise answer can tell it is one body throughout
        response.opt.etag = hashlib.blake2b(body, digest_size=8).digest()
        return response
