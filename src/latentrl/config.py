"""One source of truth for a command's configuration: a pydantic model per command.

Every command (``sft``, ``grpo``, ``eval``, ``sweep``, ``demo``) reads one :class:`Config`
subclass. Ranges and choices are declared with the fields (``Field(ge=1)``, ``Literal[...]``), so
a wrong value is refused before any work starts, and ``--help`` shows them. A config is resolved in
three layers, later ones winning:

1. the field defaults,
2. an optional YAML mapping file (``--config``),
3. ``key=value`` overrides from the command line (the value is read as YAML, so ``layers=[1, 2]``
   is a list and ``x=null`` is ``None``; a ``str`` field keeps the raw text).

YAML is read with YAML 1.2's booleans (only ``true`` / ``false``): PyYAML follows YAML 1.1, where
``no``, ``off``, ``y`` and ``n`` are booleans too, so ``mixed_precision: no`` would arrive as ``False``.
A bool field still takes ``no`` / ``off`` (pydantic reads them as ``False``).

Why pydantic: it validates types, ranges and choices declared beside the field, nested models
(the sweep's ``grpo:`` block is a full ``GRPOConfig`` check), and reports every error with its key.
``HfArgumentParser`` checks types only and OmegaConf's structured configs have no ranges; both
would leave the checks to hand-written code, which is what this module replaced.

Anything wrong — an unknown key (with a did-you-mean), a type or range error, a bad choice,
malformed YAML, a failed cross-field check — raises :class:`ConfigError`, one line naming the key
and where its value came from. ``save_config`` writes the resolved config as YAML that
``load_config`` reads back to an equal config.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from latentrl.fsutil import atomic_write_text

T = TypeVar("T", bound="Config")

_COMMAND_LINE = "the command line"


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: ``true`` / ``false`` only (``no`` stays text)."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))  # fmt: skip


def read_yaml(stream) -> Any:
    """A YAML document (text or an open file) read with :class:`YamlLoader`."""
    return yaml.load(stream, Loader=YamlLoader)  # noqa: S506 (a SafeLoader subclass)


class ConfigError(ValueError):
    """A configuration that cannot be loaded: unknown key, wrong type or range, bad file, failed check."""


class Config(BaseModel):
    """Base of every command's config: unknown keys are errors, numbers given for text stay text."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_default=True)


def with_defaults(cls: type[T], **defaults: Any) -> type[T]:
    """Give ``cls`` its own defaults for fields it inherits from a shared field group.

    The field (type, range, help) is declared once in its group; a command whose natural default
    differs (GRPO's learning rate is not SFT's) states only the value here.
    """
    for name, value in defaults.items():
        info = copy.copy(cls.model_fields[name])
        info.default, info.default_factory = value, None
        cls.model_fields[name] = info
    cls.model_rebuild(force=True)
    return cls


# ----------------------------------------------------------------------------------------------
# Public API


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from its defaults, an optional YAML file, then ``key=value`` overrides.

    Raises:
        ConfigError: unknown key, type/range/choice error, malformed or non-mapping YAML, or a
            failed cross-field check of the model.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        for key, value in _read_yaml_mapping(path).items():
            _check_key(key, cls, f"config file {path}")
            values[key], sources[key] = value, f"config file {path}"
    for item in overrides:
        key, raw = _split_override(item)
        _check_key(key, cls, _COMMAND_LINE)
        values[key], sources[key] = _parse_override(raw, cls.model_fields[key].annotation), _COMMAND_LINE
    return validate_config(cls, values, sources)


def validate_config(cls: type[T], values: Mapping[str, Any], sources: Mapping[str, str] | None = None,
                    where: str | None = None) -> T:  # fmt: skip
    """``cls(**values)``, with a pydantic error turned into one ConfigError line.

    ``sources`` says where each key came from (for the message); ``where`` names the block for a
    nested config (e.g. "the sweep's grpo block").
    """
    for key in values:
        _check_key(key, cls, where or "the config")
    try:
        return cls.model_validate(dict(values))
    except ValidationError as err:
        raise ConfigError(describe_errors(err, cls, sources or {}, where, values)) from None


