"""User name and password, TLS and client certificates between `MqttSession` and a real Mosquitto.

A throwaway CA, server and client certificates are made with the ``openssl`` CLI, and the password
file with ``mosquitto_passwd``; every broker is our own, on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgekernel.config import BrokerConfig
from edgekernel.config.models import ReconnectConfig, TlsConfig
from edgekernel.link import LinkError, Mosquitto, MqttSession, NotConnectedError, SessionStats
from edgekernel.link.broker import BrokerTls

from .helpers import wait_until

pytestmark = pytest.mark.integration

FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)
TIMEOUT = 60.0  # positive waits only: generous for a loaded machine
USER, PASSWORD = "dev-01", "s3cret with spaces"
REFUSED = re.compile(r"refused the connection: (Not authorized|Bad user name or password)", re.IGNORECASE)
VERIFY_FAILED = re.compile(r"cannot reach mqtts://.*CERTIFICATE_VERIFY_FAILED")

_serials = itertools.count(1000)


# -- a throwaway PKI ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Pair
    server: Pair  # for 127.0.0.1 and localhost
    other_name: Pair  # for other.example only
    client: Pair  # CN=device-07, for client authentication
    rogue_ca: Pair  # a CA nobody trusts
    rogue_client: Pair  # signed by the rogue CA


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)


def _issue(directory: Path, name: str, common_name: str, extensions: str, ca: Pair | None) -> Pair:
    """A P-256 key and a one-day certificate, self-signed when `ca` is None."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    request, ext_file = directory / f"{name}.csr", directory / f"{name}.ext"
    config = directory / "req.cnf"
    config.write_text("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n")
    ext_file.write_text(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", pair.key, "-out", request, "-subj", f"/CN={common_name}", "-config", config,
    )  # fmt: skip
    signer = ["-signkey", pair.key] if ca is None else ["-CA", ca.cert, "-CAkey", ca.key]
    _openssl(
        "x509", "-req", "-in", request, *signer, "-set_serial", str(next(_serials)),
        "-days", "1", "-extfile", ext_file, "-out", pair.cert,
    )  # fmt: skip
    return pair


CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
LEAF_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"


def _server_ext(*names: str) -> str:
    return LEAF_EXT + f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(names)}\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _issue(d, "ca", "edgekernel test CA", CA_EXT, None)
    rogue_ca = _issue(d, "rogue-ca", "edgekernel test CA", CA_EXT, None)  # same name, other key
    client_ext = LEAF_EXT + "extendedKeyUsage=clientAuth\n"
    return Pki(
        ca=ca,
        server=_issue(d, "server", "localhost", _server_ext("DNS:localhost", "IP:127.0.0.1"), ca),
        other_name=_issue(d, "other", "other.example", _server_ext("DNS:other.example"), ca),
        client=_issue(d, "client", "device-07", client_ext, ca),
        rogue_ca=rogue_ca,
        rogue_client=_issue(d, "rogue-client", "device-07", client_ext, rogue_ca),
    )


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    mosquitto_passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([mosquitto_passwd, "-c", "-b", str(path), USER, PASSWORD], check=True, capture_output=True)
    return path


@pytest.fixture
def auth_broker(tmp_path: Path, mosquitto_binary: Path, password_file: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "auth-broker", password_file=password_file) as broker:
        yield broker


def _tls_broker(workdir: Path, ca: Pair, server: Pair, *, require_certificate: bool = False) -> Mosquitto:
    tls = BrokerTls(ca.cert, server.cert, server.key, require_certificate=require_certificate)
    return Mosquitto(workdir, tls=tls)


@pytest.fixture
def tls_broker(tmp_path: Path, mosquitto_binary: Path, pki: Pki) -> Iterator[Mosquitto]:
    with _tls_broker(tmp_path / "tls-broker", pki.ca, pki.server) as broker:
        yield broker


def _tls(ca: Pair | None, client: Pair | None = None, *, insecure: bool = False) -> TlsConfig:
    return TlsConfig(
        ca_file=ca.cert if ca else None,
        cert_file=client.cert if client else None,
        key_file=client.key if client else None,
        insecure=insecure,
    )


# -- what every test checks ---------------------------------------------------------------------


async def _round_trip(config: BrokerConfig, client_id: str = "sec") -> None:
    """Connect, publish to a topic we subscribe to, receive it back."""
    topic = f"sec/{client_id}"
    async with MqttSession(
        config, client_id=client_id, subscriptions=[(topic, 1)], persistent=False
    ) as session:
        await session.wait_connected(TIMEOUT)
        await asyncio.wait_for(session.publish(topic, b"hello", qos=1), TIMEOUT)
        async with contextlib.aclosing(session.messages()) as stream:
            message = await asyncio.wait_for(anext(stream), TIMEOUT)
        assert (message.topic, message.payload) == (topic, b"hello")


