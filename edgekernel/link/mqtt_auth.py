"""The MQTT session's credentials: the password (given, or read from its file) and the TLS context."""

from __future__ import annotations

import ssl

from edgekernel.config.models import BrokerConfig
from edgekernel.link.errors import LinkError

__all__ = ["password", "tls_context"]


def password(broker: BrokerConfig) -> str | None:
    if broker.password is not None:
        return broker.password.get_secret_value()
    if broker.password_file is not None:
        try:
            return broker.password_file.read_text().strip()
        except OSError as err:
            raise LinkError(f"cannot read password_file {broker.password_file}: {err}") from err
    return None


def tls_context(broker: BrokerConfig) -> ssl.SSLContext:
    tls = broker.tls
    try:
        context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
        if tls is not None and tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError, ValueError) as err:
        raise LinkError(f"TLS setup failed: {err}") from err
    context.sslsocket_class = _ClosingSSLSocket
    return context


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the TLS handshake fails: paho drops the socket unclosed (ResourceWarning)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise
