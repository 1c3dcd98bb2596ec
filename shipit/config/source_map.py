"""Read YAML into plain data while remembering where every key and list item was written.

PyYAML's own constructors throw line numbers away, so we compose the node tree and build the
data ourselves: that is what lets every later error (pydantic's, the resolver's) name a line.
Keys are kept as the text the user wrote (`on:` stays "on", not True), duplicate keys are
refused, and `${VAR}` / `${VAR:-default}` / `$$` are interpolated in string values.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from shipit.errors import ConfigError

Path = tuple[str | int, ...]

_MAP_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:set", "tag:yaml.org,2002:omap"}
_SEQ_TAGS = {"tag:yaml.org,2002:seq"}
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+\Z")


def one_line(text: str) -> str:
    """Error messages must stay on one line even when they quote user text."""
    return " ".join(text.split())


def fmt_path(path: Path) -> str:
    """`stages.prod.hosts[1].port`; odd keys are quoted so the path stays unambiguous."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _PLAIN_KEY.match(part) else repr(part)
            out += f".{text}" if out else text
    return out


@dataclass
class LineMap:
    """Where each path of the document was written: the key's line, or the list item's."""

    file: str
    lines: dict[Path, int] = field(default_factory=dict)
    # Values that came from the environment, as written: errors quote these, since the
    # expanded value may be a secret.
    written: dict[Path, str] = field(default_factory=dict)
    # The text of values YAML read as numbers, booleans or null: `1.10` is shown as written.
    raw: dict[Path, str] = field(default_factory=dict)
    # The environment the file was read with (None: os.environ), for checks made at resolve
    # time (the job store DSN variable).
    environ: Mapping[str, str] | None = None

    def line(self, path: Path) -> int | None:
        # Walk up to the nearest ancestor we know: a missing key is reported at its parent.
        for cut in range(len(path), -1, -1):
            found = self.lines.get(tuple(path[:cut]))
            if found is not None:
                return found
        return None

    def where(self, path: Path) -> str:
        line = self.line(path)
        return f"{self.file}:{line}" if line is not None else self.file


# Config objects are frozen pydantic models; their line maps live beside them, dropped when the
# config is garbage collected.
_ATTACHED: dict[int, LineMap] = {}


def attach(obj: object, lines: LineMap) -> None:
    key = id(obj)
    _ATTACHED[key] = lines
    weakref.finalize(obj, _ATTACHED.pop, key, None)


def lines_of(obj: object, file: str) -> LineMap:
    """The line map a loaded config carries, or an empty one for configs built in code."""
    return _ATTACHED.get(id(obj)) or LineMap(file)


def interpolate(text: str, environ: Mapping[str, str], where: str) -> str:
    """Expand `${VAR}`, `${VAR:-default}` and `$$`; any other `$` is left for the shell."""
    if "$" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 >= len(text) or text[i + 1] not in "${":
            out.append(ch)
            i += 1
            continue
        if text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        end = text.find("}", i + 2)
        if end < 0:
            raise ConfigError(one_line(f"{where}: unterminated '${{' in {text!r}"))
        body = text[i + 2 : end]
        name, sep, default = body.partition(":-")
        if not _NAME.match(name):
            raise ConfigError(
                one_line(
                    f"{where}: bad variable reference '${{{body}}}' (use ${{NAME}} or ${{NAME:-default}})"
                )
            )
        value = environ.get(name)
        if value is None or (sep and value == ""):
            if not sep:
                raise ConfigError(
                    one_line(
                        f"{where}: environment variable {name} is not set"
                        f" (set it, or write ${{{name}:-default}})"
                    )
                )
            value = default
        out.append(value)
        i = end + 1
    return "".join(out)


