"""Load a YAML config file into a pydantic model; every failure is a `ConfigError` with file:line.

The file is composed into a YAML node tree first, which gives each key path its line and column,
refuses duplicate keys and alias bombs, and only then constructed into plain data and validated
with ``context={"base_dir": <the file's folder>}`` so relative paths resolve against the file.
"""

from __future__ import annotations

import difflib
import os
import reprlib
import stat
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from edgekernel.config.errors import ConfigError, ConfigProblem
from edgekernel.config.files import describe_mode
from edgekernel.config.models import DeviceConfig, FleetConfig, GatewayConfig
from edgekernel.protocol.topics import ID_PATTERN

MAX_FILE_BYTES = 1024 * 1024
MAX_VALUES = 1_000_000

M = TypeVar("M", bound=BaseModel)
Key = tuple[str, ...]
Mark = tuple[int, int]
_EMPTY = "the file is empty: expected a mapping of keys such as `fleet: demo`"


@dataclass(frozen=True, slots=True)
class Located(Generic[M]):
    """A validated config together with the 1-based line and column of each key path in its file."""

    config: M
    file: Path
    marks: Mapping[Key, Mark]

    def problem(self, loc: tuple[str | int, ...], message: str) -> ConfigProblem:
        """A problem on the key at `loc`, or on its nearest parent that appears in the file."""
        line, column = _nearest(self.marks, loc)
        return ConfigProblem(self.file, line, column, _dotted(loc), message)


def load(path: str | os.PathLike[str], model_cls: type[M]) -> M:
    """Load and validate one YAML file as `model_cls`, or raise `ConfigError`."""
    return load_located(path, model_cls).config


def load_device(path: str | os.PathLike[str]) -> DeviceConfig:
    return load(path, DeviceConfig)


def load_gateway(path: str | os.PathLike[str]) -> GatewayConfig:
    return load(path, GatewayConfig)


def load_fleet(path: str | os.PathLike[str]) -> FleetConfig:
    return load(path, FleetConfig)


def load_located(path: str | os.PathLike[str], model_cls: type[M]) -> Located[M]:
    """Like `load`, keeping the position of every key for later cross-file checks."""
    file = Path(path)
    marks, data = _parse(file, _read_text(file))
    if data is None:
        _fail(file, _EMPTY, *marks[()])
    if not isinstance(data, dict):
        line, column = marks[()]
        found = "a list" if isinstance(data, list) else f"a single value ({type(data).__name__})"
        _fail(file, f"the top level must be a mapping of keys, not {found}", line, column)
    try:
        config = model_cls.model_validate(data, context={"base_dir": file.absolute().parent})
    except ValidationError as err:
        raise ConfigError(_translate(file, err, marks, model_cls)) from err
    return Located(config, file, marks)


def _fail(file: Path, message: str, line: int | None = None, column: int | None = None) -> NoReturn:
    raise ConfigError([ConfigProblem(file, line, column, "", message)])


