"""Shared CLI plumbing: flags and YAML keys derived from a job's config dataclass, one-line failures.

``dataclass_parser(Config)`` makes one flag per field, recursively: a nested dataclass field ``checkpoint`` gives
``--checkpoint.every`` (also spelt ``--checkpoint-every``). Types come from the annotations: ``bool`` ->
``--x/--no-x``, ``int``/``float``/``str``, ``int | float``, ``T | None`` (``none`` on the command line),
``list[str]`` -> a repeatable flag, ``dict``/``list`` -> JSON. Help text is the field's trailing ``#`` comment plus
its default. ``aliases`` (or ``Config.FLAG_ALIASES``) maps other spellings to a field (``lr`` -> ``optim.lr``);
``positional`` names fields given without a flag (``blt stats DATASET``). ``parse_config(parser, Config, argv)``
reads ``--config job.yaml`` (keys: any flag spelling with ``_`` or ``-``, or nested mappings), lets flags win over
it, checks required fields and builds the dataclass. A wrong argument is one line on stderr and exit status 2.
Every job adopts it with two calls; extra job-only flags (``--no-ray``) are added to the parser as usual.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import operator
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import yaml

_MISSING = object()


class JobParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``prog: error: ...``) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


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
        return (rest[0] if len(rest) == 1 else functools.reduce(operator.or_, rest)), True
    return kind, False


def _number(text: str) -> int | float:
    """``int | float`` fields: an integer when the text is one."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _converter(kind: Any, optional: bool) -> Callable[[str], Any]:
    origin = typing.get_origin(kind) or kind
    if origin in (typing.Union, types.UnionType) and set(typing.get_args(kind)) == {int, float}:
        base = _number
    elif origin in (dict, list):
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


def _fields(cls: type, prefix: str, base: Any) -> Iterator[tuple[dataclasses.Field, Any, bool, str, Any]]:
    """(field, type, optional, dotted dest, default) of each init field; defaults come from ``base`` if given (a
    trainer's own section instance), else from the field."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.init:
            kind, optional = _optional(hints[field.name])
            default = getattr(base, field.name) if base is not None else _default(field)
            yield field, kind, optional, prefix + field.name, default


def _spellings(dest: str) -> list[str]:
    flag = dest.replace("_", "-")
    return [f"--{flag}"] + ([f"--{flag.replace('.', '-')}"] if "." in flag else [])


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "", defaults: Any = None,
                       aliases: dict[str, str] | None = None, positional: tuple[str, ...] = ()) -> None:
    """One flag per leaf field of ``cls`` (recursively); ``defaults``: the instance whose values are shown as
    defaults (a trainer's own section defaults), ``aliases``: other spelling -> dest (``cls.FLAG_ALIASES``),
    ``positional``: dests taken as positional arguments."""
    aliases = getattr(cls, "FLAG_ALIASES", {}) if aliases is None else aliases
    by_target: dict[str, list[str]] = {}
    for alias, target in aliases.items():
        by_target.setdefault(target, []).append(alias)
    helps = _comments(cls)
    for field, kind, optional, dest, default in _fields(cls, prefix, defaults):
        if dataclasses.is_dataclass(kind):
            add_dataclass_args(parser, kind, dest + ".", None if default is _MISSING else default, aliases)
            continue
        if dest in aliases:  # an old spelling of another field: it is one of that field's flags
            continue
        text = helps.get(field.name, "")
        if dest in positional:
            many = typing.get_origin(kind) is list  # ``blt dashboard RUN [RUN ...]``
            parser.add_argument(dest, nargs="*" if many else "?", default=argparse.SUPPRESS, metavar=dest.upper(),
                                help=text + ("" if default is _MISSING else f" (default: {default})"))
            continue
        names = _spellings(dest)
        for alias in by_target.get(dest, []):
            names += [n for n in _spellings(alias) if n not in names]
        if default is _MISSING:
            text = (text + " (required)").strip()
        elif not isinstance(default, bool):
            text = f"{text} (default: {default})".strip()
        if kind is bool and not optional:
            text = f"{text} (default: {'on' if default else 'off'})".strip()
            parser.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        elif typing.get_origin(kind) is list and typing.get_args(kind) == (str,):
            parser.add_argument(*names, dest=dest, action="append", default=argparse.SUPPRESS,
                                metavar=field.name.upper(), help=f"{text} (repeatable)")
        else:
            parser.add_argument(*names, dest=dest, type=_converter(kind, optional), default=argparse.SUPPRESS,
                                metavar=field.name.upper(), help=text)


def dataclass_parser(cls: type, prog: str, description: str | None, aliases: dict[str, str] | None = None,
                     positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    parser = JobParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flag(parser)
    add_dataclass_args(parser, cls, aliases=aliases, positional=positional)
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
    kwargs, missing = {}, []
    for field, kind, _, dest, default in _fields(cls, prefix, base):
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


def _yaml_spellings(parser: argparse.ArgumentParser) -> dict[str, str]:
    """YAML key -> dest: the dest itself, and every flag spelling with ``_`` for ``-`` (not the ``--no-`` ones)."""
    out: dict[str, str] = {}
    for action in parser._actions:
        if action.dest in ("help", "config"):
            continue
        out[action.dest] = out[action.dest.replace(".", "_")] = action.dest
        negated = {s for s in action.option_strings if s.startswith("--no-")} if isinstance(
            action, argparse.BooleanOptionalAction) else set()
        for spelling in action.option_strings:
            if spelling not in negated:
                key = spelling.lstrip("-").replace("-", "_")
                out[key] = out[key.replace(".", "_")] = action.dest
    return out


def yaml_dest(parser: argparse.ArgumentParser, key: str) -> str:
    """The field (dotted dest) a YAML key names, in any spelling the parser accepts."""
    return _yaml_spellings(parser)[key.replace("-", "_")]


def parse_config(parser: argparse.ArgumentParser, cls: type, argv: list[str] | None) -> tuple[Any, argparse.Namespace]:
    """(config dataclass, namespace with the job-only flags too). Precedence: flags > YAML > field defaults."""
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        with open(args.config) as handle:
            data = _flatten(yaml.safe_load(handle) or {})
        spellings = _yaml_spellings(parser)
        data = {k.replace("-", "_"): v for k, v in data.items()}
        unknown = [k for k in data if k not in spellings]
        if unknown:
            parser.error(f"unknown keys in {args.config}: {unknown}")
        values.update({spellings[k]: v for k, v in data.items()})
    values.update({k: v for k, v in vars(args).items() if k != "config"})
    try:
        cfg, missing = _build(cls, values)
    except (TypeError, ValueError) as exc:  # a field's own check (unknown mode, bad range): a usage error
        parser.error(str(exc))
    if missing:
        flags = {a.dest: (a.option_strings[0] if a.option_strings else a.metavar) for a in parser._actions}
        parser.error("required: " + ", ".join(flags.get(m, "--" + m.replace("_", "-")) for m in missing))
    for key, value in values.items():  # job-only flags (not dataclass fields) stay on the namespace
        setattr(args, key, value)
    return cfg, args


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
