"""`edgekernel config`: validate firmware-config files and export their JSON Schemas."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgekernel.config.schema import write_schemas
from edgekernel.config.validate import (
    FLEET_FILE,
    FOLDERS,
    YAML_SUFFIXES,
    AgentCheck,
    ConfigKind,
    FileResult,
    kind_of,
    validate_file,
    validate_tree,
)

app = typer.Typer(help="Check firmware-config files and export their JSON Schemas.", no_args_is_help=True)

PathsArgument = Annotated[
    list[Path],
    typer.Argument(
        exists=True,
        metavar="PATH",
        help="Files or folders. A folder that holds fleet.yaml, devices/, gateways/ or agents/ is "
        "checked as a whole, with the cross-file rules (same fleet, unique ids and agent names, file "
        "named after the id).",
    ),
]
KindOption = Annotated[
    ConfigKind | None,
    typer.Option("--kind", help="Validate files as this kind instead of guessing from their folder."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable result.")]
OutOption = Annotated[Path, typer.Option("--out", help="Folder to write the schemas into.")]


@app.command()
def validate(paths: PathsArgument, kind: KindOption = None, as_json: JsonOption = False) -> None:
    """Validate config files; exit 0 when all are valid, 1 when any is not. Agent settings are checked
    against the agent's Config model where that agent is installed."""
    from edgekernel.device.agents.registry import settings_problems  # noqa: PLC0415 (only when used)

    results = _unique([result for path in paths for result in _validate_path(path, kind, settings_problems)])
    if as_json:
        typer.echo(json.dumps(_as_json(results), indent=2))
    else:
        _print_report(results)
    if not all(result.ok for result in results):
        raise typer.Exit(1)


@app.command()
def schema(out: OutOption = Path("firmware-config/schema")) -> None:
    """Write device, gateway, fleet and agent JSON Schemas for editors and other tools."""
    for path in write_schemas(out):
        typer.echo(str(path))


def _unique(results: list[FileResult]) -> list[FileResult]:
    by_file: dict[Path, FileResult] = {}
    for result in results:
        by_file.setdefault(result.file.resolve(), result)
    return list(by_file.values())


def _validate_path(path: Path, kind: ConfigKind | None, check: AgentCheck) -> list[FileResult]:
    if path.is_dir() and path.suffix in YAML_SUFFIXES:  # named like a file: refused as one
        return [validate_file(path, kind or kind_of(path) or ConfigKind.DEVICE, check)]
    if path.is_dir():
        return _validate_folder(path, kind, check)
    chosen = kind or kind_of(path)
    if chosen is None:
        raise typer.BadParameter(
            f"cannot tell what kind of config {path} is: it is not {FLEET_FILE} and not in "
            f"{' or '.join(f'{name}/' for name in FOLDERS)}; pass --kind",
            param_hint="PATH",
        )
    return [validate_file(path, chosen, check)]


def _validate_folder(folder: Path, kind: ConfigKind | None, check: AgentCheck) -> list[FileResult]:
    folder_kind = kind or FOLDERS.get(folder.name)
    is_tree = (folder / FLEET_FILE).exists() or any((folder / name).is_dir() for name in FOLDERS)
    if is_tree or folder_kind is None:
        return validate_tree(folder, check)
    files = sorted(path for path in folder.iterdir() if path.suffix in YAML_SUFFIXES)
    return [validate_file(file, folder_kind, check) for file in files]


def _print_report(results: list[FileResult]) -> None:
    console = Console(highlight=False)
    table = Table("kind", "result", "problems")
    table.columns[0].no_wrap = True
    table.add_column("file", overflow="fold")
    for result in results:
        verdict = Text("OK", style="green") if result.ok else Text("FAIL", style="red")
        count = str(len(result.error.problems)) if result.error else ""
        table.add_row(result.kind or "?", verdict, count, Text(str(result.file)))
    console.print(table)
    for result in results:
        for problem in result.error.problems if result.error else []:
            typer.echo(str(problem))
    failed = sum(not result.ok for result in results)
    noun = "file" if len(results) == 1 else "files"
    typer.echo(f"{len(results)} {noun}: {len(results) - failed} valid, {failed} invalid")


def _as_json(results: list[FileResult]) -> dict[str, object]:
    return {
        "ok": all(result.ok for result in results),
        "files": [
            {
                "file": str(result.file),
                "kind": result.kind.value if result.kind else None,
                "ok": result.ok,
                "problems": [
                    {**asdict(problem), "file": str(problem.file)}
                    for problem in (result.error.problems if result.error else [])
                ],
            }
            for result in results
        ],
    }
