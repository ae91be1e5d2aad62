"""A Mosquitto ACL for a fleet: each device may publish only as itself and read only what is its own.

Devices log in with their device id as user name. Gateways read the whole fleet and write the
acknowledgements (and a CoAP-only device's status and reported); operators (the console, `fleet call`)
read and write everything of the fleet. Without it, anyone on the broker can speak for any device:
store a forged seq, or acknowledge, and so free, a message that was never stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgekernel.protocol.topics import check_id

REPLY_ROOT = "ek-reply"


def mosquitto_acl(fleet: str, *, gateways: Sequence[str] = (), operators: Sequence[str] = ()) -> str:
    """The text of a Mosquitto ``acl_file`` for `fleet`; `gateways` and `operators` are user names."""
    check_id(fleet, "fleet")
    for user in (*gateways, *operators):
        if not user or any(c.isspace() for c in user):
            raise ValueError(f"user name {user!r} is empty or holds white space")
    root = f"ek/v1/{fleet}"
    lines = [
        f"# edgekernel fleet {fleet}: devices log in with their device id as user name",
        *(f"pattern write {root}/%u/{kind}" for kind in ("status", "reported", "log")),
        *(f"pattern write {root}/%u/{kind}/#" for kind in ("telemetry", "events")),
        *(f"pattern read {root}/%u/{kind}" for kind in ("desired", "ack")),
        f"pattern read {root}/%u/cmd/#",
        f"pattern write {REPLY_ROOT}/{fleet}/#",
    ]
    for user in gateways:
        lines += [
            "",
            f"user {user}",
            f"topic read {root}/#",
            *(f"topic write {root}/+/{kind}" for kind in ("ack", "status", "reported")),
        ]
    for user in operators:
        lines += ["", f"user {user}", f"topic readwrite {root}/#", f"topic readwrite {REPLY_ROOT}/{fleet}/#"]
    return "\n".join(lines) + "\n"
