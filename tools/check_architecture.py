"""Enforce edgekernel's one-way layering and module size limit (see ARCHITECTURE.md).

Usage: python tools/check_architecture.py [ROOT]

ROOT is the repository root (default: the folder above this script). Every module under
ROOT/edgekernel is parsed with `ast`. All imports count: top level, inside functions, under
`if TYPE_CHECKING:`, relative ones (resolved), and `importlib.import_module("edgekernel.…")`
calls with a literal name. Arrows go one way:

    errors <- protocol <- config <- link <- {device, gateway, fleet, firmware} <- cli

`device`, `gateway`, `fleet` and `firmware` never import each other; the top-level
`edgekernel/__init__.py` imports only `errors`. `lifeline` (a child dies with its parent) runs before
anything else is imported, so it imports nothing of ours; `link` and the layers above it may use it.
A module may pass 600 lines only when one of its first 5 lines says why, as `# size: <reason>`.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "edgekernel"
ROOT_LAYER = "edgekernel"  # the top-level __init__.py, as an importer
MAX_LINES = 600
SIZE_MARK = re.compile(r"^\s*#\s*size:\s*\S")
PEERS = frozenset({"device", "gateway", "fleet", "firmware"})
_BELOW_PEERS = frozenset({"link", "config", "protocol", "errors", "lifeline"})

# layer -> the layers it may import (besides itself); None means anything.
ALLOWED: dict[str, frozenset[str] | None] = {
    "errors": frozenset(),
    "lifeline": frozenset(),
    "protocol": frozenset({"errors"}),
    "config": frozenset({"protocol", "errors"}),
    "link": _BELOW_PEERS - {"link"},
    **dict.fromkeys(PEERS, _BELOW_PEERS),
    "cli": None,
    "__main__": None,  # `python -m edgekernel` is a program entry, like cli
    ROOT_LAYER: frozenset({"errors"}),
}


@dataclass(frozen=True, slots=True)
class Violation:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class Module:
    name: str  # dotted, e.g. edgekernel.protocol.codec
    path: Path
    is_package: bool

    @property
    def layer(self) -> str:
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else ROOT_LAYER


def discover(root: Path) -> list[Module]:
    """Every .py file under ROOT/edgekernel, as a module, sorted by path."""
    modules = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules.append(Module(".".join(parts), path, is_package))
    return modules


def target_layer(target: str) -> str:
    """The layer a dotted edgekernel name lives in."""
    parts = target.split(".")
    return parts[1] if len(parts) > 1 else ROOT_LAYER


def _resolve_base(module: Module, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    parts = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if node.level - 1 >= len(parts):
        return None
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def imports_of(module: Module, tree: ast.AST, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, dotted target) for every import in the module; targets may be outside edgekernel."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_base(module, node)
            if base is None:
                yield node.lineno, "." * node.level + (node.module or "")
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base
        elif isinstance(node, ast.Call) and _is_import_call(node):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value


def _is_import_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in {"import_module", "__import__"} and bool(node.args)


def rule_for(layer: str, target: str) -> str | None:
    """The rule that importing `target` from `layer` breaks, or None when it is allowed."""
    if target.startswith("."):
        return "relative import reaches above edgekernel"
    goal = target_layer(target)
    allowed = ALLOWED[layer]
    if goal == layer or allowed is None:
        return None
    if (goal if goal != ROOT_LAYER else "errors") in allowed:  # the bare package re-exports errors
        return None
    if layer in PEERS and goal in PEERS:
        return "device, gateway, fleet and firmware never import each other; they meet on the wire"
    if not allowed:
        return f"{layer} imports nothing from {PACKAGE}"
    who = f"{PACKAGE}/__init__.py" if layer == ROOT_LAYER else layer
    return f"{who} may import only {', '.join(sorted(allowed))}"


def check_module(module: Module, root: Path, known: set[str]) -> tuple[list[Violation], int]:
    """Violations in one module, and how many edgekernel imports it has."""
    rel = module.path.relative_to(root).as_posix()
    text = module.path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=rel)
    except SyntaxError as exc:
        return [Violation(rel, exc.lineno or 1, f"syntax error: {exc.msg}")], 0
    if module.layer not in ALLOWED:
        known_layers = ", ".join(sorted(ALLOWED))
        msg = f"{module.name} is in no layer ({known_layers}); add it to ARCHITECTURE.md and here"
        return [Violation(rel, 1, msg)], 0
    found: list[Violation] = []
    seen: set[tuple[int, str]] = set()
    for line, target in imports_of(module, tree, known):
        internal = target.startswith(".") or target.split(".")[0] == PACKAGE
        if not internal or (line, target) in seen:
            continue
        seen.add((line, target))
        rule = rule_for(module.layer, target)
        if rule:
            found.append(Violation(rel, line, f"{module.name} imports {target} ({rule})"))
    lines = text.splitlines()
    if len(lines) > MAX_LINES and not any(SIZE_MARK.match(x) for x in lines[:5]):
        msg = f"{module.name} has {len(lines)} lines (over {MAX_LINES}: split it, or say why"
        found.append(Violation(rel, 1, msg + " with '# size: <reason>' in its first 5 lines)"))
    return found, len(seen)


def check(root: Path) -> tuple[list[Violation], int, int]:
    """All violations under ROOT/edgekernel, the module count and the internal import count."""
    modules = discover(root)
    known = {m.name for m in modules}
    violations: list[Violation] = []
    imports = 0
    for module in modules:
        found, count = check_module(module, root, known)
        violations += found
        imports += count
    return violations, len(modules), imports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", nargs="?", type=Path, default=REPO)
    root: Path = parser.parse_args(argv).root
    if not (root / PACKAGE).is_dir():
        print(f"check_architecture: no {PACKAGE}/ under {root}", file=sys.stderr)
        return 2
    violations, modules, imports = check(root)
    for violation in violations:
        print(violation)
    if violations:
        print(f"architecture: {len(violations)} violation(s) in {modules} modules", file=sys.stderr)
        return 1
    print(
        f"architecture OK: {modules} modules, {imports} internal imports follow "
        f"protocol <- config <- link <- {{device, gateway, fleet, firmware}} <- cli; "
        f"none over {MAX_LINES} lines unmarked"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
