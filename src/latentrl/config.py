"""One source of truth for a command's configuration.

Each command has one flat dataclass; every field carries its help text as
``field(metadata={"help": ...})`` (the convention of TRL / HF ``TrainingArguments``), from
which ``config_help`` — and so the CLI's ``--help`` — is generated.

A config is resolved in three layers, later ones winning:

1. the dataclass defaults,
2. an optional YAML mapping file,
3. ``key=value`` overrides from the command line (the value is read with ``yaml.safe_load``,
   so ``layers=[1, 2]`` is a list and ``x=null`` is ``None``).

Every value is checked against (and, where safe, coerced to) its field's type annotation:
``int``, ``float``, ``bool``, ``str``, ``pathlib.Path``, ``Optional[X]`` / ``X | None``,
``Union``, ``Literal[...]``, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[K, V]``
and ``Any``. Anything wrong — an unknown key, a type mismatch, a bad Literal choice, malformed
YAML, a ``ValueError`` from the dataclass's ``__post_init__`` — raises ``ConfigError`` naming the
key and where it came from. ``save_config`` writes the resolved config as YAML that
``load_config`` reads back to an equal config.

Example::

    @dataclass
    class GRPOConfig:
        learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate."})
        loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = field(
            default="dapo", metadata={"help": "How per-token losses are averaged."})

    cfg = load_config(GRPOConfig, "recipe.yaml", ["learning_rate=1e-4"])
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

_COMMAND_LINE = "the command line"
_TRUE_STRINGS = {"true", "yes", "on", "1"}
_FALSE_STRINGS = {"false", "no", "off", "0"}


class ConfigError(ValueError):
    """A configuration that cannot be loaded: unknown key, wrong type, bad file, failed check."""


class _Mismatch(Exception):
    """Internal: a value does not fit a type annotation (message says what was expected)."""


# ----------------------------------------------------------------------------------------------
# Public API


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build ``cls`` from its defaults, an optional YAML file, then ``key=value`` overrides.

    Args:
        cls: a dataclass type (``from __future__ import annotations`` is fine).
        path: a YAML file holding a mapping of field names to values, or ``None``.
        overrides: strings ``key=value``, split on the first ``=``; the value is parsed with
            ``yaml.safe_load`` and coerced to the field's type (a plain string is used when the
            parsed value does not fit, so ``name=123`` works for a ``str`` field).

    Raises:
        ConfigError: unknown or missing key, type mismatch, malformed or non-mapping YAML, or a
            ``ValueError`` raised by the dataclass's own ``__post_init__`` validation.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config expects a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    names = _init_field_names(cls)
    values: dict[str, Any] = {}
    if path is not None:
        source = f"config file {path}"
        for key, value in _read_yaml_mapping(path).items():
            _check_key(key, names, source)
            values[key] = _coerce_for_key(value, hints[key], key, source)
    for item in overrides:
        key, raw = _split_override(item)
        _check_key(key, names, _COMMAND_LINE)
        values[key] = _parse_override(raw, hints[key], key)
    _check_required(cls, values)
    try:
        return cls(**values)
    except ValueError as err:  # __post_init__ validation of the dataclass
        raise ConfigError(f"invalid {cls.__name__}: {err}") from err


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The init fields of a dataclass instance as plain YAML/JSON-safe values, in field order.

    Tuples become lists and paths become strings; fields declared with ``init=False`` (derived
    values) are left out so that the dict can be loaded back with ``load_config``.
    """
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"config_to_dict expects a dataclass instance, got {cfg!r}")
    return {
        f.name: _to_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init
    }


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write ``config_to_dict(cfg)`` as YAML, keys in field order, atomically (tmp + replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(
        config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def config_help(cls: type) -> str:
    """One line per init field: ``name  type  default  help`` (columns aligned)."""
    hints = typing.get_type_hints(cls)
    rows = [
        (f.name, _type_name(hints[f.name]), _default_text(f), f.metadata.get("help", ""))
        for f in dataclasses.fields(cls)
        if f.init
    ]
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------------------------
# Reading sources


def _read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping (an empty file is an empty mapping)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed YAML in config file {path}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys to values, "
            f"got {type(data).__name__}"
        )
    return dict(data)


def _split_override(item: str) -> tuple[str, str]:
    """``"key=value"`` -> ``("key", "value")``, splitting on the first ``=``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"command line override {item!r} is not of the form key=value")
    return key, raw


def _parse_override(raw: str, tp: Any, key: str) -> Any:
    """YAML-parse an override value and coerce it; fall back to the raw string if that fits."""
    try:
        parsed = yaml.safe_load(raw)
    except yaml.YAMLError:
        parsed = raw
    try:
        return _coerce(parsed, tp)
    except _Mismatch as first:
        try:
            return _coerce(raw, tp)
        except _Mismatch:
            raise _config_mismatch(key, _COMMAND_LINE, first) from None


def _init_field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _check_key(key: Any, names: list[str], source: str) -> None:
    """Raise ConfigError for a key that is not a field, with a did-you-mean and the valid keys."""
    if isinstance(key, str) and key in names:
        return
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown config key {key!r} (from {source}).{hint} Valid keys: {', '.join(names)}"
    )


def _check_required(cls: type, values: dict[str, Any]) -> None:
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        names = ", ".join(missing)
        raise ConfigError(f"missing required config key(s) for {cls.__name__}: {names}")


# ----------------------------------------------------------------------------------------------
# Type checking and coercion


def _coerce_for_key(value: Any, tp: Any, key: str, source: str) -> Any:
    try:
        return _coerce(value, tp)
    except _Mismatch as err:
        raise _config_mismatch(key, source, err) from None


def _config_mismatch(key: str, source: str, err: _Mismatch) -> ConfigError:
    return ConfigError(f"config key {key!r} (from {source}): {err}")


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to annotation ``tp``, or raise ``_Mismatch``."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _mismatch(value, tp)
    if origin is Union or origin is types.UnionType:
        return _coerce_union(value, tp)
    if origin is Literal:
        return _coerce_literal(value, tp)
    if origin in (list, Sequence) or tp is list:
        return _coerce_list(value, tp)
    if origin is tuple or tp is tuple:
        return _coerce_tuple(value, tp)
    if origin in (dict, Mapping) or tp is dict:
        return _coerce_dict(value, tp)
    if tp in _SCALARS:
        return _SCALARS[tp](value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _mismatch(value, tp)


def _coerce_union(value: Any, tp: Any) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg)
        except _Mismatch:
            continue
    raise _mismatch(value, tp)


def _coerce_literal(value: Any, tp: Any) -> Any:
    choices = typing.get_args(tp)
    for choice in choices:  # type-exact: True must not match Literal[1]
        if type(value) is type(choice) and value == choice:
            return choice
    shown = ", ".join(repr(c) for c in choices)
    raise _Mismatch(f"expected one of {shown}; got {value!r}")


def _coerce_list(value: Any, tp: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _mismatch(value, tp)
    args = typing.get_args(tp)
    item_tp = args[0] if args else Any
    return [_coerce_item(item, item_tp, tp, i) for i, item in enumerate(value)]


def _coerce_tuple(value: Any, tp: Any) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise _mismatch(value, tp)
    args = typing.get_args(tp)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        item_tps = [args[0]] * len(value)
    elif len(args) == len(value):
        item_tps = list(args)
    else:
        raise _Mismatch(f"expected {_type_name(tp)} ({len(args)} items), got {value!r}")
    return tuple(_coerce_item(v, t, tp, i) for i, (v, t) in enumerate(zip(value, item_tps)))


def _coerce_dict(value: Any, tp: Any) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise _mismatch(value, tp)
    args = typing.get_args(tp)
    key_tp, val_tp = args if args else (Any, Any)
    return {
        _coerce_item(k, key_tp, tp, k): _coerce_item(v, val_tp, tp, k) for k, v in value.items()
    }


def _coerce_item(value: Any, item_tp: Any, container_tp: Any, where: Any) -> Any:
    try:
        return _coerce(value, item_tp)
    except _Mismatch as err:
        raise _Mismatch(f"expected {_type_name(container_tp)}; item {where!r}: {err}") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS | _FALSE_STRINGS:
        return value.strip().lower() in _TRUE_STRINGS
    raise _mismatch(value, bool)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _mismatch(value, int)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            raise _mismatch(value, int) from None
        if number.is_integer():
            return int(number)
    raise _mismatch(value, int)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _mismatch(value, float)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _mismatch(value, float)


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _mismatch(value, str)


def _to_path(value: Any) -> Path:
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise _mismatch(value, Path)


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, Path: _to_path}


def _mismatch(value: Any, tp: Any) -> _Mismatch:
    return _Mismatch(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


# ----------------------------------------------------------------------------------------------
# Presentation


def _type_name(tp: Any) -> str:
    """Readable annotation: ``int``, ``Optional[float]``, ``list[int]``, ``Literal['a', 'b']``."""
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "").replace("pathlib.", "")


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        return "required"
    return f"default={os.fspath(default) if isinstance(default, os.PathLike) else default!r}"


def _to_plain(value: Any) -> Any:
    """Turn tuples into lists and paths into strings, recursively, for YAML/JSON output."""
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {_to_plain(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
