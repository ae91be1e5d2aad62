"""``python -m edgekernel.link.coap observe URI``: print each notification of an observed resource.

    $ python -m edgekernel.link.coap observe coap://dev-01.local/telemetry/vibration
    $ python -m edgekernel.link.coap observe --count 3 coap://dev-01.local/telemetry/vibration

One line of JSON a notification (CBOR is asked for, then shown as JSON; bytes as hex), until the
server ends the observation, `--count` notifications came, or Ctrl-C. Exit code 0, or 1 with the
error on stderr (a 4.04 for an unknown stream, no answer within `--timeout` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from edgekernel.link.coap.client import CoapClient
from edgekernel.link.errors import CoapError
from edgekernel.protocol import Encoding, ProtocolError


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


async def observe(uri: str, *, count: int | None, timeout: float) -> int:
    seen = 0
    async with CoapClient(timeout=timeout) as client, client.observe(uri, accept=Encoding.JSON) as updates:
        async for notification in updates:
            try:
                line = json.dumps(_plain(notification.data()), separators=(",", ":"))
            except ProtocolError:
                line = notification.payload.decode("utf-8", "replace")
            print(line, flush=True)
            seen += 1
            if count is not None and seen >= count:
                break
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgekernel.link.coap", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    watch = commands.add_parser("observe", help="print each notification of a resource, one JSON line each")
    watch.add_argument("uri", help="coap://HOST[:PORT]/telemetry/STREAM")
    watch.add_argument("--count", type=int, default=None, help="stop after this many notifications")
    watch.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the first answer")
    args = parser.parse_args(argv)
    try:
        asyncio.run(observe(args.uri, count=args.count, timeout=args.timeout))
    except CoapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
