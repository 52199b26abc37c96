"""Dataclass configs with YAML files and dotted command-line overrides, checked against the declared types.

One helper for every recipe and benchmark: a config is a (nested) dataclass,
:func:`load_config` fills it from its defaults, then an optional YAML file,
then ``key.sub=value`` overrides. Unknown keys are errors, never silently
ignored.

Values are parsed *by the field's declared type*, never by YAML's own guess:
YAML 1.1 reads ``off``/``no`` as ``False`` and ``2024`` as an int, so
``--amp off`` or ``--output-dir 2024`` used to fail or change type. The YAML
file is read with every scalar kept as text (``yaml.BaseLoader``), an override's
value is the raw text after ``=``, and :func:`config_from_dict` converts text
with the annotation:

=====================  ==========================================================
annotation             text accepted
=====================  ==========================================================
``str``                the text verbatim (an override keeps spaces, ``:``, ``#``)
``int``                ``int(text)`` (also ``0x1f``); ``1.5`` or ``1e3`` is an error
``float``              ``float(text)``, also YAML's ``.inf``/``.nan``
``bool``               ``true/false yes/no on/off 1/0 y/n`` (any case)
``X | None``           ``null``, ``~``, ``none``, ``None`` (and empty text when ``X`` is not ``str``)
``Literal["a", "b"]``  one of the listed values; otherwise the error lists them
``list[X]``/``tuple``  a YAML flow sequence ``[a, b]``, each item parsed as ``X``
``dict[K, V]``         a YAML mapping ``{k: v}``, keys as ``K``, values as ``V``
a dataclass            a YAML mapping; an override **merges** into the section
:class:`PathOrHubId`   an existing file/folder or a hub id ``owner/name``
=====================  ==========================================================

Enumerated options are declared as ``typing.Literal`` (or ``Literal[...] |
PathOrHubId`` for "a known name or a model folder"), so a bad value fails when
the config loads, naming the key and the valid values, before any data is read.
Python values given directly to :func:`config_from_dict` (not text) are
checked strictly: ``2024`` for a ``str`` field is an error there.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml

__all__ = [
    "PathOrHubId",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_config_value",
    "save_config",
]

T = TypeVar("T")

_NULL_WORDS = frozenset({"null", "Null", "NULL", "~", "none", "None"})
_TRUE_WORDS = frozenset({"true", "yes", "on", "1", "y"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0", "n"})
_FLOAT_WORDS = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PathOrHubId(str):
    """Config type: an existing local file or folder, or a Hugging Face hub id ``owner/name``.

    Use it in a union with a ``Literal`` of known names, e.g.
    ``tokenizer: Literal["wordpiece", "bundled"] | PathOrHubId``: a typo such as
    ``bundeld`` (neither a name, nor a folder, nor ``owner/name``) fails when the
    config loads instead of trying the network. The loaded value is a plain ``str``.

    Example:
        >>> import tempfile
        >>> PathOrHubId.check(tempfile.gettempdir()) == tempfile.gettempdir(), PathOrHubId.check("bert/tiny")
        (True, 'bert/tiny')
        >>> PathOrHubId.check("bundeld")
        Traceback (most recent call last):
        ...
        ValueError: 'bundeld' is neither an existing file or folder nor a hub id of the form owner/name
    """

    @staticmethod
    def check(text: str) -> str:
        """Return ``text`` if it names an existing path or looks like ``owner/name``, else raise ``ValueError``."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"expected a path or a hub id, got {text!r}")
        if Path(text).exists() or _HUB_ID.match(text):
            return str(text)
        raise ValueError(f"{text!r} is neither an existing file or folder nor a hub id of the form owner/name")


class _Text(str):
    """Raw override text (after ``=``), parsed only once the field's type is known."""


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
    try:
        return typing.get_type_hints(cls)
    except NameError:  # a class defined where ``Literal`` etc. are not module globals (doctests, functions)
        return typing.get_type_hints(cls, localns={**vars(typing), "PathOrHubId": PathOrHubId})


