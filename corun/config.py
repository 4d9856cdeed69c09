"""Small YAML configs mapped onto (nested) dataclasses, with ``key.sub=value`` command-line overrides.

    cfg = load_config(TrainConfig, "configs/smoke_pretrain.yaml", ["train.total_steps=50"])

Unknown keys raise :class:`ConfigError` naming the key (a typo never silently falls back to a default).
Override values are parsed as YAML (``3`` → int, ``1e-4`` → float, ``[1, 2]`` → list, ``null`` → None).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override cannot be applied; the message names the key."""


def _parse_scalar(text: str) -> Any:
    value = yaml.safe_load(text)
    # YAML 1.1 reads "1e-4" as a string; accept it as the float everyone means.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _wants_float(hint) -> bool:
    import types

    return hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                             and float in typing.get_args(hint))


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a dict, recursing into dataclass-typed fields."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                          f"valid keys of {where or 'the top level'}: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{where}{f.name}: expected a mapping, got {value!r}")
            value = from_dict(hint, value, where=f"{where}{f.name}.")
        elif isinstance(value, str) and _wants_float(hint):
            value = _parse_scalar(value)
        elif isinstance(value, (list, tuple)) and typing.get_origin(hint) is tuple:
            args = typing.get_args(hint)
            value = tuple(_parse_scalar(v) if isinstance(v, str) and float in args else v for v in value)
        elif isinstance(value, dict) and typing.get_origin(hint) is dict and _wants_float(typing.get_args(hint)[1]):
            value = {k: _parse_scalar(v) if isinstance(v, str) else v for k, v in value.items()}
        if not dataclasses.is_dataclass(hint):
            value = check_type(value, hint, f"{where}{f.name}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _describe(hint) -> str:
    if hint is type(None):
        return "null"
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        inner = _describe(args[0]) if len(args) == 2 and args[1] is Ellipsis else ", ".join(map(_describe, args))
        return f"a list of {inner}"
    if typing.get_origin(hint) is dict:
        return "a mapping" + (f" of {_describe(args[1])}" if args and args[1] is not Any else "")
    if args and _is_union(hint):
        return " or ".join(_describe(a) for a in args)
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _is_union(hint) -> bool:
    import types

    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def check_type(value: Any, hint, key: str) -> Any:
    """``value`` checked against the field's type ``hint`` (returned, integral floats made ints for int
    fields, e.g. ``1e4``); raises :class:`ConfigError` naming ``key`` (``train.total_steps=abc``, ``5.5``).
    ``dict[K, V]`` fields need a mapping whose keys and values have those types (``Any`` passes anything:
    ``model.kwargs``). Types it does not know pass unchanged."""
    def bad() -> ConfigError:
        return ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")

    if hint is Any:
        return value
    if _is_union(hint):
        for arg in typing.get_args(hint):
            try:
                return check_type(value, arg, key)
            except ConfigError:
                continue
        raise bad()
    if hint is type(None):
        if value is None:
            return value
        raise bad()
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if hint is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise bad()
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad()
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad()
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(check_type(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise bad()
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        return {check_type(k, key_hint, f"{key} (a key)"): check_type(v, value_hint, f"{key}.{k}")
                for k, v in value.items()}
    return value


def to_dict(obj) -> dict:
    """A dataclass as plain YAML-able data (tuples become lists)."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(obj))


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict (in a copy)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides or ():
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. train.total_steps=100)")
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Read YAML ``path`` (or start from the defaults), apply overrides, build ``cls``."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return from_dict(cls, apply_overrides(data, overrides))
    except ConfigError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None
