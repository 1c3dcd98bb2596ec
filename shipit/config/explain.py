"""Turn a pydantic ValidationError into the one line a user needs: file:line: key.path: message.

pydantic reports every problem, in model field order, with union branches spelled into the
location (`hosts.1.HostEntry.prot`). A user wants the first problem in the file, named by
the keys they wrote, with a hint when they misspelled something.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from shipit.config.source_map import LineMap, Path, fmt_path, one_line

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}

_BOUNDS = {
    "greater_than": "greater than",
    "greater_than_equal": "at least",
    "less_than": "less than",
    "less_than_equal": "at most",
}


def describe(value: Any) -> str:
    """How a value the user wrote is shown back to them."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def closest(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def suggest(word: str, choices: list[str]) -> str:
    close = closest(word, choices)
    return f" (did you mean {close!r}?)" if close else ""


def _split_loc(loc: tuple[Any, ...], data: Any, kind: str) -> tuple[Path, Path]:
    """(path in the user's data, the same with pydantic's union-branch tags kept)."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif last and kind == "missing":
            pass
        elif isinstance(part, str):
            continue  # a union branch tag such as 'HostEntry' or 'str'
        path.append(part)
    return tuple(path), tuple(loc)


def _value_at(data: Any, path: Path) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _unwrap(tp: Any) -> Any:
    """`Annotated[X, Field(discriminator=...)]` -> X."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _discriminator(tp: Any) -> str | None:
    """The key a tagged union picks its member by (`type` for jobs.adapters items)."""
    if typing.get_origin(tp) is not typing.Annotated:
        return None
    for meta in typing.get_args(tp)[1:]:
        found = getattr(meta, "discriminator", None)
        if isinstance(found, str):
            return found
    return None


