"""A criterion's config fields with their allowed values beside them, and everything derived
from the config dataclass alone.

``flag(default, help, Range(...))`` is fairseq's ``field(default=..., metadata={"help": ...})``
whose metadata also holds the allowed range, and whose help (what ``--help`` shows) ends with it.
A ChoiceEnum field's choices and a bool field's two values come from its type. From the
dataclass follow:

- ``add_checked_args``: the criterion's flags for fairseq-train, a bad value being a usage error
  at argument parsing, before any data or model is loaded;
- ``check_config``: the same checks on a built config (fairseq-hydra-train's YAML configs,
  Python callers), a ValueError naming the flag;
- ``describe_flags``: each flag with its default, allowed values and help;
- ``undeclared_flags``: the fields that lack a help text or allowed values.

Fields whose default is an interpolation (``II("optimization.sentence_avg")``) mirror another
group's setting: they are not the criterion's flags and carry no range.
"""

import argparse
import dataclasses
import math
import numbers
import os
from enum import Enum
from typing import Any, NamedTuple, Optional

from fairseq.dataclass.utils import gen_parser_from_dataclass


@dataclasses.dataclass(frozen=True)
class Range:
    """Numbers from ``lo`` to ``hi`` (None: no upper bound), each end included unless open.
    ``words`` are strings allowed instead of a number, for a field typed ``str`` that holds a
    number as text or a word (``--skd-sigma 0.1`` or ``auto``)."""

    lo: float
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    words: tuple = ()

    @property
    def interval(self) -> str:
        upper = "inf)" if self.hi is None else f"{self.hi}" + (")" if self.hi_open else "]")
        return ("(" if self.lo_open else "[") + f"{self.lo}, " + upper

    def __str__(self):
        return " or ".join([self.interval, *map(repr, self.words)])

    def parse(self, value):
        """One of ``words`` (stripped, lower case), or else a number: a string of one only where
        words are allowed too. None where ``value`` is neither."""
        if isinstance(value, str):
            if value.strip().lower() in self.words:
                return value.strip().lower()
            try:
                return float(value) if self.words else None
            except ValueError:
                return None
        is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return value if is_number else None

    def problem(self, value) -> Optional[str]:
        """What is wrong with ``value`` ("must be in ..."), or None if it is allowed."""
        parsed = self.parse(value)
        if parsed in self.words:
            return None
        if parsed is not None and math.isfinite(parsed) and self._contains(parsed):
            return None
        if self.words:
            words = " or ".join(map(repr, self.words))
            return f"must be {words} or a number in {self.interval}, got {value!r}"
        return f"must be in {self.interval}, got {value!r}"

    def _contains(self, x) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        below = self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        return above and below


@dataclasses.dataclass(frozen=True)
class Choices:
    """One of ``values``, compared as strings (a ChoiceEnum member equals its value)."""

    values: tuple

    def __str__(self):
        return "{" + ", ".join(map(str, self.values)) + "}"

    def problem(self, value) -> Optional[str]:
        if str(value) in map(str, self.values):
            return None
        return f"must be one of {self.values}, got {value!r}"


@dataclasses.dataclass(frozen=True)
class Paths:
    """Existing files (or folders), one or several joined by ``separator`` (None: one only);
    the empty default means none is given."""

    kind: str = "file"
    separator: Optional[str] = ":"

    def __str__(self):
        several = f", or PATH1{self.separator}PATH2..." if self.separator else ""
        return f"an existing {self.kind}{several}"

    def problem(self, value) -> Optional[str]:
        if value in ("", None):
            return None
        exists = os.path.isdir if self.kind == "folder" else os.path.isfile
        for path in (str(value).split(self.separator) if self.separator else [str(value)]):
            if not exists(path):
                return f"must name an existing {self.kind}: {path!r} is not one"
        return None


def flag(default, help, allowed: Optional[Range] = None):
    """A config field with its help and allowed range. What ``--help`` shows is ``help`` followed
    by the default and the range, "(default: 0.5; range (0, 1])" (fairseq's parser shows no
    defaults of its own). ChoiceEnum and bool fields take their values from their type and need
    no ``allowed``."""
    allowed_text = "" if allowed is None else f"; range {allowed}" if isinstance(allowed, Range) else f"; {allowed}"
    shown = f"{help} (default: {'none' if default == '' else default}{allowed_text})"
    return dataclasses.field(default=default,
                             metadata={"help": shown, "description": help, "allowed": allowed})


