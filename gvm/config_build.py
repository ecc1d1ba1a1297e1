"""Frozen dataclasses from nested dicts and `key=value` overrides, with errors that name the key.

Values from the command line are parsed as YAML scalars and converted to the field's type
(`1e-3` becomes a float for a float field); a wrong type, a bad value or an unknown key raises
`ConfigError` naming the dotted key, the value and what is allowed. Used by the run config
(gvm.config), the eval CLI (gvm.eval) and the engine factory (gvm.engines.factory).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad configuration value or key (a ValueError, so callers may catch either)."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """ConfigError naming `key`, its `value` and what is `allowed`, unless `ok`."""
    if not ok:
        raise ConfigError(f"config key {key}={value!r}: {allowed}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp` (from a dataclass annotation), or a ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"config key {key}={value!r}: must be one of the types {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        require(value in allowed, key, value, f"must be one of {allowed}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        require(isinstance(value, dict), key, value, f"must be a mapping of {tp.__name__} fields")
        return build(tp, value, prefix=key)
    if origin is tuple or tp is tuple:
        require(isinstance(value, (list, tuple)), key, value, "must be a list")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if args:
            require(len(value) == len(args), key, value, f"must be a list of {len(args)} values")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(value)
    if tp is dict or origin is dict:
        require(isinstance(value, dict), key, value, "must be a mapping (key: value)")
        return dict(value)
    if tp is bool:
        require(isinstance(value, bool), key, value, "must be true or false")
        return value
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
        require(ok, key, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        require(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "must be a number")
        return float(value)
    if tp is str:
        require(isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)),
              key, value, "must be a string")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"config key {key}: unsupported field type {_type_name(tp)}")


def build(cls: type, values: dict, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a (nested) dict: unknown keys, wrong types and values
    its `__post_init__` rejects raise ConfigError naming the dotted key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"section {prefix!r}" if prefix else "the top level"
            raise ConfigError(f"unknown config key {dotted!r}{hint}; allowed in {where}: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        # A reused class (TrainerConfig, TinyModelConfig, ...) names its own field ("lr=0: ..." or
        # "TrainerConfig.lr=0: ..."): give it the dotted key; otherwise name the section.
        text = str(error)
        head, sep, rest = text.partition("=")
        name = head.removeprefix(f"{cls.__name__}.")
        if sep and name in names and prefix:
            raise ConfigError(f"config key {prefix}.{name}={rest}") from None
        raise ConfigError(f"config section {prefix or cls.__name__!r}: {text}") from None


def parse_override(text: str, shortcuts: dict[str, str] | None = None) -> tuple[str, Any]:
    """"sampler.budget=64" -> ("sampler.budget", 64); the value is read as a YAML scalar/list, and
    a short key is expanded (`shortcuts`)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. sampler.budget=64")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return (shortcuts or {}).get(key, key), value


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(parts[:i + 1])!r} is a value, not a section: "
                              f"cannot set {dotted!r}")
        node = child
    node[parts[-1]] = value


def merge(old: Any, new: Any) -> Any:
    """`new` over `old`, mappings merged key by key (a YAML file over the defaults)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: merge(old.get(k), v) for k, v in new.items()}}
    return new
