"""`mnemos` command line: parse, dispatch. Each command group lives beside the code it drives and
registers itself through a `register(subparsers)` function listed in COMMAND_MODULES."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from launcher.argtypes import CommandParser, HelpFormatter

# Modules that contribute subcommands, with the commands each registers and their one-line help
# (register(subparsers) sets `func` on its parsers). A command line that names a command imports only that
# command's module: `mnemos jobs` or `mnemos submit` start in a fraction of a second instead of importing
# torch, scipy and the models. `mnemos --help` (and an unknown command word) lists the commands from this
# table alone; tests/launcher/test_cli.py keeps the help here equal to what each module registers.
COMMAND_MODULES: dict[str, dict[str, str]] = {
    "launcher.train_cli": {"train": "train a model (resumes from the newest valid checkpoint)"},
    "parallel.cli": {"plan": "memory per GPU and expected step time of a layout, before launch"},
    "cluster.cli": {"submit": "submit a multi-node training job to Slurm or Kubernetes",
                    "jobs": "follow and control submitted jobs"},
    "data.cli": {"data": "data pipeline: tokenizer, tokenize, dedup, decontaminate, blend, stats"},
    "evaluation.cli": {"eval": "zero/one/few-shot evaluation of a checkpoint (JSON + Markdown + plots)",
                       "eval-data": "build task data: word lists and GPT-3 synthetic task files"},
    "parallel.ckpt_cli": {"ckpt": "inspect, verify, reshard and export checkpoints"},
    "launcher.finetune": {"finetune": "fine-tune a BERT checkpoint on a classification/regression/span task"},
    "evaluation.downstream.cli": {"downstream": "Hopfield-layer and Slot Attention downstream tasks"},
    "launcher.quickstart": {"quickstart": "the embedded default: data -> tokenizer -> 2-rank ZeRO-2 training with "
                                          "resume -> few-shot evaluation, on CPU"},
}


def requested_command(argv: list[str]) -> str | None:
    """The command word of a command line (the first argument that is no option or option value); None when a
    help option comes first, because `mnemos --help train` shows the top-level help."""
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help"):
            return None
        if arg == "--log-level":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole `mnemos` parser; given a known `command`, with only the module that registers it."""
    parser, sub = _top_level()
    modules = [m for m, commands in COMMAND_MODULES.items() if command in commands] or list(COMMAND_MODULES)
    for name in modules:
        importlib.import_module(name).register(sub)
    use_formatter(parser, HelpFormatter)
    return parser


def overview_parser() -> argparse.ArgumentParser:
    """What `mnemos`, `mnemos --help` and an unknown command word need: every command with its one-line help,
    importing none of the modules (the whole parser imports torch, seconds of start-up)."""
    parser, sub = _top_level()
    for commands in COMMAND_MODULES.values():
        for command, help_line in commands.items():
            sub.add_parser(command, help=help_line)
    use_formatter(parser, HelpFormatter)
    return parser


def _top_level() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = CommandParser(
        prog="mnemos",
        description="Train and evaluate GPT-3-class and BERT models across many machines.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def use_formatter(parser: argparse.ArgumentParser, formatter) -> None:
    """Give every (sub)command's --help the same formatter, set here once rather than in each module."""
    parser.formatter_class = formatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_formatter(sub, formatter)


def parse_command_line(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """(the parser, the parsed arguments) of a command line. A command whose parser sets `parse_rest` (each
    `mnemos downstream TASK`) hands the arguments after its name to that function: its own parser, built
    only when it is named."""
    command = requested_command(argv)
    known = any(command in commands for commands in COMMAND_MODULES.values())
    parser = build_parser(command) if known else overview_parser()
    args, rest = parser.parse_known_args(argv)
    parse_rest = getattr(args, "parse_rest", None)
    if parse_rest is None:
        if rest:
            parser.parse_args(argv)  # argparse's own error for the arguments no parser knows
        return parser, args
    task_args = parse_rest(rest)
    task_args.log_level = args.log_level
    return parser, task_args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, args = parse_command_line(argv)
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
    except SystemExit as stop:
        if not isinstance(stop.code, str):
            raise
        # a command's own one-line refusal, `raise SystemExit("mil: --folds 101 (rule: ...)")`: Python would
        # print it and exit 1; it is the same kind of error as the ones above
        print(stop.code, file=sys.stderr)
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
