"""Block-wise request bodies (RFC 7959 Block1), assembled one upload per (remote, Request-Tag, resource).

aiocoap's own assembler keys an upload by the remote and the request's options: two concurrent uploads
from one endpoint without a Request-Tag (RFC 9175) share a key, and a second block 0 silently restarts
the first, whose later blocks then append to the second body. This one refuses what it cannot tell
apart instead of merging it:

- a block that does not continue the body received so far (out of order, missing, or before any block
  0): 4.08 Request Entity Incomplete, and the upload is dropped;
- a block whose size differs from block 0's, or a body that ends at another size than Size1 announced:
  4.00 Bad Request;
- a body (or Size1) over the limit: 4.13 Request Entity Too Large with Size1 set to the limit;
- a block 0 while an upload under the same key is still open, or while `max_uploads` are open: 5.03
  with a Max-Age of a second, after which to try again.

An upload that receives no block for `lifetime_s` (EXCHANGE_LIFETIME) is forgotten. Sans-io: the caller
passes the time.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final

from edgekernel.link.coap.errors import (
    BAD_REQUEST,
    REQUEST_ENTITY_INCOMPLETE,
    REQUEST_ENTITY_TOO_LARGE,
    SERVICE_UNAVAILABLE,
)
from edgekernel.link.errors import CoapError

EXCHANGE_LIFETIME_S: Final = 93.0  # RFC 7252 4.8.2, with its default transmission parameters
MAX_UPLOADS: Final = 64
RETRY_S: Final = 1  # Max-Age of a 5.03: an upload in progress takes milliseconds, an abandoned one 93 s
MAX_SIZE_EXP: Final = 6  # 1024 bytes; 7 is BERT, for reliable transports only


@dataclass(frozen=True, slots=True)
class Block:
    """One request block: the Block1 option's number, more flag and size exponent, its payload, and
    the request's Size1 if it had one."""

    number: int
    more: bool
    size_exp: int
    payload: bytes
    size1: int | None = None

    @property
    def size(self) -> int:
        return 1 << (self.size_exp + 4)


class UploadRefused(CoapError):
    """A block refused; `size1` is the limit to announce with a 4.13."""

    def __init__(
        self, diagnostic: str, *, code: str, max_age: int | None = None, size1: int | None = None
    ) -> None:
        super().__init__(diagnostic, code=code, max_age=max_age)
        self.size1 = size1


@dataclass(slots=True)
class _Upload:
    size_exp: int
    size1: int | None
    last_seen: float
    body: bytearray = field(default_factory=bytearray)


class Block1Assembler:
    """Open uploads by key; `feed` returns the whole body when its last block came, else None."""

    def __init__(
        self,
        *,
        max_body: int,
        max_uploads: int = MAX_UPLOADS,
        lifetime_s: float = EXCHANGE_LIFETIME_S,
    ) -> None:
        self.max_body = max_body
        self.max_uploads = max_uploads
        self.lifetime_s = lifetime_s
        self._open: dict[Hashable, _Upload] = {}

    def __len__(self) -> int:
        return len(self._open)

    def expire(self, now: float) -> None:
        stale = [key for key, up in self._open.items() if now - up.last_seen >= self.lifetime_s]
        for key in stale:
            del self._open[key]

    def feed(self, key: Hashable, block: Block, now: float) -> bytes | None:
        """Add `block` to the upload under `key`: the body once complete, None while more is to come,
        or `UploadRefused` (and the upload under `key` forgotten, unless the refusal is a busy 5.03)."""
        self.expire(now)
        try:
            self._check_total(block.number * block.size + len(block.payload), "reaching")
        except UploadRefused:
            self._open.pop(key, None)
            raise
        if block.number == 0:
            self._start(key, block, now)
        try:
            upload = self._open.get(key)
            if upload is None:
                raise UploadRefused(
                    f"block {block.number} of an upload that is not open: send from block 0",
                    code=REQUEST_ENTITY_INCOMPLETE,
                )
            return self._append(upload, block, now)
        except UploadRefused:
            self._open.pop(key, None)
            raise
        finally:
            if not block.more:
                self._open.pop(key, None)

    def _start(self, key: Hashable, block: Block, now: float) -> None:
        if key in self._open:
            raise UploadRefused(
                "another block-wise upload from this endpoint to this resource is open: "
                "wait for it, or tell them apart with a Request-Tag",
                code=SERVICE_UNAVAILABLE,
                max_age=RETRY_S,
            )
        if len(self._open) >= self.max_uploads:
            raise UploadRefused(
                f"{len(self._open)} block-wise uploads are open, the most this server takes",
                code=SERVICE_UNAVAILABLE,
                max_age=RETRY_S,
            )
        self._check_block(block)
        self._check_total(block.size1, "announced")
        self._open[key] = _Upload(block.size_exp, block.size1, now)

    def _append(self, upload: _Upload, block: Block, now: float) -> bytes | None:
        self._check_block(block)
        if block.size_exp != upload.size_exp:
            raise UploadRefused(
                f"block {block.number} is of {block.size} bytes, block 0 was of {1 << (upload.size_exp + 4)}",
                code=BAD_REQUEST,
            )
        if block.size1 is not None:
            if upload.size1 is not None and block.size1 != upload.size1:
                raise UploadRefused(
                    f"Size1 {block.size1} differs from the {upload.size1} announced before", code=BAD_REQUEST
                )
            self._check_total(block.size1, "announced")
            upload.size1 = block.size1
        start = block.number * block.size
        if start != len(upload.body):
            raise UploadRefused(
                f"block {block.number} starts at byte {start}, but {len(upload.body)} bytes have come",
                code=REQUEST_ENTITY_INCOMPLETE,
            )
        upload.body += block.payload
        upload.last_seen = now
        self._check_total(len(upload.body), "of")
        if upload.size1 is not None and len(upload.body) > upload.size1:
            raise UploadRefused(
                f"the body passed the {upload.size1} bytes announced in Size1", code=BAD_REQUEST
            )
        if block.more:
            return None
        if upload.size1 is not None and len(upload.body) != upload.size1:
            raise UploadRefused(
                f"the body ended at {len(upload.body)} bytes, Size1 announced {upload.size1}",
                code=BAD_REQUEST,
            )
        return bytes(upload.body)

    def _check_block(self, block: Block) -> None:
        if not 0 <= block.size_exp <= MAX_SIZE_EXP:
            raise UploadRefused(
                f"block size exponent {block.size_exp}: this server takes 0 to {MAX_SIZE_EXP} over UDP",
                code=BAD_REQUEST,
            )
        if block.more and len(block.payload) != block.size:
            raise UploadRefused(
                f"block {block.number} has {len(block.payload)} bytes, not its size {block.size}, "
                "though more follow",
                code=BAD_REQUEST,
            )
        if len(block.payload) > block.size:
            raise UploadRefused(
                f"block {block.number} has {len(block.payload)} bytes, over its size {block.size}",
                code=BAD_REQUEST,
            )

    def _check_total(self, size: int | None, what: str) -> None:
        if size is not None and size > self.max_body:
            raise UploadRefused(
                f"request {what} {size} bytes is over the {self.max_body}-byte limit",
                code=REQUEST_ENTITY_TOO_LARGE,
                size1=self.max_body,
            )
