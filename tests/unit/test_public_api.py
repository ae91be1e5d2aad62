"""Each package's public surface is explicit, importable, and its errors share one root."""

from __future__ import annotations

import importlib
import inspect

import pytest

from edgekernel.errors import EdgeKernelError

PACKAGES = [
    "edgekernel",
    "edgekernel.protocol",
    "edgekernel.config",
    "edgekernel.link",
    "edgekernel.link.coap",
    "edgekernel.device",
    "edgekernel.device.models",
    "edgekernel.gateway",
    "edgekernel.fleet",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_explicit_sorted_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), n))
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.{symbol} is in __all__ but missing"


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_exception_has_the_one_root(name: str) -> None:
    module = importlib.import_module(name)
    for symbol in module.__all__:
        value = getattr(module, symbol)
        if inspect.isclass(value) and issubclass(value, Exception):
            assert issubclass(value, EdgeKernelError), f"{name}.{symbol} is not an EdgeKernelError"


@pytest.mark.parametrize("name", PACKAGES)
def test_public_classes_and_functions_are_exported(name: str) -> None:
    """What a package's modules define publicly and its __init__ imports must be in __all__."""
    module = importlib.import_module(name)
    imported = {
        symbol
        for symbol, value in vars(module).items()
        if not symbol.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", "").startswith("edgekernel")
    }
    assert imported <= set(module.__all__), (
        f"{name} imports but does not export {imported - set(module.__all__)}"
    )