def flag_name(name: str) -> str:
    """A config field's command-line flag, as fairseq's gen_parser_from_dataclass names it."""
    return "--" + name.replace("_", "-")


def is_interpolation(field: dataclasses.Field) -> bool:
    return isinstance(field.default, str) and field.default.startswith("${")


def flag_fields(config_cls):
    """The fields of ``config_cls`` that are its own flags (not ``_name``, not interpolations)."""
    return [f for f in dataclasses.fields(config_cls)
            if not f.name.startswith("_") and not is_interpolation(f)]


def allowed_values(field: dataclasses.Field):
    """A field's Range from its metadata, or Choices from its ChoiceEnum or bool type; None if
    it declares neither."""
    if field.metadata.get("allowed") is not None:
        return field.metadata["allowed"]
    if isinstance(field.type, type) and issubclass(field.type, Enum):
        return Choices(tuple(member.value for member in field.type))
    if field.type is bool:
        return Choices((False, True))
    return None


def field_problem(field: dataclasses.Field, value) -> Optional[str]:
    """What is wrong with ``value`` for ``field``, or None if it is allowed."""
    allowed = allowed_values(field)
    problem = allowed.problem(value) if allowed is not None else None
    if problem is None and field.type is int and not isinstance(value, numbers.Integral):
        problem = f"must be an integer in {allowed}, got {value!r}"
    return problem


class FlagInfo(NamedTuple):
    flag: str
    default: Any
    allowed: Any  # a Range or Choices
    help: str


def describe_flags(config_cls) -> list:
    """Each flag of ``config_cls`` in field order: FlagInfo(flag, default, allowed, help), the
    help without the range that ``--help`` appends."""
    return [FlagInfo(flag_name(f.name), f.default, allowed_values(f),
                     f.metadata.get("description", f.metadata.get("help")))
            for f in flag_fields(config_cls)]


def undeclared_flags(config_cls) -> list:
    """The flags of ``config_cls`` lacking a help text or allowed values, with what each lacks."""
    problems = []
    for info in describe_flags(config_cls):
        lacks = [what for what, missing in (("no help", not info.help),
                                            ("no allowed range or choices", info.allowed is None))
                 if missing]
        if lacks:
            problems.append(f"{info.flag}: {' and '.join(lacks)}")
    return problems


def check_config(config_cls, cfg, owner: str) -> None:
    """Raise ValueError "OWNER: --FLAG must be ..." for the first field of ``config_cls`` whose
    value in ``cfg`` (an instance or fairseq's DictConfig of it) is not allowed, or which is still
    an unresolved interpolation (a bare dataclass outside fairseq: set that field)."""
    for field in dataclasses.fields(config_cls):
        if field.name.startswith("_"):
            continue
        value = getattr(cfg, field.name)
        if is_interpolation(field) and isinstance(value, str):
            raise ValueError(f"{owner}: {field.name} is {value!r}, which only fairseq's config "
                             f"resolves; set it")
        problem = field_problem(field, value)
        if problem is not None:
            raise ValueError(f"{owner}: {flag_name(field.name)} {problem}")


def checked_type(field: dataclasses.Field, convert):
    """An argparse ``type``: ``convert``, then the field's allowed values."""

    def parse(text):
        value = convert(text)
        problem = field_problem(field, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its messages ("invalid float")
    return parse


class _RangeCheckingParser:
    """A view of an argparse parser whose ``add_argument`` gives each ranged field's flag a
    checking ``type``; fairseq builds a config's flags through ``parser.add_argument`` alone."""

    def __init__(self, parser, config_cls):
        self._parser = parser
        self._ranged = {flag_name(f.name): f for f in flag_fields(config_cls)
                        if isinstance(allowed_values(f), (Range, Paths))}

    def add_argument(self, *names, **kwargs):
        field = next((self._ranged[name] for name in names if name in self._ranged), None)
        if field is not None and kwargs.get("type") in (int, float, str):
            kwargs["type"] = checked_type(field, kwargs["type"])
        return self._parser.add_argument(*names, **kwargs)

    def __getattr__(self, name):
        return getattr(self._parser, name)


def add_checked_args(parser, config_cls) -> None:
    """``config_cls``'s flags on ``parser`` as fairseq adds them, their ranges checked when the
    command line is parsed (choices are argparse's own ``choices``)."""
    gen_parser_from_dataclass(_RangeCheckingParser(parser, config_cls), config_cls())