def _retried(stats: SessionStats) -> bool:
    return stats.connect_failures >= 2


def _failed(stats: SessionStats) -> bool:  # the broker hangs up after the TLS handshake (TLS 1.3)
    return stats.last_error is not None


async def _refused(config: BrokerConfig, until: Callable[[SessionStats], bool] = _retried) -> str:
    """The session never connects, keeps retrying without crashing, and says why; returns that."""
    async with MqttSession(config, client_id="intruder", persistent=False) as session:
        await wait_until(lambda: until(session.stats), TIMEOUT, "failed connection attempts")
        with pytest.raises(NotConnectedError) as caught:
            await session.wait_connected(0.1)
        assert not session.connected
        assert session.stats.connects == 0
        return str(caught.value)


# -- user name and password ---------------------------------------------------------------------


def test_the_right_user_name_and_password_connect(auth_broker: Mosquitto) -> None:
    config = BrokerConfig(url=auth_broker.url, username=USER, password=PASSWORD, reconnect=FAST)
    asyncio.run(_round_trip(config))


@pytest.mark.parametrize(
    ("username", "password"),
    [(USER, "wrong"), ("nobody", PASSWORD), (None, None)],
    ids=["wrong-password", "unknown-user", "anonymous"],
)
def test_a_refused_login_is_named_and_retried(
    auth_broker: Mosquitto, username: str | None, password: str | None
) -> None:
    config = BrokerConfig(url=auth_broker.url, username=username, password=password, reconnect=FAST)
    why = asyncio.run(_refused(config, lambda stats: stats.connect_failures >= 3))
    assert REFUSED.search(why), why
    assert auth_broker.url in why


def test_the_password_is_read_from_password_file(auth_broker: Mosquitto, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD + "\n")  # as `echo` writes it: the newline is not part of it
    config = BrokerConfig(url=auth_broker.url, username=USER, password_file=secret, reconnect=FAST)
    asyncio.run(_round_trip(config))


def test_a_password_file_that_went_missing_is_a_link_error_naming_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD)
    config = BrokerConfig(username=USER, password_file=secret)  # the model checks it exists...
    secret.unlink()  # ...but it can go away before the session reads it
    with pytest.raises(LinkError, match=re.escape(str(secret))):
        MqttSession(config, client_id="dev")


# -- TLS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_mqtts_with_the_ca_file_connects(tls_broker: Mosquitto, pki: Pki, host: str) -> None:
    assert tls_broker.url.startswith("mqtts://")
    url = f"mqtts://{host}:{tls_broker.port}"
    asyncio.run(_round_trip(BrokerConfig(url=url, tls=_tls(pki.ca), reconnect=FAST)))


@pytest.mark.parametrize("trusted", ["rogue-ca", "system-cas"])
def test_mqtts_without_the_right_ca_fails_clearly(tls_broker: Mosquitto, pki: Pki, trusted: str) -> None:
    tls = _tls(pki.rogue_ca) if trusted == "rogue-ca" else None
    why = asyncio.run(_refused(BrokerConfig(url=tls_broker.url, tls=tls, reconnect=FAST)))
    assert VERIFY_FAILED.search(why), why


def test_mqtt_to_a_tls_listener_does_not_connect(tls_broker: Mosquitto) -> None:
    plain = tls_broker.url.replace("mqtts://", "mqtt://")
    asyncio.run(_refused(BrokerConfig(url=plain, reconnect=FAST), _failed))


def test_insecure_skips_the_host_name_check_but_not_the_ca(tmp_path: Path, pki: Pki) -> None:
    with _tls_broker(tmp_path / "broker", pki.ca, pki.other_name) as broker:  # a cert for other.example
        strict = BrokerConfig(url=broker.url, tls=_tls(pki.ca), reconnect=FAST)
        why = asyncio.run(_refused(strict))
        assert VERIFY_FAILED.search(why), why
        assert re.search("(Hostname|IP address) mismatch", why), why

        asyncio.run(
            _round_trip(BrokerConfig(url=broker.url, tls=_tls(pki.ca, insecure=True), reconnect=FAST))
        )

        untrusted = BrokerConfig(url=broker.url, tls=_tls(pki.rogue_ca, insecure=True), reconnect=FAST)
        why = asyncio.run(_refused(untrusted))
        assert VERIFY_FAILED.search(why), why


def test_a_broker_that_requires_client_certificates(tmp_path: Path, pki: Pki) -> None:
    with _tls_broker(tmp_path / "broker", pki.ca, pki.server, require_certificate=True) as broker:
        asyncio.run(_round_trip(BrokerConfig(url=broker.url, tls=_tls(pki.ca, pki.client), reconnect=FAST)))

        for client in (None, pki.rogue_client):  # no certificate, or one the broker's CA did not sign
            config = BrokerConfig(url=broker.url, tls=_tls(pki.ca, client), reconnect=FAST)
            asyncio.run(_refused(config, _failed))
