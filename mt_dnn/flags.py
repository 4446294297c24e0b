"""One declaration per flag, and what is generated from it.

A flag is a dataclass field made by :func:`setting` (its default, help text, choices and valid range), in
``TrainConfig`` (``mt_dnn.config``) or in a method's ``Options`` (``mt_dnn.perturbation``). From those fields
come the argparse parsers (``mt_dnn.train``, ``experiments.hf_trainer``), the checks of ``--config`` files and
grid ``flags`` (types, choices, ranges: a one-line error naming the file and key), ``TrainConfig.validate``,
the options ``RegularizedTrainer`` accepts, and the Markdown flag reference (:func:`markdown`, rendered from the
parser itself, so it lists exactly what ``--help`` shows).

Plain dataclass metadata rather than jsonargparse or ``HfArgumentParser``: the configs already are dataclasses,
a method's options need a ``--<method>_`` prefix and must belong to one method, and neither library checks
numeric ranges, so both would still need this layer on top (and jsonargparse would be a new dependency).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import operator
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterable

from data_utils.task_def import ConfigError

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_KIND_TEXT = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
              list: "a list of strings"}


def setting(default: Any, help: str, *, choices: Iterable = (), ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, flag: str | None = None) -> Any:
    """A dataclass field that declares a flag: its default, help text, choices and valid range (``ge``/``gt``
    lower, ``le``/``lt`` upper bounds), and its flag name when it is not the field's (``lambda_`` -> ``lambda``)."""
    bounds = tuple((op, b) for op, b in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if b is not None)
    meta = {"help": help, "choices": tuple(choices), "bounds": bounds, "flag": flag}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Flag:
    """One flag. ``key`` is its name in ``--config`` files, grid ``flags`` and the parsed namespace
    (``lr``, ``rapt_eta``); ``field`` the dataclass field it sets (``lr``, ``eta``, ``lambda_``)."""

    name: str  # without the method prefix: "eta", "lambda", "lr"
    type: type  # int, float, str, bool, or list (of strings)
    default: Any
    help: str
    field: str = ""
    optional: bool = False  # None is a valid value (meaning: decided later)
    choices: tuple = ()
    bounds: tuple = ()  # ((">=", 1), ("<", 1), ...)
    method: str | None = None  # the method this is an option of (None: a setting of every run)

    @property
    def key(self) -> str:
        return f"{self.method}_{self.name}" if self.method else self.name

    @property
    def option(self) -> str:
        """What is typed: ``--lr``, ``--rapt_eta``; a run setting that is on by default is ``--no_<key>``."""
        return f"--no_{self.key}" if self.type is bool and self.default is True and not self.method else f"--{self.key}"

    def range_text(self) -> str:
        return " and ".join(f"{op} {b}" if isinstance(b, int) else f"{op} {b:g}" for op, b in self.bounds)

    def describe(self) -> str:
        """The help text with the default and the valid range, as ``--help`` shows it."""
        extra = []
        if self.type is not bool and self.default not in (None, []) and "default:" not in self.help:
            extra.append(f"default: {self.default}")
        if self.bounds:
            extra.append(self.range_text())
        return self.help + (f" ({'; '.join(extra)})" if extra else "")

    def parse(self, value: Any, name: str | None = None) -> Any:
        """``value`` checked against the declaration (type, choices, range) and normalised (an int where a number
        is declared becomes a float); a ConfigError naming ``name`` (default: the flag) if it does not fit."""
        name = name or self.option
        if value is None and self.optional:
            return None
        kind = self.type
        if kind is float and type(value) is int:
            value = float(value)
        if (not isinstance(value, kind) or (kind is int and isinstance(value, bool))
                or (kind is list and not all(isinstance(v, str) for v in value))):
            hint = ""
            if kind is float and isinstance(value, str) and _is_number(value):
                hint = f"; YAML reads {value} as text: write it with a dot and a signed exponent, e.g. 1.0e-4"
            raise ConfigError(f"{name} must be {_KIND_TEXT[kind]} (got {value!r}{hint})")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{name} {value!r}; choose one of {', '.join(map(str, self.choices))}")
        if kind is float and not math.isfinite(value):  # inf passes a lower bound, and no flag means "none" by it
            raise ConfigError(f"{name} must be a finite number (got {value!r})")
        if not all(_OPS[op](value, b) for op, b in self.bounds):
            raise ConfigError(f"{name} must be {self.range_text()} (got {value!r})")
        return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _kind(hint: Any) -> tuple[type, bool]:
    """(int | float | str | bool | list, whether None is allowed) of a field's type hint."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _kind(inner[0])[0], type(None) in args
    origin = typing.get_origin(hint) or hint
    return (list if origin is list else origin), False


@functools.cache
def declared(cls: type, method: str | None = None) -> tuple[Flag, ...]:
    """The flags declared by the fields of dataclass ``cls`` (fields made by :func:`setting`)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind, optional = _kind(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meta = f.metadata
        out.append(Flag(name=meta["flag"] or f.name, type=kind, default=default, help=meta["help"], field=f.name,
                        optional=optional, choices=meta["choices"], bounds=meta["bounds"], method=method))
    return tuple(out)


def check_fields(obj: Any) -> None:
    """Every declared field of the dataclass instance ``obj`` against its declaration (ConfigError if not)."""
    for flag in declared(type(obj)):
        flag.parse(getattr(obj, flag.field))


def check_mapping(values: dict, flags: Iterable[Flag], where: str) -> dict[str, Any]:
    """``{key: value}`` from a ``--config`` file or a grid, each value checked against its flag; returns the
    normalised values. Errors name ``where`` and the key: ``c.yml: batch_size must be an integer (got 16.0)``."""
    by_key = {f.key: f for f in flags}
    unknown = sorted(map(str, set(values) - set(by_key)))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    return {k: by_key[k].parse(v, f"{where}: {k}") for k, v in values.items()}


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, flags: Iterable[Flag]) -> None:
    """One argparse argument per flag, with dest = its key. Nothing is filled in for a flag not typed (its
    value comes from a ``--config`` file or the declaration's default: see :func:`given`)."""
    for f in flags:
        kw: dict[str, Any] = {"dest": f.key, "default": argparse.SUPPRESS, "help": f.describe()}
        if f.type is bool:  # a method's switch can be turned off again; a run setting is one word
            kw["action"] = (argparse.BooleanOptionalAction if f.method
                            else "store_false" if f.default else "store_true")
        elif f.type is list:
            kw.update(action="append", metavar=f.name.upper())
        else:
            kw.update(type=f.type, choices=f.choices or None, metavar=None if f.choices else f.name.upper())
        parser.add_argument(f.option, **kw)


