"""A private Mosquitto, spawned from the system binary on a free port with a generated config.

The demo and the test fixtures use it; it can be stopped, killed (SIGKILL) and restarted on the
same port, with or without persistence, and it can require a password (a ``mosquitto_passwd`` file)
or speak TLS, with or without client certificates.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgekernel.lifeline import parent_death_preexec
from edgekernel.link.errors import BrokerError

INSTALL_HINT = (
    "Mosquitto is not installed. On Debian or Ubuntu run:\n"
    "    sudo apt-get install -y mosquitto mosquitto-clients\n"
    "(edgekernel starts its own broker on a free port; the system service need not run)."
)


MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
# A port found free may be taken by another program before mosquitto binds it (on a machine running
# many brokers at once): a broker whose port was chosen for it then tries another.
PORT_ATTEMPTS = 5


def find_mosquitto() -> Path:
    """The mosquitto binary, or `BrokerError` with the command that installs it."""
    for candidate in (shutil.which("mosquitto"), *MOSQUITTO_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise BrokerError(INSTALL_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class _PortInUse(BrokerError):
    """The port is taken: another may be chosen if it was ours to choose."""


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """The listener's TLS files (PEM). With `require_certificate`, a client must present a
    certificate signed by `ca_file`, and its common name becomes its user name (no password)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False

    def config_lines(self) -> list[str]:
        lines = [
            f"cafile {Path(self.ca_file).resolve()}",
            f"certfile {Path(self.cert_file).resolve()}",
            f"keyfile {Path(self.key_file).resolve()}",
        ]
        if self.require_certificate:
            lines += ["require_certificate true", "use_identity_as_username true"]
        return lines


class Mosquitto:
    """``with Mosquitto(workdir) as broker: broker.url`` — a broker of our own.

    `password_file` (made with ``mosquitto_passwd``) turns anonymous access off, `acl_file` confines
    each user (see `edgekernel.fleet.acl`); `tls` makes the
    listener speak TLS only, and `url` then starts with ``mqtts://``. `max_inflight_messages` is the
    Receive Maximum it announces in its CONNACK (and its own window towards each client), and
    `max_packet_size` its Maximum Packet Size (it disconnects a client that sends a larger packet).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        persistence: bool = False,
        autosave_interval_s: int = 1,
        extra_config: str = "",
        password_file: Path | None = None,
        acl_file: Path | None = None,
        tls: BrokerTls | None = None,
        max_inflight_messages: int = 100,
        max_packet_size: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self._may_move = port is None  # until it has listened once: clients then know its port
        self.port = port or free_port(host)
        self.persistence = persistence
        self.autosave_interval_s = autosave_interval_s
        self.extra_config = extra_config
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls = tls
        self.max_inflight_messages = max_inflight_messages
        self.max_packet_size = max_packet_size
        self.binary = find_mosquitto()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            *(self.tls.config_lines() if self.tls is not None else []),
            f"allow_anonymous {'false' if self.password_file is not None else 'true'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"autosave_interval {self.autosave_interval_s}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "max_queued_messages 1000000",
            f"max_inflight_messages {self.max_inflight_messages}",
            "set_tcp_nodelay true",
        ]
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if self.password_file is not None:
            lines.append(f"password_file {Path(self.password_file).resolve()}")
        if self.acl_file is not None:
            lines.append(f"acl_file {Path(self.acl_file).resolve()}")
        if os.geteuid() == 0:
            lines.append("user root")
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start(timeout)
            except _PortInUse:
                if not self._may_move or attempt == PORT_ATTEMPTS:
                    raise
                self.port = free_port(self.host)
            else:
                self._may_move = False
                return

    def _start(self, timeout: float) -> None:
        if port_open(self.host, self.port):
            raise _PortInUse(f"port {self.port} on {self.host} is already in use; choose another port")
        self._write_config()
        logged_before = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = subprocess.Popen(
            [str(self.binary), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=parent_death_preexec(),  # noqa: PLW1509 (it only calls prctl, looked up before the fork)
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                proc, self._proc = self._proc, None
                _, stderr = proc.communicate()  # closes the pipe; the reason is mostly in the log
                said = stderr.decode(errors="replace").strip()
                why = " | ".join(filter(None, [said, self._log_tail()]))
                taken = "Address already in use" in said + self._log_text(logged_before)
                raise (_PortInUse if taken else BrokerError)(f"mosquitto exited at start: {why}")
            if port_open(self.host, self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

    def _log_text(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): a persistent broker saves its state."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: whatever the broker held in memory since its last autosave is gone."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, *, kill: bool = False) -> None:
        self.kill() if kill else self.stop()
        self.start()

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        deadline = time.monotonic() + timeout
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
