"""The files a config names: each exists and is a regular file, and a model file matches its sha256.

This runs after the model validates (`check_files` on a `Located` config), so each problem points at
the line of the key that names the file. Nothing is opened before `stat` says it is a regular file:
a FIFO or a device would block the reader or never end.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from edgekernel.config.errors import ConfigError, ConfigProblem
from edgekernel.config.models import BrokerConfig, DeviceConfig, FleetConfig, GatewayConfig

if TYPE_CHECKING:
    from edgekernel.config.loader import Located

M = TypeVar("M", bound=BaseModel)

Loc = tuple[str | int, ...]
_CHUNK = 1 << 20


def regular_file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a file (missing, a folder, a FIFO…), or None when it can."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"no such file: {path}"
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}"
    if stat.S_ISREG(mode):
        return None
    return f"{path} is {describe_mode(mode)}, not a regular file"


def describe_mode(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def named_files(config: BaseModel) -> Iterator[tuple[Loc, Path, str | None]]:
    """(key path, file, expected sha256 or None) for each file `config` reads."""
    if isinstance(config, DeviceConfig | GatewayConfig | FleetConfig):
        yield from _broker_files(config.broker)
    if isinstance(config, DeviceConfig):
        for index, key in enumerate(config.fleet_keys):
            yield ("fleet_keys", index), key, None
        for index, spec in enumerate(config.kernel.models):
            yield ("kernel", "models", index, "file"), spec.file, spec.sha256
    if isinstance(config, FleetConfig) and config.signing_key is not None:
        yield ("signing_key",), config.signing_key, None


def _broker_files(broker: BrokerConfig) -> Iterator[tuple[Loc, Path, str | None]]:
    if broker.password_file is not None:
        yield ("broker", "password_file"), broker.password_file, None
    tls = broker.tls
    if tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, name)
            if path is not None:
                yield ("broker", "tls", name), path, None


def file_problems(located: Located[M]) -> list[ConfigProblem]:
    """What is wrong with the files the config names, each at the line of its key."""
    problems: list[ConfigProblem] = []
    for loc, path, sha256 in named_files(located.config):
        message = regular_file_problem(path)
        if message is None and sha256 is not None:
            try:
                actual = sha256_of(path)
            except OSError as err:
                message = f"cannot read {path}: {err.strerror or err}"
            else:
                if actual != sha256:
                    message = (
                        f"{path} does not match its sha256 (the config says {sha256[:12]}…, the file is "
                        f"{actual[:12]}…): another version, or a corrupt copy"
                    )
        if message is not None:
            problems.append(located.problem(loc, message))
    return problems


def load_checked(path: str | os.PathLike[str], model_cls: type[M]) -> M:
    """Load a config as `load` does, then check the files it names; raise `ConfigError` on either."""
    from edgekernel.config.loader import load_located  # noqa: PLC0415 (the loader imports this module)

    located = load_located(path, model_cls)
    problems = file_problems(located)
    if problems:
        raise ConfigError(problems)
    return located.config