def describe_errors(err: ValidationError, cls: type, sources: Mapping[str, str], where: str | None = None,
                    values: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """A pydantic ValidationError as one line: ``config key 'x' (from the command line): ...``.

    Several errors under one key (the branches of a union, items of a list) become one: the key's
    expected type and the value given.
    """
    parts, by_key = [], {}
    for e in err.errors():
        by_key.setdefault(e["loc"][0] if e["loc"] else None, []).append(e)
    for key, errors in by_key.items():
        e = errors[0]
        msg = str(e["msg"]).removeprefix("Value error, ")
        if key is None:
            parts.append(f"invalid {cls.__name__}{f' ({where})' if where else ''}: {msg}")
        elif e["type"] == "missing":
            parts.append(f"missing required config key {key!r}{f' ({where})' if where else ''}")
        else:
            source = sources.get(key, where or "the defaults")
            if len(errors) > 1 or len(e["loc"]) > 1:
                expected = _type_name(cls.model_fields[key].annotation) if key in cls.model_fields else "?"
                given = (values or {}).get(key, e.get("input"))
                msg = f"expected {expected}; {'.'.join(map(str, e['loc'][1:]))}: {msg}" if len(errors) == 1 else f"expected {expected}"
                parts.append(f"config key {key!r} (from {source}): {msg}, got {given!r}")
            else:
                parts.append(f"config key {key!r} (from {source}): {msg}, got {e.get('input')!r}")
    return "; ".join(parts)


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """The fields of a config as plain YAML/JSON-safe values (lists, strings), in field order."""
    return _to_plain(cfg.model_dump())


def save_config(cfg: BaseModel, path: str | os.PathLike) -> None:
    """Write ``config_to_dict(cfg)`` as YAML, keys in field order, atomically (tmp + replace)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)
    atomic_write_text(path, text)


def config_help(cls: type[BaseModel]) -> str:
    """Two lines per field: ``name: type = default`` and, indented, its help and range."""
    lines = []
    for name, f in cls.model_fields.items():
        lines += [f"  {name}: {_type_name(f.annotation)} {_default_text(f)}", f"      {_help_text(f)}".rstrip()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Reading sources


def _read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping (an empty file is an empty mapping)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = read_yaml(f)
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed YAML in config file {path}: {' '.join(str(err).split())}") from err
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return dict(data)


def _split_override(item: str) -> tuple[str, str]:
    """``"key=value"`` -> ``("key", "value")``, splitting on the first ``=``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"command line override {item!r} is not of the form key=value")
    return key, raw


def _parse_override(raw: str, annotation: Any) -> Any:
    """The YAML value of an override; a text field keeps the raw text (``name=2024-01-01``, ``tag=yes``)."""
    try:
        parsed = read_yaml(raw)
    except yaml.YAMLError:
        return raw
    if _is_text(annotation) and parsed is not None and not isinstance(parsed, str):
        return raw
    return parsed


def _is_text(annotation: Any) -> bool:
    """``str`` or ``str | None``."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return annotation is str or (union and set(typing.get_args(annotation)) == {str, type(None)})


def _check_key(key: Any, cls: type[BaseModel], source: str) -> None:
    """Raise ConfigError for a key that is not a field, with a did-you-mean and the valid keys."""
    names = list(cls.model_fields)
    if isinstance(key, str) and key in names:
        return
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown config key {key!r} (from {source}).{hint} Valid keys: {', '.join(names)}")


# ----------------------------------------------------------------------------------------------
# Presentation


def _type_name(tp: Any) -> str:
    """Readable annotation: ``int``, ``float | None``, ``list[str]``, ``Literal['a', 'b']``."""
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "").replace("pathlib.", "")


def _default_text(f) -> str:
    if f.is_required():
        return "(required)"
    default = f.get_default(call_default_factory=True)
    return f"= {os.fspath(default) if isinstance(default, os.PathLike) else default!r}"


_BOUNDS = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("<=", "le"),
           annotated_types.Lt: ("<", "lt")}  # fmt: skip


def _help_text(f) -> str:
    """The field's description, with its range (e.g. ``[>= 2]``) when it declares one."""
    bounds = [f"{_BOUNDS[type(m)][0]} {getattr(m, _BOUNDS[type(m)][1])}" for m in f.metadata if type(m) in _BOUNDS]
    text = f.description or ""
    return f"{text} [{', '.join(bounds)}]" if bounds else text


def _to_plain(value: Any) -> Any:
    """Tuples into lists and paths into strings, recursively (floats stay floats, inf included)."""
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {_to_plain(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
