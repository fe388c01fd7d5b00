"""Option dataclasses from untyped data: ``opt()`` fields, type-checked ``build``, TOML files,
``--set key=value`` parsing and merging.

Torch-free, and imports no other host module (only errors, and ``shipped`` lazily to find a
shipped config by name), so that ``config`` and ``presets`` both build on it without importing
each other at module level.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from hftguard.errors import ConfigError, did_you_mean

T = TypeVar("T")


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a help string (shown by ``hftguard plugins -v``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}."
                + did_you_mean(str(value), [str(c) for c in choices]),
                hint=f"Set {where} to one of the listed values.",
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for a in args:
            try:
                return _coerce(value, a, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        # is_dataclass narrows tp to "DataclassInstance | type[DataclassInstance]"; tp is a
        # field's type hint, always a class here
        if isinstance(value, tp):  # type: ignore[arg-type]
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of options, got {value!r}.")
        return build(tp, value, where)  # type: ignore[arg-type]
    if origin in (list, tuple):
        (item,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}.")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}.")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(
                    f"{where} = {number} is not a finite number.",
                    hint=f"Give {where} a finite value (nan and inf are never valid options).",
                )
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(
        f"{where}: expected {_type_name(tp)}, got {value!r}.",
        hint=f"Give {where} a value of type {_type_name(tp)}.",
    )


def build(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` with type coercion; unknown keys are errors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    prefix = f"{where}." if where else ""
    for key, value in data.items():
        norm = key.replace("-", "_")
        if norm not in fields:
            raise ConfigError(
                f"Unknown option '{prefix}{key}'.{did_you_mean(norm, fields)}",
                hint=f"Valid options{' of ' + where if where else ''}: {', '.join(fields)}.",
            )
        tp = hints[norm]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            # A nested table overrides the field's OWN default, not its class's defaults: a
            # [finetune.train] table (or an empty one) keeps the fine-tuning stage's lr 1e-5.
            value = merge(as_dict(_default(fields[norm])), value, f"{prefix}{norm}")
        kwargs[norm] = _coerce(value, tp, f"{prefix}{norm}")
    required = [
        name
        for name, f in fields.items()
        if f.init
        and name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if required:  # a (plugin) Config field without a default: the user must give it
        keys = ", ".join(f"'{prefix}{name}'" for name in required)
        raise ConfigError(
            f"Option{'s' if len(required) > 1 else ''} {keys} "
            f"{'are' if len(required) > 1 else 'is'} required ({cls.__name__} has no default "
            f"for {'them' if len(required) > 1 else 'it'}).",
            hint="Give "
            + " and ".join(f"--set {prefix}{name}=VALUE" for name in required)
            + (f" (or set it in the [{where}] table of a --config file)." if where else "."),
        )
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _default(f: dataclasses.Field) -> Any:  # type: ignore[type-arg]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def merge(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Recursive dict merge: tables merge, other values replace.

    A table meeting a plain value (``train = 5`` in a file, ``--set train.lr=...`` on the command
    line) is an error: silently keeping either would drop what the user wrote.
    """
    out = dict(base)
    for key, value in override.items():
        path = f"{where}.{key}" if where else str(key)
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            out[key] = merge(old, value, path)
        elif key in out and (isinstance(value, dict) != isinstance(old, dict)) and old is not None:
            table, scalar = (value, old) if isinstance(value, dict) else (old, value)
            raise ConfigError(
                f"'{path}' is given both as a table of options ({table!r}) and as the value "
                f"{scalar!r}.",
                hint=f"'{path}' is a table: write its options as {path}.<option> = value "
                f"(e.g. [{path}] in a TOML file, or --set {path}.<option>=value).",
            )
        else:
            out[key] = value
    return out


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as a TOML value when it is one, else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.lr=1e-4", "defense_options.rho=2"]`` into a nested dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set {item!r} is not of the form key=value.",
                hint="Example: --set train.lr=1e-4 --set defense_options.rho=2",
            )
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is set both as a value and a table.")
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"--set {item!r}: '{key}' is set both as a value and a table.")
        node[parts[-1]] = parse_value(value.strip())
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file with errors that name the file and the problem."""
    p = Path(path)
    if not p.exists():
        from hftguard import shipped

        packaged = shipped.config_path(str(path))
        if packaged is None:
            names = ", ".join(c.name for c in shipped.configs())
            raise ConfigError(
                f"Config file {p} does not exist, and no shipped config has that name.",
                hint=f"Check the path; shipped configs (run them by name): {names} "
                "(`hftguard configs` lists them).",
            )
        p = packaged
    if p.is_dir():
        raise ConfigError(f"Config file {p} is a directory.", hint="Give --config a .toml file.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Config file {p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}): it is a binary file or in another encoding.",
            hint="Check that the path names your TOML config (not a model, archive or other "
            "binary file); TOML files must be UTF-8, so re-save it as UTF-8 if it is text.",
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"Cannot read config file {p}: {exc.strerror or exc}.",
            hint="Check the file's permissions.",
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"Config file {p} is not valid TOML: {exc}.",
            hint="See https://toml.io for the syntax; strings need quotes.",
        ) from exc


def field_docs(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of each field of a Config dataclass, for listings and docs."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def check_range(where: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """Raise a ConfigError when ``value`` is outside [lo, hi] (nan is outside every range)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(
            f"{where} = {value} is not a finite number.", hint=f"Give {where} a finite value."
        )
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(
            f"{where} = {value} is out of range {bounds}.", hint=f"Choose {where} within {bounds}."
        )


def as_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (for manifests)."""
    return dataclasses.asdict(obj)