def _read_text(file: Path) -> str:
    try:
        # Non-blocking, then fstat: a FIFO or a device is refused before anything waits on it.
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if isinstance(err, IsADirectoryError):
            _fail(file, "is a folder, not a config file")
        _fail(file, f"cannot read the file: {err.strerror or err}")
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            _fail(file, f"is {describe_mode(mode)}, not a config file")
        with os.fdopen(fd, "rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        _fail(file, f"cannot read the file: {err.strerror or err}")
    if len(raw) > MAX_FILE_BYTES:
        _fail(file, f"the file is larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line, column = raw.count(b"\n", 0, err.start) + 1, err.start - raw.rfind(b"\n", 0, err.start)
        _fail(file, f"not UTF-8 text: byte 0x{raw[err.start]:02x} cannot be decoded", line, column)


def _parse(file: Path, text: str) -> tuple[dict[Key, Mark], object]:
    loader: yaml.SafeLoader | None = None
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
        if root is None:
            _fail(file, _EMPTY, 1, 1)
        _check_expansion(file, root)
        marks = _index(file, root)
        try:
            return marks, loader.construct_document(root)
        except _ValueAt as err:
            _fail(file, f"a value cannot be read: {err.reason}", *_mark(err.node))
    except yaml.YAMLError as err:
        _yaml_failure(file, text, err)
    except RecursionError:
        _fail(file, "the YAML is nested too deeply")
    finally:
        if loader is not None:
            loader.dispose()


class _ValueAt(Exception):
    """A scalar PyYAML cannot construct (`!!timestamp x`, an integer of 5,000 digits), with its node."""

    def __init__(self, node: yaml.Node, reason: str) -> None:
        super().__init__(reason)
        self.node, self.reason = node, reason


class _Loader(yaml.SafeLoader):
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError, LookupError, AttributeError) as err:
            raise _ValueAt(node, _why(node, err)) from err


def _why(node: yaml.Node, err: Exception) -> str:
    shown = reprlib.repr(node.value) if isinstance(node, yaml.ScalarNode) else "the value"
    if node.tag == "tag:yaml.org,2002:timestamp":
        return f"{shown} is not a timestamp (YYYY-MM-DD, or YYYY-MM-DD HH:MM:SS)"
    if node.tag == "tag:yaml.org,2002:int":
        return "the integer has too many digits" if "digits" in str(err) else f"{shown} is not an integer"
    return f"{shown}: {err or type(err).__name__}"


def _yaml_failure(file: Path, text: str, err: yaml.YAMLError) -> NoReturn:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        context = err.context
        if context and err.context_mark and mark and err.context_mark.line != mark.line:
            context = f"{context} (line {err.context_mark.line + 1})"
        message = ", ".join(part for part in (context, err.problem) if part) or "invalid YAML"
        if mark is None:
            _fail(file, f"YAML syntax: {message}")
        _fail(file, f"YAML syntax: {message}", mark.line + 1, mark.column + 1)
    if isinstance(err, yaml.reader.ReaderError):
        line, column = text.count("\n", 0, err.position) + 1, err.position - text.rfind("\n", 0, err.position)
        _fail(file, f"YAML syntax: character U+{err.character:04X} is not allowed", line, column)
    _fail(file, f"YAML syntax: {err}")


def _mark(node: yaml.Node) -> Mark:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value


def _check_expansion(file: Path, root: yaml.Node) -> None:
    """Refuse aliases that contain themselves or expand to more than `MAX_VALUES` values."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[id(node)] > MAX_VALUES:
                _fail(file, f"the document expands to more than {MAX_VALUES} values", *_mark(node))
            continue
        if id(node) in sizes:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                _fail(file, "an alias refers to a value that contains it", *_mark(child))
            stack.append((child, False))


def _index(file: Path, root: yaml.Node) -> dict[Key, Mark]:
    """Map each key path to the position of its key; refuse duplicate and non-scalar keys."""
    marks: dict[Key, Mark] = {(): _mark(root)}
    problems: list[ConfigProblem] = []
    walked: set[int] = set()
    stack: list[tuple[Key, yaml.Node]] = [((), root)]
    while stack:
        path, node = stack.pop()
        if id(node) in walked:
            continue
        walked.add(id(node))
        for name, key_node, value in _entries(file, path, node, problems):
            marks.setdefault((*path, name), _mark(key_node))
            stack.append(((*path, name), value))
    if problems:
        raise ConfigError(problems)
    return marks


def _entries(
    file: Path, path: Key, node: yaml.Node, problems: list[ConfigProblem]
) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield str(index), item, item
        return
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[str, int] = {}
    merged: list[yaml.Node] = []
    for key, value in node.value:
        if key.tag == "tag:yaml.org,2002:merge":
            merged.extend(value.value if isinstance(value, yaml.SequenceNode) else [value])
            continue
        line, column = _mark(key)
        if not isinstance(key, yaml.ScalarNode):
            problems.append(ConfigProblem(file, line, column, _dotted(path), "a key must be a plain value"))
            continue
        if key.value in first_line:
            message = f"duplicate key {key.value!r} (first on line {first_line[key.value]})"
            problems.append(ConfigProblem(file, line, column, _dotted((*path, key.value)), message))
        first_line.setdefault(key.value, line)
        yield key.value, key, value
    for source in merged:
        yield from _entries(file, path, source, [])


def _nearest(marks: Mapping[Key, Mark], loc: tuple[str | int, ...]) -> Mark:
    key = tuple(str(part) for part in loc)
    while key not in marks:
        key = key[:-1]
    return marks[key]


def _dotted(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "[key]")


def _translate(
    file: Path, err: ValidationError, marks: Mapping[Key, Mark], model_cls: type[BaseModel]
) -> list[ConfigProblem]:
    problems = [
        ConfigProblem(
            file, *_nearest(marks, error["loc"]), _dotted(error["loc"]), _describe(model_cls, error)
        )
        for error in err.errors(include_url=False)
    ]
    return sorted(problems, key=lambda problem: (problem.line or 0, problem.column or 0))


def _describe(model_cls: type[BaseModel], error: ErrorDetails) -> str:
    kind, loc = error["type"], tuple(error["loc"])
    if kind == "missing":
        return "required key missing"
    if kind == "extra_forbidden":
        return _unknown_key(str(loc[-1]), _model_at(model_cls, loc[:-1]))
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == f"^{ID_PATTERN}$":
        message = "an id is 1-63 characters of a-z 0-9 _ -, starting with a-z or 0-9"
    else:
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message if kind == "value_error" else message + _got(error["input"], loc)


def _unknown_key(key: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return f"unknown key {key!r}"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}"


def _got(value: object, loc: tuple[str | int, ...]) -> str:
    if any("password" in str(part) for part in loc):
        return ""
    if isinstance(value, str | int | float | bool) or value is None:
        return f" (got {reprlib.repr(value)})"
    return ""


def _model_at(model_cls: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc`, through fields, list items and dict values."""
    options: list[Any] = [model_cls]
    for part in loc:
        options = [step for option in options for step in _step(option, part)]
    return next((option for option in options if _is_model(option)), None)


def _step(annotation: Any, part: str | int) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [step for option in get_args(annotation) for step in _step(option, part)]
    if _is_model(annotation) and part in annotation.model_fields:
        inner = annotation.model_fields[part].annotation
    elif get_origin(annotation) in (list, dict):
        inner = get_args(annotation)[-1]
    else:
        return []
    return list(get_args(inner)) if get_origin(inner) in (Union, types.UnionType) else [inner]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