def _describe(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return "an existing file or folder, or a hub id owner/name" if tp is PathOrHubId else tp.__name__
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "")


def _yaml_text(text: str, path: str) -> Any:
    """Structure of a YAML value with every scalar kept as text."""
    try:
        return yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"config key {path!r}: cannot parse {str(text)!r} as YAML ({err})") from None


def _scalar(value: str, tp: Any, path: str) -> Any:
    """Parse text ``value`` as the scalar type ``tp`` (int, float, bool, str)."""
    text = value.strip()
    if tp is str:
        return str(value)
    if tp is bool:
        low = text.lower()
        if low in _TRUE_WORDS:
            return True
        if low in _FALSE_WORDS:
            return False
        raise ValueError(f"config key {path!r} expects bool (true/false, yes/no, on/off, 1/0), got {str(value)!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            try:
                return int(text, 0)
            except ValueError:
                raise ValueError(f"config key {path!r} expects int, got {str(value)!r}") from None
    if tp is float:
        if text.lower() in _FLOAT_WORDS:
            return _FLOAT_WORDS[text.lower()]
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"config key {path!r} expects float, got {str(value)!r}") from None
    raise TypeError(tp)


def parse_config_value(value: Any, tp: Any, path: str = "value") -> Any:
    """Convert ``value`` to the annotation ``tp`` (text is parsed, Python values are checked).

    Raises ``ValueError`` naming ``path``, the expected type and the value.

    Example:
        >>> from typing import Literal, Optional
        >>> parse_config_value("off", bool), parse_config_value("2024", str), parse_config_value("1e-3", float)
        (False, '2024', 0.001)
        >>> parse_config_value("null", Optional[int]), parse_config_value("[1, 2]", list[int])
        (None, [1, 2])
        >>> parse_config_value("fp16", Literal["auto", "bf16", "off"], "train.amp")
        Traceback (most recent call last):
        ...
        ValueError: config key 'train.amp' must be one of auto, bf16, off; got 'fp16'
    """
    return _coerce(_Text(value) if type(value) is str else value, tp, path)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    is_text = isinstance(value, str)
    if tp is Any:
        return str(value) if is_text else value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, _Text):
            value = _yaml_text(value, path)
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {path!r} expects a mapping of {tp.__name__} fields, got {value!r}")
        return config_from_dict(tp, value, _prefix=path + ".")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        for c in choices:
            if is_text and not isinstance(c, str):
                try:
                    if _scalar(value, type(c), path) == c:
                        return c
                except ValueError:
                    continue
            elif type(value) is type(c) and value == c or (is_text and str(value) == c):
                return c
        raise ValueError(f"config key {path!r} must be one of {', '.join(map(str, choices))}; got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if is_text and type(None) in args:
            text = value.strip()
            if text in _NULL_WORDS or (text == "" and str not in args):
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"config key {path!r} must be {_describe(tp)}; got {value!r}")
    if tp is PathOrHubId:
        if not is_text:
            raise ValueError(f"config key {path!r} expects a path or hub id, got {value!r}")
        try:
            return PathOrHubId.check(str(value))
        except ValueError as err:
            raise ValueError(f"config key {path!r}: {err}") from None
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, _Text):
            value = _yaml_text(value, path)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {path!r} expects a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ValueError(f"config key {path!r} expects {len(args)} items, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if isinstance(value, _Text):
            value = _yaml_text(value, path)
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {path!r} expects a mapping, got {value!r}")
        args = typing.get_args(tp)
        kt, vt = args if len(args) == 2 else (Any, Any)
        out = {}
        for k, v in value.items():
            try:
                key = _coerce(k, kt, path)
            except ValueError:
                raise ValueError(f"config key {path!r} has the key {k!r}; keys must be {_describe(kt)}") from None
            out[key] = _coerce(v, vt, f"{path}.{k}")
        return out
    if tp in (float, int, bool, str):
        if is_text:
            return _scalar(value, tp, path)
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if tp is bool and isinstance(value, bool):
            return value
        raise ValueError(f"config key {path!r} expects {tp.__name__}, got {value!r}")
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, _prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, checking keys and converting values by their annotation.

    Text values (from a YAML file or an override) are parsed as the declared type
    (see the module docstring); other values must already have it.

    Example:
        >>> @dataclasses.dataclass
        ... class C:
        ...     steps: int = 10
        >>> config_from_dict(C, {"steps": 3}), config_from_dict(C, {"steps": "3"})
        (C(steps=3), C(steps=3))
        >>> config_from_dict(C, {"stepz": 3})
        Traceback (most recent call last):
        ...
        ValueError: unknown config key 'stepz' (known: steps)
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"config {(_prefix.rstrip('.') or cls.__name__)!r} expects a mapping, got {data!r}")
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"unknown config key {_prefix + str(key)!r} (known: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], _prefix + key)
    return cls(**kwargs)


