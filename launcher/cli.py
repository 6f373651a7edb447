"""`mnemos` command line: parse, dispatch. Each command group lives beside the code it drives and
registers itself through a `register(subparsers)` function listed in COMMAND_MODULES."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from launcher.argtypes import HelpFormatter

# Modules that contribute subcommands, with the commands each registers (register(subparsers) sets `func`
# on its parsers). A command line that names a command imports only that command's module: `mnemos jobs`
# or `mnemos submit` start in a fraction of a second instead of importing torch, scipy and the models.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "launcher.train_cli": ("train",),
    "parallel.cli": ("plan",),
    "cluster.cli": ("submit", "jobs"),
    "data.cli": ("data",),  # train-tokenizer/tokenize/dedup/decontaminate/blend/stats
    "evaluation.cli": ("eval", "eval-data"),
    "parallel.ckpt_cli": ("ckpt",),  # inspect/verify/reshard/export-hf/import-hf/export-torch
    "launcher.finetune": ("finetune",),  # BERT
    "evaluation.downstream.cli": ("downstream",),  # mil/repertoire/bert-heads/slots/toy
    "launcher.quickstart": ("quickstart",),
}


def requested_command(argv: list[str]) -> str | None:
    """The command word of a command line (the first argument that is no option or option value)."""
    args = iter(argv)
    for arg in args:
        if arg == "--log-level":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `mnemos` parser; given a known `command`, with only the module that registers it."""
    parser = argparse.ArgumentParser(
        prog="mnemos",
        description="Train and evaluate GPT-3-class and BERT models across many machines.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [m for m, commands in COMMAND_MODULES.items() if command in commands] or list(COMMAND_MODULES)
    for name in modules:
        importlib.import_module(name).register(sub)
    _use_formatter(parser, HelpFormatter)
    return parser


def _use_formatter(parser: argparse.ArgumentParser, formatter) -> None:
    """Give every (sub)command's --help the same formatter, set here once rather than in each module."""
    parser.formatter_class = formatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _use_formatter(sub, formatter)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(requested_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except _user_errors() as err:
        print(f"mnemos: {err}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors in what the user asked for, not bugs: one line and exit code 2, no traceback. An input file,
    checkpoint (launcher.inference.CheckpointNotFound) or tokenizer that is not there is a FileNotFoundError;
    an --out that names a file, a NotADirectoryError. Python evaluates an except clause only when an
    exception arrives, so the import costs nothing on success."""
    from launcher.config import ConfigError
    return ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError


if __name__ == "__main__":
    sys.exit(main())
