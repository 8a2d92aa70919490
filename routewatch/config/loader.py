"""Loading probes.yaml: YAML with line numbers and hard limits, then validation.

Every problem in a file is reported at once, one line each, as
``probes.yaml:14: routers[0].models[2]: duplicate model "x"``. The loader
refuses files that are too large, too deep or that expand through aliases
past a bound, before building anything from them.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from routewatch.config.costs import budget_overrun
from routewatch.config.model import (
    PROBLEMS_ERROR_TYPE,
    UNKNOWN_KEY_HINTS,
    Config,
    ConfigError,
    ConfigIssue,
    Loc,
    format_path,
)

MAX_FILE_BYTES = 1024 * 1024
"""A probes.yaml larger than this is refused unread: real ones are a few KiB."""
MAX_DEPTH = 64
"""Collections nested deeper than this are refused (the parser would otherwise recurse without bound)."""
MAX_NODES = 100_000
"""Values in the file with every alias expanded; more is refused (a "billion laughs" file)."""


class _Refused(yaml.MarkedYAMLError):
    """The file breaks one of the loader's limits or holds a value YAML cannot construct."""

    def __init__(self, mark: yaml.Mark, problem: str, field: Loc | None = None) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.field = field


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that also records the line of every mapping key and sequence item.

    It also bounds what a small file can cost: nesting depth, the number of values
    with aliases expanded (counted while composing, before anything is expanded),
    and it refuses lone surrogates, which are not text. Values YAML cannot construct
    (a date like 2025-13-01) are reported at their line.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._expanded = 0  # values so far, each alias counted as the whole subtree it repeats
        self._sizes: dict[int, int] = {}  # id(node) -> its value count with aliases expanded
        self._paths: dict[int, Loc] = {}  # id(node) -> where _index first met it

    @classmethod
    def load_text(cls, text: str) -> tuple[Any, dict[Loc, int], list[tuple[Loc, int, int]]]:
        """Return (data, {path: line}, [(path, line, first line)] for duplicate keys).

        Raises yaml.YAMLError; data is None for an empty document.
        """
        loader = cls(text)  # already reads, and may reject, the text
        try:
            return loader._load_with_lines()
        finally:
            loader.dispose()

    def _load_with_lines(self) -> tuple[Any, dict[Loc, int], list[tuple[Loc, int, int]]]:
        node = self.get_single_node()
        lines: dict[Loc, int] = {}
        dupes: list[tuple[Loc, int, int]] = []
        if node is None:
            return None, lines, dupes
        lines[()] = node.start_mark.line + 1
        self._paths[id(node)] = ()
        self._index(node, (), lines, dupes)
        return self.construct_document(node), lines, dupes

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node:
        """Compose as SafeLoader does, within the depth and expansion limits."""
        # (``index`` is a mapping value's key node in fact; the stubs say int.)
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in PyYAML's stubs
        mark = _start(event)
        if isinstance(event, yaml.AliasEvent):
            node = self._compose(parent, index)
            size = self._sizes.get(id(node))
            if size is None:  # the anchored node is still open: the alias is inside it
                raise _Refused(
                    mark,
                    f"alias *{event.anchor} is inside its own anchor: a recursive structure is not a configuration",
                )
            self._count(size, mark, f"alias *{event.anchor} repeats {size:,} values")
            return node
        self._count(1, mark, None)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(mark, f"nested more than {MAX_DEPTH} levels deep")
        try:
            node = self._compose(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = 1 + self._children_size(node)
        if isinstance(node, yaml.ScalarNode) and _has_surrogate(node.value):
            raise _Refused(mark, "a lone surrogate escape (\\ud800-\\udfff) is not a character")
        return node

    def _compose(self, parent: yaml.Node | None, index: int) -> yaml.Node:
        node = super().compose_node(parent, index)
        # PyYAML's compose_node returns a node or raises; its stubs allow None.
        assert node is not None
        return node

    def _children_size(self, node: yaml.Node) -> int:
        if isinstance(node, yaml.SequenceNode):
            return sum(self._sizes[id(item)] for item in node.value)
        if isinstance(node, yaml.MappingNode):
            return sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        return 0

    def _count(self, values: int, mark: yaml.Mark, alias: str | None) -> None:
        self._expanded += values
        if self._expanded > MAX_NODES:
            why = f" ({alias}): use aliases only for small repeated parts" if alias else ""
            raise _Refused(mark, f"the file expands to more than {MAX_NODES:,} values{why}")

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct as SafeLoader does; a value that cannot be built is reported at its line."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # e.g. datetime(2025, 13, 1), a 5,000-digit integer
            kind = {"timestamp": "date", "int": "number", "float": "number"}.get(node.tag.rsplit(":", 1)[-1], "value")
            reason = str(exc).split("; ")[0]  # Python's advice on its own limits is no help here
            raise _Refused(
                node.start_mark, f"invalid {kind} {_excerpt(node.value)}: {reason}", self._paths.get(id(node))
            ) from None

    def _index(
        self,
        node: yaml.Node,
        path: Loc,
        lines: dict[Loc, int],
        dupes: list[tuple[Loc, int, int]],
    ) -> None:
        # Aliases are walked once per use: compose_node has bounded that total, and refused cycles.
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key_node, value_node in node.value:
                # Merged keys (<<) fall back to this mapping's line, which is fine.
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                key_path = (*path, key)
                if key in seen:
                    dupes.append((key_path, line, seen[key]))
                seen[key] = lines[key_path] = line  # YAML keeps the last one
                self._paths.setdefault(id(value_node), key_path)
                self._index(value_node, key_path, lines, dupes)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                item_path = (*path, i)
                lines[item_path] = item.start_mark.line + 1
                self._paths.setdefault(id(item), item_path)
                self._index(item, item_path, lines, dupes)


def _start(event: yaml.Event) -> yaml.Mark:
    """Where ``event`` starts (SafeLoader's pure-Python parser marks every event)."""
    mark = event.start_mark
    assert isinstance(mark, yaml.Mark), "the C parser's marks are not used here"
    return mark


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _excerpt(value: object) -> str:
    text = str(value)
    return json.dumps(text if len(text) <= 40 else text[:40] + "…", ensure_ascii=False)


def load_config(path: str | Path, region: str | None = None) -> Config:
    """Read and validate a probes.yaml; raises ConfigError naming the file as given.

    A file over MAX_FILE_BYTES is refused after reading only that much.
    ``region`` (``ROUTEWATCH_REGION``), when given, replaces the file's ``region``:
    one file serves the probers of every region, each told its own.
    """
    filename = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(filename, None, None, f"cannot read: {reason}")]) from None
    _check_size(len(raw), filename)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"cannot read: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        raise ConfigError([ConfigIssue(filename, None, None, message)]) from None
    config = parse_config(text, filename)
    return config if region is None else config.model_copy(update={"region": region})


