"""`ConfigError`: a config file that does not validate, with file:line for each problem."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgekernel.errors import EdgeKernelError


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file.

    `line` and `column` are 1-based and None when the problem has no place in the file (say, the
    file cannot be read). `path` is the dotted key path (``sensors.0.rate_hz``), empty when the
    problem concerns the whole file.
    """

    file: Path
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = str(self.file) if self.line is None else f"{self.file}:{self.line}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(EdgeKernelError):
    """One or more config files do not validate; ``str()`` gives one line per problem."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        if not self.problems:
            raise ValueError("a ConfigError needs at least one problem")
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[ConfigProblem]]]:
        return (type(self), (self.problems,))
