"""Shared CLI plumbing: flags and YAML keys derived from a job's config dataclass, one-line failures.

``dataclass_parser(Config)`` makes one flag per field, recursively: a nested dataclass field ``checkpoint`` gives
``--checkpoint.every`` (also spelt ``--checkpoint-every``). Types come from the annotations: ``bool`` ->
``--x/--no-x``, ``int``/``float``/``str``, ``T | None`` (``none`` on the command line), ``dict``/``list`` -> JSON.
Help text is the field's trailing ``#`` comment. ``parse_config(parser, Config, argv)`` reads ``--config
job.yaml`` (keys: field names, nested mappings or dotted/flag spellings), lets flags win over it, checks required
fields and builds the dataclass. Another job adopts it with two calls; extra job-only flags (``--no-ray``) are
added to the parser as usual.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import yaml

_MISSING = object()


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file whose keys are these flags (with _ or -); flags win")


def _comments(cls: type) -> dict[str, str]:
    """Trailing ``# comment`` of each field line in the class source: the flag's help."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match:
            found[match[1]] = match[2].strip()
    return found


def _optional(kind: Any) -> tuple[Any, bool]:
    args = typing.get_args(kind)
    if (typing.get_origin(kind) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return kind, False


def _converter(kind: Any, optional: bool) -> Callable[[str], Any]:
    origin = typing.get_origin(kind) or kind
    if origin in (dict, list):
        base = json.loads
    elif kind in (int, float, str):
        base = kind
    else:
        base = str
    if not optional:
        return base

    def convert(text: str):
        return None if text.lower() in ("none", "null") else base(text)

    convert.__name__ = getattr(base, "__name__", "value")
    return convert


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _MISSING


def _spellings(dest: str) -> list[str]:
    flag = dest.replace("_", "-")
    return [f"--{flag}"] + ([f"--{flag.replace('.', '-')}"] if "." in flag else [])


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "", defaults: Any = None,
                       aliases: dict[str, str] | None = None) -> None:
    """One flag per leaf field of ``cls`` (recursively); ``defaults``: the instance whose values are shown as
    defaults (a trainer's own section defaults), ``aliases``: old spelling -> dest (``cls.FLAG_ALIASES``)."""
    aliases = getattr(cls, "FLAG_ALIASES", {}) if aliases is None else aliases
    by_target: dict[str, list[str]] = {}
    for alias, target in aliases.items():
        by_target.setdefault(target, []).append(alias)
    hints = typing.get_type_hints(cls)
    helps = _comments(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        kind, optional = _optional(hints[field.name])
        dest = prefix + field.name
        default = getattr(defaults, field.name) if defaults is not None else _default(field)
        if dataclasses.is_dataclass(kind):
            add_dataclass_args(parser, kind, dest + ".", None if default is _MISSING else default, aliases)
            continue
        if dest in aliases:  # an old spelling of another field: it is one of that field's flags
            continue
        names = _spellings(dest)
        for alias in by_target.get(dest, []):
            names += [n for n in _spellings(alias) if n not in names]
        text = helps.get(field.name, "")
        if default is _MISSING:
            text = (text + " (required)").strip()
        elif not isinstance(default, bool):
            text = f"{text} (default: {default})".strip()
        if kind is bool and not optional:
            text = f"{text} (default: {'on' if default else 'off'})".strip()
            parser.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(*names, dest=dest, type=_converter(kind, optional), default=argparse.SUPPRESS,
                                metavar=field.name.upper(), help=text)


def dataclass_parser(cls: type, prog: str, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_flag(parser)
    add_dataclass_args(parser, cls)
    return parser


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        name = prefix + str(key).replace("-", "_")
        if isinstance(value, dict) and not name.endswith("overrides"):
            nested = _flatten(value, name + ".")
            out.update(nested)
        else:
            out[name] = value
    return out


def _build(cls: type, values: dict[str, Any], prefix: str = "", base: Any = None) -> tuple[Any, list[str]]:
    """(instance, missing required field names) from flat ``{dotted dest: value}``; fields not given keep the
    value in ``base`` (the enclosing config's default section) or the field default."""
    hints = typing.get_type_hints(cls)
    kwargs, missing = {}, []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        kind, _ = _optional(hints[field.name])
        dest = prefix + field.name
        default = getattr(base, field.name) if base is not None else _default(field)
        if dataclasses.is_dataclass(kind):
            kwargs[field.name], more = _build(kind, values, dest + ".", None if default is _MISSING else default)
            missing += more
        elif dest in values:
            kwargs[field.name] = values[dest]
        elif default is _MISSING:
            missing.append(dest)
        else:
            kwargs[field.name] = default
    if missing:
        return None, missing
    return cls(**kwargs), []


def parse_config(parser: argparse.ArgumentParser, cls: type, argv: list[str] | None) -> tuple[Any, argparse.Namespace]:
    """(config dataclass, namespace with the job-only flags too). Precedence: flags > YAML > field defaults."""
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        with open(args.config) as handle:
            data = _flatten(yaml.safe_load(handle) or {})
        known = {a.dest for a in parser._actions}
        aliases = {d.replace(".", "_"): d for d in known}
        for alias, target in getattr(cls, "FLAG_ALIASES", {}).items():
            aliases[alias] = aliases[alias.replace(".", "_")] = target
        unknown = [k for k in data if k not in known and k not in aliases]
        if unknown:
            parser.error(f"unknown keys in {args.config}: {unknown}")
        values.update({(k if k in known else aliases[k]): v for k, v in data.items()})
    values.update({k: v for k, v in vars(args).items() if k != "config"})
    cfg, missing = _build(cls, values)
    if missing:
        parser.error("required: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    for key, value in values.items():  # job-only flags (not dataclass fields) stay on the namespace
        setattr(args, key, value)
    return cfg, args


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """For hand-written parsers (jobs not yet derived from a dataclass): flags override the YAML file."""
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        with open(pre.config) as handle:
            data = yaml.safe_load(handle) or {}
        known = {a.dest for a in parser._actions}
        unknown = [k for k in data if k.replace("-", "_") not in known]
        if unknown:
            parser.error(f"unknown keys in {pre.config}: {unknown}")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in data.items()})
    return parser.parse_args(argv)


def run_main(name: str, body: Callable[[], int | None]) -> int:
    """Run a job; any failure becomes one line on stderr and exit status 1 (2 for usage errors)."""
    try:
        return body() or 0
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the job's contract is one readable line, not a traceback
        print(f"{name}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
