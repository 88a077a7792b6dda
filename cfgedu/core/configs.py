"""Frozen config dataclasses from text and from saved records.

`apply_overrides` turns `--key value` pairs (strings, or values already of the field's type) into a changed copy of
a config; `config_from_dict` rebuilds a config saved as a dict (JSON, a checkpoint) after checking every key and
type, so a hand-edited file gets one line naming the key instead of a TypeError.
"""
from __future__ import annotations

import dataclasses
import difflib
import reprlib
import types
import typing
from pathlib import Path

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def override_keys(config) -> list[str]:
    """Every key apply_overrides accepts for `config`: its fields, and "field.sub" inside nested dataclasses."""
    keys = []
    for field in dataclasses.fields(config):
        if not field.metadata.get("override", True):
            continue
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{field.name}.{key}" for key in override_keys(value)]
        else:
            keys.append(field.name)
    return keys


def _resolve_key(config, key: str) -> str:
    """The full dotted key: as given, or the one nested key whose last part is `key`."""
    keys = override_keys(config)
    key = key.replace("-", "_")
    if key in keys:
        return key
    matches = [full for full in keys if full.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"--{key} is ambiguous: write one of {', '.join('--' + m for m in matches)}")
    close = difflib.get_close_matches(key, keys + [full.rsplit(".", 1)[-1] for full in keys], n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    raise ValueError(f"unknown option --{key}{hint}; known: {', '.join('--' + k for k in keys)}")


def parse_value(text: str, annotation, name: str):
    """`text` converted to the type `annotation` (int, float, bool, str, Path, X | None, tuple[...])."""
    text = str(text).strip()
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    try:
        if origin in (typing.Union, types.UnionType):
            if text.lower() in ("none", "null") and type(None) in args:
                return None
            return parse_value(text, next(arg for arg in args if arg is not type(None)), name)
        if origin is tuple or annotation is tuple:
            parts = [part for part in text.strip("()[] ").split(",") if part.strip()]
            element_types = args if args and args[-1] is not Ellipsis else [args[0] if args else float] * len(parts)
            if len(element_types) != len(parts):
                raise ValueError(f"expected {len(element_types)} comma-separated values")
            return tuple(parse_value(part, kind, name) for part, kind in zip(parts, element_types, strict=True))
        if annotation is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError("expected true or false")
            return text.lower() in _TRUE
        if annotation in (int, float, str, Path):
            return annotation(text)
    except (ValueError, TypeError) as error:
        raise ValueError(f"--{name}: cannot read {text!r} as {_type_name(annotation)} ({error})") from None
    raise ValueError(f"--{name} has type {_type_name(annotation)}, which cannot be set from the command line")


def _type_name(annotation) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _override_value(value, annotation, name: str):
    """A string parsed into the field's type (the command line), or a value already of that type (Python)."""
    if isinstance(value, str) and annotation is not str:
        return parse_value(value, annotation, name)
    if not _fits(value, annotation):
        raise ValueError(f"--{name} must be {_type_name(annotation)}, got {reprlib.repr(value)}")
    return tuple(value) if isinstance(value, list) else value


def apply_overrides(config, overrides: dict):
    """A copy of the frozen dataclass `config` with each "key": value set, a string value parsed into the field's type.

    Keys are field names; a nested dataclass field is "outer.inner", or just "inner" when that is unique.
    Unknown keys, ambiguous keys and unreadable or mistyped values raise ValueError naming the option.
    """
    nested: dict[str, dict[str, str]] = {}
    changes = {}
    hints = typing.get_type_hints(type(config))
    for key, text in overrides.items():
        full = _resolve_key(config, key)
        head, _, rest = full.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = text
        else:
            changes[head] = _override_value(text, hints[head], full)
    for head, inner in nested.items():
        changes[head] = apply_overrides(getattr(config, head), inner)
    return dataclasses.replace(config, **changes)


def _fits(value, annotation) -> bool:
    """Whether a saved value has a config field's type: int, float (an int will do), bool, str, X | None or
    tuple[X, ...] / tuple[X, Y] (a list will do: JSON has no tuples)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return len(kinds) == len(value) and all(map(_fits, value, kinds))
    if annotation in (int, float):
        return isinstance(value, int if annotation is int else (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


def config_from_dict(config_cls: type, values, path: Path):
    """config_cls(**values), refusing unknown keys, missing required keys and values of the wrong type first;
    every problem (the Config's own checks included) is a ValueError naming the file and the key."""
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the saved config is a {type(values).__name__}, not a dict of {config_cls.__name__} "
                         f"fields")
    fields, hints = {f.name: f for f in dataclasses.fields(config_cls)}, typing.get_type_hints(config_cls)
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"{path}: unknown config key {reprlib.repr(key)} for a {config_cls.__name__} (known: "
                             f"{', '.join(fields)})")
        if not _fits(value, hints[key]):
            raise ValueError(f"{path}: config key {key!r} must be {_type_name(hints[key])}, got {reprlib.repr(value)}")
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ValueError(f"{path}: the saved config has no {missing[0]!r} key, which a {config_cls.__name__} needs")
    try:
        return config_cls(**values)
    except ValueError as error:  # the Config's own __post_init__ checks, which name the key
        raise ValueError(f"{path}: bad saved config: {error}") from None
