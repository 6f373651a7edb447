"""argparse types for the command line's numbers, input paths and output paths.

A bad value stops the command while its arguments are parsed, before anything is read, written or spawned,
and argparse prints the option with the rule and the value: "argument --batch-size: must be an integer
>= 1, got 0".
"""

from __future__ import annotations

import argparse
import os
from typing import Callable


def integer(low: int | None = None) -> Callable[[str], int]:
    """An integer, at least `low` when given."""
    rule = "an integer" if low is None else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return parse


def number(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high], or (low, high] with `low_open`; either bound may be left out."""
    rule = _interval_rule(low, high, low_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if not _inside(value, low, high, low_open):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value:g}")
        return value

    return parse


def comma_list(item: Callable[[str], object], distinct: bool = False) -> Callable[[str], str]:
    """Comma-separated values that each pass `item` (one of the types above), none repeated with `distinct`;
    the text is kept as typed, since configs record it."""

    def parse(text: str) -> str:
        parts = [s.strip() for s in text.split(",") if s.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"must list at least one value, got {text!r}")
        try:
            values = [item(s) for s in parts]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"each item {err} (in {text!r})") from None
        if distinct and len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"must not repeat an item, got {text!r}")
        return text

    return parse


def _inside(value: float, low, high, low_open: bool) -> bool:
    if value != value or value in (float("inf"), float("-inf")):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or value <= high


def _interval_rule(low, high, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"a number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a number <= {high:g}"
    return "a finite number"


def existing_path(text: str) -> str:
    """A file or directory that is there now, so a typo stops the command before it makes its run directory."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file or directory: {text!r}")
    return text


def output_dir(text: str) -> str:
    """A directory to write into: there already, or to be made, but not a file and not below one (the
    mkdir would fail half-way through the command)."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"must be a directory, but {text!r} is a file")
    _no_file_above(text)
    return text


def output_file(text: str) -> str:
    """A file to write (or a file-name prefix): not a directory, and no file where a directory of its path
    must be."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"must be a file name, but {text!r} is a directory")
    _no_file_above(text)
    return text


def _no_file_above(text: str) -> None:
    parent = os.path.dirname(os.path.abspath(text))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"cannot be written: {parent!r} in its path is a file, not a directory")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and ends each option's help with its default, so `--help` says what
    an option left out means. Defaults that mean "off" or "not given" (None, False, empty) are not shown,
    nor where the help already speaks of the default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default in (None, False, "", [], argparse.SUPPRESS) or "default" in text.lower()
                or not action.option_strings):
            return text
        shown = ",".join(map(str, default)).replace("%", "%%") if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"default: {shown}"


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose refusals are one line and exit code 2, like every other refusal of the
    command line: argparse's own puts the whole usage (a dozen lines for `mnemos plan`) above the error.
    Sub-commands added through add_subparsers get this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")
