"""Dataclass configs with YAML files and dotted command-line overrides.

One helper for every recipe and benchmark: a config is a (nested) dataclass,
:func:`load_config` fills it from an optional YAML file and then from
``key.sub=value`` overrides whose values are parsed as YAML scalars.
Unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml

__all__ = ["apply_overrides", "config_from_dict", "config_to_dict", "load_config", "save_config"]

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a dataclass config (safe for YAML/JSON).

    Example:
        >>> @dataclasses.dataclass
        ... class C:
        ...     lr: float = 1e-3
        >>> config_to_dict(C())
        {'lr': 0.001}
    """
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return dataclasses.asdict(cfg)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {path!r} expects a mapping, got {value!r}")
        return config_from_dict(tp, value, _prefix=path + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"config key {path!r}: {value!r} does not match {tp}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {path!r} expects a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, path) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {path!r} expects a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is Any:
        return value
    if tp in (float, int, bool, str):
        raise ValueError(f"config key {path!r} expects {tp.__name__}, got {value!r}")
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, _prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, checking keys and types.

    Example:
        >>> @dataclasses.dataclass
        ... class C:
        ...     steps: int = 10
        >>> config_from_dict(C, {"steps": 3})
        C(steps=3)
        >>> config_from_dict(C, {"stepz": 3})
        Traceback (most recent call last):
        ...
        ValueError: unknown config key 'stepz' (known: steps)
    """
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"unknown config key {_prefix + key!r} (known: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], _prefix + key)
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict, in place.

    Example:
        >>> apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=0.5"])
        {'optim': {'lr': 0.5}}
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ValueError(f"unknown config key {key!r} in override {item!r}")
            node = node[p]
        if parts[-1] not in node:
            raise ValueError(f"unknown config key {key!r} in override {item!r}")
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Defaults of ``cls``, then the YAML file at ``path`` (if any), then the overrides.

    Example:
        >>> @dataclasses.dataclass
        ... class C:
        ...     lr: float = 1e-3
        ...     name: str = "run"
        >>> load_config(C, None, ["lr=0.1"])
        C(lr=0.1, name='run')
        >>> load_config(C, None, ["lr=1e-3"]).lr  # YAML would read 1e-3 as a string
        0.001
    """
    data = config_to_dict(cls())
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"config file {path} must hold a mapping at top level")
        _deep_update(data, loaded)
    apply_overrides(data, overrides)
    return config_from_dict(cls, data)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass config as YAML, atomically.

    Example:
        >>> import tempfile, os
        >>> @dataclasses.dataclass
        ... class C:
        ...     lr: float = 1e-3
        >>> d = tempfile.mkdtemp(); save_config(C(), os.path.join(d, "c.yaml"))
        >>> load_config(C, os.path.join(d, "c.yaml"))
        C(lr=0.001)
    """
    from unimlip_kit.utils.io import atomic_write

    atomic_write(path, yaml.safe_dump(_plain(config_to_dict(cfg)), sort_keys=False))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _deep_update(base: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