def _tags(members: list[Any], key: str) -> dict[str, Any]:
    """Tag value -> member model of a union tagged by `key` (a Literal field in each member)."""
    out: dict[str, Any] = {}
    for member in members:
        if isinstance(member, type) and issubclass(member, BaseModel) and key in member.model_fields:
            for value in typing.get_args(member.model_fields[key].annotation):
                out.setdefault(str(value), member)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _type_at(root: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The annotation that the (tagged) pydantic location points at, or None."""
    tp: Any = root
    parts = list(loc)
    while parts:
        members = _members(tp)
        if len(members) > 1:
            key = _discriminator(tp)
            by_tag = _tags(members, key) if key else {}
            tagged = [m for m in members if _type_name(m) == parts[0]]
            if tagged or parts[0] in by_tag:
                # pydantic names the branch it tried: a class name, or a tagged union's tag.
                tp = tagged[0] if tagged else by_tag[parts[0]]
                parts.pop(0)
                continue
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            tp = models[0] if models else members[0]
            continue
        tp = members[0]
        part = parts.pop(0)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif origin in (list, tuple):
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    return tp


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that the (tagged) location points into, for listing its valid keys."""
    members = _members(_type_at(root, loc))
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    return models[0] if models else None


def _tag_message(
    err: dict[str, Any], path: Path, tagged: Path, root: type[BaseModel], data: Any, lines: LineMap
) -> tuple[Path, str]:
    """A tagged union item (a jobs.adapters entry) whose `type:` is missing or unknown: name the
    key, the value and the choices, instead of pydantic's 'Input tag ... found using ...'."""
    tp = _type_at(root, tagged)
    key = _discriminator(tp) or str(err.get("ctx", {}).get("discriminator", "type")).strip("'")
    tags = list(_tags(_members(tp), key)) if tp is not None else []
    choices = f"use one of {', '.join(tags)}" if tags else ""
    container = next((p for p in reversed(path) if isinstance(p, str)), "")
    noun = container[:-1] if container.endswith("s") else (container or "value")
    where = (*path, key)
    if err["type"] == "union_tag_not_found":
        return where, f"required key is missing ({choices})" if choices else "required key is missing"
    value = _value_at(data, where)
    if isinstance(value, dict | list) or value is None:
        return where, f"expected one of {', '.join(tags)}, got {_shown(data, where, lines)}"
    close = difflib.get_close_matches(str(value), tags, n=1, cutoff=0.6) if where not in lines.written else []
    hint = f"did you mean {close[0]!r}?" if close else ""
    extra = " ".join(p for p in (hint, choices) if p)
    return where, f"unknown {noun} {_shown(data, where, lines)}" + (f" ({extra})" if extra else "")


def _home_of(model: type[BaseModel], key: str) -> str | None:
    """Where a misplaced key belongs: `branch` at the top goes under `source`."""
    for name, field in model.model_fields.items():
        for member in _members(field.annotation):
            origin = typing.get_origin(member)
            if origin is dict:
                inner = typing.get_args(member)[1]
                if (
                    isinstance(inner, type)
                    and issubclass(inner, BaseModel)
                    and key in inner.model_fields
                ):
                    return f"{name}.<name>"
            elif (
                isinstance(member, type)
                and issubclass(member, BaseModel)
                and key in member.model_fields
            ):
                return name
    return None


def _shown(data: Any, path: Path, lines: LineMap) -> str:
    if path in lines.written:
        return f"{lines.written[path]!r} (from the environment)"
    value = _value_at(data, path)
    if path in lines.raw and isinstance(value, int | float) and not isinstance(value, bool):
        text = lines.raw[path]
        return text if len(text) <= 60 else text[:57] + "..."
    return describe(_value_at(data, path))


def _message(
    err: dict[str, Any], path: Path, tagged: Path, root: type[BaseModel], data: Any, lines: LineMap
) -> str:
    kind = err["type"]
    value = _value_at(data, path)
    shown = _shown(data, path, lines)
    if kind == "extra_forbidden":
        model = _model_at(root, tagged[:-1])
        keys = list(model.model_fields) if model else []
        hint = suggest(str(path[-1]), keys)
        home = _home_of(model, str(path[-1])) if model and not hint else None
        return f"unknown key{hint}" + (f" (it belongs under {home}:)" if home else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "string_type" and isinstance(value, bool | int | float):
        # YAML reads `branch: 1.0` or `user: yes` as a number or a boolean.
        return f"expected a string, got {shown} (put it in quotes to keep it as text)"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {shown}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        hint = suggest(str(value), choices) if isinstance(value, str) else ""
        if path in lines.written:
            hint = ""
        return f"expected one of {', '.join(choices)}, got {shown}{hint}"
    if kind in _BOUNDS:
        ctx = err.get("ctx", {})
        bound = next(iter(ctx.values()), "?")
        return f"must be {_BOUNDS[kind]} {bound}, got {shown}"
    if kind in ("value_error", "assertion_error"):
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        hook = re.fullmatch(r"unknown hook point '(.*)'", msg)
        if hook:
            from shipit.config.model import HOOK_POINTS

            return f"unknown hook point{suggest(hook.group(1), list(HOOK_POINTS))}"
        return msg
    return str(err["msg"])


def explain(exc: ValidationError, root: type[BaseModel], data: Any, lines: LineMap) -> str:
    """The first problem in the file, as `file:line: key.path: message`."""
    # (missing?, line, order, path, message): a missing key is reported last, because a
    # misspelt key (`stage:` for `stages:`) shows up as unknown AND missing, and the unknown
    # one carries the hint.
    found: list[tuple[bool, int, int, Path, str]] = []
    by_path: dict[Path, list[dict[str, Any]]] = {}
    for order, err in enumerate(exc.errors()):
        path, tagged = _split_loc(err["loc"], data, err["type"])
        if err["type"] == "value_error" and path and path[-1] == "hooks":
            # The model checks hook point names as a whole; point at the offending key instead.
            hook = re.fullmatch(r"Value error, unknown hook point '(.*)'", err["msg"])
            if hook and hook.group(1) in (_value_at(data, path) or {}):
                path = (*path, hook.group(1))
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path, msg = _tag_message(err, path, tagged, root, data, lines)
        else:
            msg = _message(err, path, tagged, root, data, lines)
        by_path.setdefault(path, []).append(err)
        line = lines.line(path[:-1] if err["type"] == "missing" else path) or 0
        found.append((err["type"] == "missing", line, order, path, msg))
    # A union (a host as text or as a mapping) fails on every branch. When one branch got
    # deeper than the union point, its error is the one that matches what the user wrote.
    deep = {f[3][:i] for f in found for i in range(len(f[3]))}
    found = [f for f in found if f[3] not in deep]
    found.sort(key=lambda f: f[:3])
    _, line, _, path, msg = found[0]
    kinds = [e["type"] for e in by_path[path] if e["type"] in _EXPECTED]
    if len(kinds) > 1:
        wanted = " or ".join(dict.fromkeys(_EXPECTED[k] for k in kinds))
        msg = f"expected {wanted}, got {_shown(data, path, lines)}"
    where = f"{lines.file}:{line}" if line else lines.file
    key = fmt_path(path)
    return one_line(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")