def _check_size(size: int, filename: str) -> None:
    if size > MAX_FILE_BYTES:
        message = f"the file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB: a probes.yaml is a few KiB"
        raise ConfigError([ConfigIssue(filename, None, None, message)])


def parse_config(text: str, filename: str) -> Config:
    """Validate YAML text; raises ConfigError with every issue, ordered by line."""
    if len(text) > MAX_FILE_BYTES // 4:  # only then can its UTF-8 form be too large
        _check_size(len(text.encode("utf-8", "surrogatepass")), filename)
    try:
        data, lines, dupes = _LineLoader.load_text(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(filename, text, exc)]) from None
    if data is None:
        message = 'the file is empty: it needs at least "routers" and "prompts"'
        raise ConfigError([ConfigIssue(filename, None, None, message)])
    issues = [
        ConfigIssue(
            filename, line, format_path(loc), f"duplicate key (first at line {first}): YAML keeps only the last"
        )
        for loc, line, first in dupes
    ]
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # `from None`: pydantic's own text echoes input values, which may be secrets.
        issues += _validation_issues(exc, filename, lines)
        config = None
    if config is not None and (overrun := budget_overrun(config)):
        loc: Loc = ("budget", "usd_per_day")
        issues.append(ConfigIssue(filename, _line_of(loc, lines), format_path(loc), overrun))
    if issues:
        issues.sort(key=lambda issue: issue.line or 0)
        raise ConfigError(issues) from None
    assert config is not None
    return config


def _yaml_issue(filename: str, text: str, exc: yaml.YAMLError) -> ConfigIssue:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return ConfigIssue(filename, line, "(yaml)", f"unacceptable character #x{exc.character:04x}: {exc.reason}")
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        message = exc.problem or "invalid YAML"
        if exc.context:
            where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            message += f" ({exc.context}{where})"
        field = format_path(exc.field) if isinstance(exc, _Refused) and exc.field else "(yaml)"
        return ConfigIssue(filename, exc.problem_mark.line + 1, field, message)
    return ConfigIssue(filename, None, "(yaml)", str(exc).splitlines()[0])


def _validation_issues(exc: ValidationError, filename: str, lines: dict[Loc, int]) -> list[ConfigIssue]:
    found: list[tuple[Loc, str]] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        if error["type"] == PROBLEMS_ERROR_TYPE:
            found += [(loc + sub, message) for sub, message in error["ctx"]["problems"]]
        elif loc and loc[-1] == "[key]":  # a dict key of the wrong type
            found.append((loc[:-1], "key: " + error["msg"]))
        else:
            found.append((loc, _message(error, loc)))
    return [ConfigIssue(filename, _line_of(loc, lines), format_path(loc) or None, msg) for loc, msg in found]


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    # A missing field has no line of its own: use its nearest parent that exists.
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _message(error: Any, loc: Loc) -> str:
    kind: str = error["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        name = loc[-1]
        if name in UNKNOWN_KEY_HINTS:
            return UNKNOWN_KEY_HINTS[str(name)]
        parent = _model_at(loc[:-1])
        allowed = f" (allowed: {', '.join(parent.model_fields)})" if parent else ""
        return f'unknown field "{name}"{allowed}'
    if kind == "model_type":
        model = _model_at(loc)
        fields = f" ({', '.join(model.model_fields)})" if model else ""
        return f"expected a mapping of fields{fields}, got {_describe(error['input'])}"
    msg: str = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class that validates the value at ``loc``, if it is one."""
    current: Any = Config
    for part in loc:
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[str(part)].annotation
        elif origin is list:
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
