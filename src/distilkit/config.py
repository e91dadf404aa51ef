"""Typed dataclass configs loaded from YAML plus ``key.sub=value`` overrides.

Unknown keys and values of the wrong type fail with a message naming the dotted key, so a typo in a
recipe never silently falls back to a default.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from distilkit.errors import DistilkitError

T = TypeVar("T")

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(DistilkitError):
    """A config file or override that does not match the dataclass schema."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (after YAML parsing) and return it."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{key}': expected one of {list(args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        # YAML turns `1e-4` or `true` into non-strings; a str field only takes strings.
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        factory = fields[name].default_factory
        if isinstance(value, dict) and factory is not dataclasses.MISSING:
            # A section whose default is built by a factory (adapt-teacher's train) keeps the
            # factory's values for the keys not given, not the section class's defaults.
            default = factory()
            if dataclasses.is_dataclass(default):
                value = _merge(to_dict(default), value)
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field with no default was not given
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': {exc}") from exc
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a config, for YAML/JSON dumps and model cards."""
    return dataclasses.asdict(obj)


# ---------------------------------------------------------------------------------------------
# Describing a config: its keys with types, defaults and docs (--help), and a YAML dump that
# loads back (--print-config). Both are generated from the dataclasses, so they cannot drift.


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstring of each field of dataclass ``cls``: the string literal written on
    the lines under the field, joined into one paragraph. Fields without one are left out."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source shipped: help still lists the keys, without docs
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    """One leaf of a config: ``key`` is dotted (``train.optim.lr``)."""

    key: str
    type: str
    default: Any
    doc: str

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]


def type_label(tp: Any) -> str:
    """An annotation as a user reads it: ``int``, ``float | None``, ``{auto,fp32,bf16}``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_label(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_label(a) for a in args)}]"
    return _type_name(tp)


def config_keys(cls: type, instance: Any = None, prefix: str = "") -> list[ConfigKey]:
    """Every leaf key of dataclass ``cls``, a section's plain keys before its subsections.

    Defaults are read from ``instance`` (default ``cls()``), not from the class fields, because
    a section may be built by a factory with other values (adapt-teacher's ``train.optim``).
    """
    instance = cls() if instance is None else instance
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    plain: list[ConfigKey] = []
    sections: list[ConfigKey] = []
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            sections += config_keys(hints[f.name], value, f"{prefix}{f.name}.")
        else:
            label = type_label(hints[f.name])
            plain.append(ConfigKey(prefix + f.name, label, value, docs.get(f.name, "")))
    return plain + sections


def yaml_value(value: Any) -> str:
    """``value`` as one line of YAML that loads back to the same value."""
    if isinstance(value, str) and "\n" in value:
        return json.dumps(value)  # a JSON string is a double-quoted YAML scalar, on one line
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _run_time_note(value: Any, doc: str) -> str:
    """For an ``auto`` or unset (None) value, the sentence of the field's doc that says what the
    stage chooses at run time; empty when the doc says nothing about it."""
    if value == "auto":
        pattern = r"\bauto\b"
    elif value is None:
        pattern = r"\b(unset|None|default)\b"
    else:
        return ""
    said = " ".join(s for s in re.split(r"(?<=\.)\s+", doc) if re.search(pattern, s))
    return re.sub(r"^'?auto'?:\s*", "", said)  # "auto: X" reads "set at run time: X"


def dump_config(obj: Any, under: typing.Sequence[str] = (), header: str = "") -> str:
    """YAML of config ``obj`` that ``load_config`` reads back to an equal object.

    ``under`` nests it in sections (``("tasks", "stsb")`` for a finetune recipes file). Values
    the stage settles at run time (``auto``, unset) carry a ``# set at run time: ...`` comment.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for depth, name in enumerate(under):
        lines.append(f"{'  ' * depth}{name}:")

    def emit(node: Any, depth: int) -> None:
        docs = field_docs(type(node))
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            pad = "  " * depth
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:")
                emit(value, depth + 1)
                continue
            line = f"{pad}{f.name}: {yaml_value(value)}"
            note = _run_time_note(value, docs.get(f.name, ""))
            lines.append(f"{line}  # set at run time: {note}" if note else line)

    emit(obj, len(under))
    return "\n".join(lines) + "\n"


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value``; the value is parsed as YAML so numbers, booleans and lists work."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': cannot parse value ({exc})") from exc
    # YAML 1.1 reads `3e-5` (no dot) as a string; on the command line it means a number.
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)
    return key, value


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    flags: dict[str, Any] | None = None,
) -> T:
    """Load ``cls`` from an optional YAML file, CLI flags and ``key=value`` overrides.

    Precedence, lowest first: dataclass defaults, the YAML file, ``flags`` (dotted keys, from
    explicit command-line options), then the overrides.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        _merge(tree, loaded)
    for key, value in (flags or {}).items():
        _set_dotted(tree, key, value)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return from_dict(cls, tree)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Overlay ``extra`` on ``base`` in place, section by section; returns ``base``."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base