def given(args: argparse.Namespace, flags: Iterable[Flag]) -> dict[str, Any]:
    """The flags typed on the command line, by key, each checked against its declaration (ranges)."""
    typed = vars(args)
    return {f.key: f.parse(typed[f.key]) for f in flags if f.key in typed}


def _shown_default(action: argparse.Action) -> bool:
    """Whether a flag's help gets ``(default: X)`` appended: a default worth showing that its text does not
    already describe."""
    return action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in (action.help or "")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` with each flag's default appended, as the Markdown reference writes it: not for flags without
    one (None) and not where the help text already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and _shown_default(action):
            text += " (default: %(default)s)"
        return text


def markdown(parser: argparse.ArgumentParser) -> str:
    """The parser's flags as Markdown tables, one per argument group: exactly what ``--help`` lists."""
    lines = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        lines += [f"### {group.title}", "", "| flag | description |", "| --- | --- |"]
        for a in actions:
            flag = ", ".join(f"`{s}`" for s in a.option_strings)
            if a.nargs != 0:  # what follows the flag, as --help writes it
                flag += f" `{a.metavar or '{' + ','.join(map(str, a.choices)) + '}'}`" if a.choices else \
                    f" `{a.metavar or a.dest.upper()}`"
            text = a.help or ""
            if _shown_default(a):
                text += f" (default: {a.default})"  # as DefaultsHelpFormatter adds it to --help
            text = text.strip().replace("|", "&#124;").replace("<", "&lt;")  # runs/<tasks> is text, not HTML
            lines.append(f"| {flag} | {text} |")
        lines.append("")
    return "\n".join(lines)