class _Builder:
    def __init__(self, file: str, environ: Mapping[str, str]) -> None:
        self.map = LineMap(file)
        self.environ = environ
        self.constructor = yaml.SafeLoader("")
        self.active: set[int] = set()

    def where(self, node: Node, path: Path) -> str:
        key = fmt_path(path)
        loc = f"{self.map.file}:{node.start_mark.line + 1}"
        return f"{loc}: {key}" if key else loc

    def build(self, node: Node, path: Path) -> Any:
        if id(node) in self.active:
            raise ConfigError(f"{self.where(node, path)}: an alias refers to itself")
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self.mapping(node, path)
            if isinstance(node, SequenceNode):
                return self.sequence(node, path)
        finally:
            self.active.discard(id(node))
        raise ConfigError(f"{self.where(node, path)}: unsupported YAML node")

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        try:
            value = self.constructor.construct_object(node, deep=True)
        except Exception as exc:  # bad !!int, unknown tags...: any of PyYAML's constructors
            reason = _problem(exc) if isinstance(exc, yaml.YAMLError) else str(exc)
            raise ConfigError(
                one_line(f"{self.where(node, path)}: cannot read value: {reason}")
            ) from None
        if not isinstance(value, str):
            self.map.raw[path] = str(node.value)
        else:
            expanded = interpolate(value, self.environ, self.where(node, path))
            if expanded != value:
                self.map.written[path] = value
            value = expanded
        return value

    def key_text(self, node: Node, path: Path) -> str:
        if not isinstance(node, ScalarNode):
            raise ConfigError(
                f"{self.where(node, path)}: a key must be plain text, not a list or mapping"
            )
        return str(node.value)

    def mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        if node.tag not in _MAP_TAGS:
            raise ConfigError(one_line(f"{self.where(node, path)}: unsupported tag {node.tag}"))
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.key_text(key_node, path)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    one_line(
                        f"{self.map.file}:{line}: {fmt_path((*path, key))}: duplicate key"
                        f" (first written on line {seen[key]})"
                    )
                )
            seen[key] = line
        try:
            # Resolves `<<: *base` merges in place; explicit keys then override merged ones.
            self.constructor.flatten_mapping(node)
        except yaml.YAMLError as exc:
            raise ConfigError(one_line(f"{self.where(node, path)}: {_problem(exc)}")) from None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.key_text(key_node, path)
            child = (*path, key)
            self.map.lines[child] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, child)
        return out

    def sequence(self, node: SequenceNode, path: Path) -> list[Any]:
        if node.tag not in _SEQ_TAGS:
            raise ConfigError(one_line(f"{self.where(node, path)}: unsupported tag {node.tag}"))
        out: list[Any] = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            self.map.lines[child] = item.start_mark.line + 1
            out.append(self.build(item, child))
        return out


def _problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem first, then what it was reading and where that started."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)
    problem = exc.problem or "invalid YAML"
    if exc.context:
        started = exc.context_mark
        same = started is None or (
            exc.problem_mark is not None and started.line == exc.problem_mark.line
        )
        at = "" if same else f" started on line {started.line + 1}"
        problem += f" ({exc.context}{at})"
    return problem


def read_yaml(text: str, file: str, environ: Mapping[str, str]) -> tuple[Any, LineMap]:
    """Parse one YAML document into plain data and the line of every key and item."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = _problem(exc)
        if exc.context == "expected a single document in the stream":
            problem = "a second YAML document ('---') is not allowed here"
        raise ConfigError(one_line(f"{file}{line}: {problem}")) from None
    except yaml.YAMLError as exc:  # ReaderError: a character YAML does not allow
        raise ConfigError(one_line(f"{file}: {exc}")) from None
    except RecursionError:
        raise ConfigError(f"{file}: the document is nested too deeply") from None
    builder = _Builder(file, environ)
    builder.map.environ = environ
    if node is None:
        return None, builder.map
    builder.map.lines[()] = node.start_mark.line + 1
    try:
        data = builder.build(node, ())
    except RecursionError:
        raise ConfigError(f"{file}: the document is nested too deeply") from None
    return data, builder.map
