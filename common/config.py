"""Typed, frozen configuration dataclasses loaded from YAML.

Every component has one frozen dataclass whose defaults are the embedded default
configuration. :func:`from_dict` builds such a dataclass from plain data (for example
the result of ``yaml.safe_load``), checking every key and type; :func:`load_config`
adds a YAML file and command-line overrides of the form ``key.sub=value``.

Errors are reported as :class:`ConfigError` with one message that names the offending
key and lists the valid choices, so that the CLI can print it without a traceback.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

#: Folder holding the shipped YAML configurations.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration key, value or file is invalid."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "list of " + str(len(args)) + " values"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping of {tp.__name__} fields, "
                              f"got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' has invalid value {value!r}; valid choices: "
                              + ", ".join(repr(c) for c in choices))
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"config key '{key}' must be null, got {value!r}")
        return None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key '{key}' must have {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args,
                                                                                   strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for '{key}'")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(f"unknown config key '{full}'; valid keys"
                              f"{' of ' + prefix if prefix else ''}: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if prefix and not str(exc).startswith("config key"):
            raise ConfigError(f"{prefix}: {exc}") from None
        raise


def from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """Build the frozen dataclass ``cls`` from plain data, validating keys and types.

    Args:
        cls: A (possibly nested) frozen dataclass type.
        data: Mapping of field names to values; missing fields keep their defaults.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: On an unknown key (the message lists the valid keys), a value of
            the wrong type, or a value rejected by the dataclass's own checks.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"a {cls.__name__} config must be a mapping, got {type(data).__name__}")
    return _build(cls, data, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Turn a config dataclass into plain data (tuples become lists) for YAML/JSON."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [convert(x) for x in v]
        return v

    out = convert(cfg)
    assert isinstance(out, dict)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into the key path and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must have the form key.sub=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of nested ``data`` with ``key.sub=value`` overrides applied."""
    out: dict[str, Any] = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping safely, with one clear error for a missing or bad file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping at the top level")
    return data


def resolve_config_path(name_or_path: str | Path, group: str) -> Path:
    """Find a config by file path or by name inside ``configs/<group>/``.

    Raises:
        ConfigError: Listing the shipped configs of that group when nothing matches.
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    candidate = CONFIG_DIR / group / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    shipped = sorted(q.stem for q in (CONFIG_DIR / group).glob("*.yaml"))
    raise ConfigError(f"no config '{name_or_path}' in configs/{group}/ and no such file; "
                      f"valid names: {', '.join(shipped) or '(none)'}")


def load_config(
    cls: type[T],
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    group: str | None = None,
) -> T:
    """Load a config dataclass from a YAML file, a name, a mapping or defaults, plus overrides.

    Args:
        cls: The frozen dataclass to build.
        source: A YAML path, a config name inside ``configs/<group>/``, a mapping, or
            ``None`` for the embedded defaults.
        overrides: Strings ``key.sub=value``; values are parsed as YAML.
        group: The ``configs/`` sub-folder used to resolve a bare name.

    Returns:
        The validated config.
    """
    data: Mapping[str, Any]
    if source is None:
        data = {}
    elif isinstance(source, Mapping):
        data = source
    else:
        path = resolve_config_path(source, group) if group else Path(source)
        data = read_yaml(path)
    return from_dict(cls, apply_overrides(data, overrides))


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds.

    Used in ``__post_init__`` of config dataclasses for value ranges.
    """
    if not condition:
        raise ConfigError(message)


__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "apply_overrides",
    "from_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "require",
    "resolve_config_path",
    "to_dict",
]