def _sections(cls: type | None) -> dict[str, Any] | None:
    """``{field: sub-sections}`` for the dataclass-typed fields of ``cls`` (``None``: unknown, merge every dict)."""
    if cls is None:
        return None
    out: dict[str, Any] = {}
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out[name] = _sections(tp)
    return out


def _merge(base: dict[str, Any], new: Mapping[str, Any], sections: dict[str, Any] | None = None) -> None:
    """Merge ``new`` into ``base``: config sections merge key by key, any other value (a dict field too) is replaced."""
    for k, v in new.items():
        is_section = sections is None or k in sections
        if is_section and isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v, None if sections is None else sections[k])
        else:
            base[k] = v


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], cls: type | None = None) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict, in place; values stay text until :func:`config_from_dict`.

    The text after ``=`` is kept verbatim and parsed later by the field's declared
    type. A mapping given for a config section (``train={lr: 0.1}``) is merged into
    it, keeping the keys it does not name, as a YAML file's section is; a dict-typed
    field is replaced. Without ``cls`` (the dataclass of ``data``) every mapping merges.

    Example:
        >>> apply_overrides({"optim": {"lr": 1.0, "wd": 0.1}}, ["optim.lr=0.5", "optim={wd: 0}"])
        {'optim': {'lr': '0.5', 'wd': '0'}}
    """
    tree = _sections(cls)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node, sub = data, tree
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ValueError(f"unknown config key {key.strip()!r} in override {item!r}")
            node = node[p]
            sub = None if sub is None else sub.get(p, {})
        if parts[-1] not in node:
            known = ", ".join(map(str, node)) if isinstance(node, dict) else ""
            raise ValueError(f"unknown config key {key.strip()!r} in override {item!r} (known here: {known})")
        section = sub is None or parts[-1] in sub
        if section and isinstance(node[parts[-1]], dict) and raw.strip().startswith("{"):
            parsed = _yaml_text(raw, key.strip())
            if isinstance(parsed, Mapping):
                _merge(node[parts[-1]], parsed, None if sub is None else sub[parts[-1]])
                continue
        node[parts[-1]] = _Text(raw)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Defaults of ``cls``, then the YAML file at ``path`` (if any), then the overrides; all checked by type.

    Example:
        >>> from typing import Literal
        >>> @dataclasses.dataclass
        ... class C:
        ...     lr: float = 1e-3
        ...     name: str = "run"
        ...     amp: Literal["auto", "bf16", "off"] = "auto"
        >>> load_config(C, None, ["lr=0.1", "name=2024", "amp=off"])
        C(lr=0.1, name='2024', amp='off')
        >>> load_config(C, None, ["amp=fp16"])
        Traceback (most recent call last):
        ...
        ValueError: config key 'amp' must be one of auto, bf16, off; got 'fp16'
    """
    data = config_to_dict(cls())
    if path is not None:
        with open(path, encoding="utf-8-sig") as fh:
            try:
                loaded = yaml.load(fh, Loader=yaml.BaseLoader) or {}
            except yaml.YAMLError as err:
                raise ValueError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(loaded, Mapping):
            raise ValueError(f"config file {path} must hold a mapping at top level")
        _merge(data, loaded, _sections(cls))
    apply_overrides(data, overrides, cls)
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
