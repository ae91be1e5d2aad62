"""Tables that fit the terminal: columns are dropped, least important first, rather than values cut.

A list value is one item a line, so a column is as narrow as its longest item; no column is ever
shortened below its widest word, so what a table shows is whole (``--json`` shows everything).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

# A rounded or heavy box draws one border line per column plus one, with one space each side of a cell.
_BORDER = 1
_PER_COLUMN = 3


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    keep: int  # the lower, the sooner the column is dropped on a narrow terminal
    justify: str = "left"


def fitted_table(
    columns: Sequence[Column], rows: Sequence[Sequence[Text]], width: int, *, title: str | None = None
) -> tuple[Table, list[str]]:
    """A table of the columns that fit `width`, and the headers of the columns it leaves out."""
    shown = list(range(len(columns)))
    for index in sorted(shown, key=lambda i: columns[i].keep):
        if _width(columns, rows, shown) <= width or len(shown) == 1:
            break
        shown.remove(index)
    table = Table(title=title, title_justify="left")
    for index in shown:
        column = columns[index]
        table.add_column(
            column.header,
            justify="right" if column.justify == "right" else "left",
            min_width=_needed(column, rows, index),
            overflow="fold",  # wider than the terminal even alone: wrapped whole, never "…"
        )
    for row in rows:
        table.add_row(*(row[index] for index in shown))
    hidden = [columns[i].header for i in range(len(columns)) if i not in shown]
    return table, hidden


def _needed(column: Column, rows: Sequence[Sequence[Text]], index: int) -> int:
    widest = max((_line_width(row[index]) for row in rows), default=0)
    return max(len(column.header), widest)


def _line_width(text: Text) -> int:
    return max((line.cell_len for line in text.split("\n")), default=0)


def _width(columns: Sequence[Column], rows: Sequence[Sequence[Text]], shown: Sequence[int]) -> int:
    return _BORDER + sum(_needed(columns[i], rows, i) + _PER_COLUMN for i in shown)


def print_fitted(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[Text]],
    *,
    title: str | None = None,
) -> None:
    table, hidden = fitted_table(columns, rows, console.width, title=title)
    console.print(table)
    if hidden:
        console.print(
            f"[dim]hidden at this width: {', '.join(hidden)} (--json shows all)[/]",
            highlight=False,
        )


def key_values(title: str, values: Mapping[str, object], *, header: str = "counter") -> Table:
    """Two columns, name and value; nested values as compact text."""
    table = Table(title=title, title_justify="left")
    table.add_column(header, overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for name, value in values.items():
        table.add_row(Text(str(name)), Text(_compact(value)))
    return table


def _compact(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, dict):
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_compact(v) for v in value) or "-"
    return str(value)
