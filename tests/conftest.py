"""Fixtures shared by every test: a real Mosquitto of our own on a free port."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekernel.lifeline import PARENT_ENV
from edgekernel.link import BrokerError, Mosquitto, find_mosquitto


@pytest.fixture(autouse=True, scope="session")
def programs_die_with_the_tests() -> Iterator[None]:
    """Every `python -m edgekernel` a test starts dies with the test run (`edgekernel.lifeline`), also
    when pytest itself is killed and no fixture gets to tear down: a test's child inherits this
    environment as our own programs give it to theirs (`child_env`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PARENT_ENV, str(os.getpid()))
        yield


@pytest.fixture(scope="session")
def mosquitto_binary() -> Path:
    try:
        return find_mosquitto()
    except BrokerError as err:
        pytest.fail(str(err))


@pytest.fixture
def broker(tmp_path: Path, mosquitto_binary: Path) -> Iterator[Mosquitto]:
    """A fresh broker for one test, without persistence; the test may stop, kill or restart it."""
    with Mosquitto(tmp_path / "broker") as instance:
        yield instance


@pytest.fixture
def persistent_broker(tmp_path: Path, mosquitto_binary: Path) -> Iterator[Mosquitto]:
    """A fresh broker that saves its state (autosave every second) across restarts."""
    with Mosquitto(tmp_path / "broker", persistence=True) as instance:
        yield instance


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an `async def` test in a fresh event loop (the project needs no asyncio plugin)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**args))
    return True
