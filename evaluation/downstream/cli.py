"""`mnemos downstream TASK ...`: each task module registers its own sub-command.

The task modules import torch and scipy (seconds). `mnemos downstream --help` lists the tasks from the table
below alone, and `mnemos downstream TASK ...` imports only that task's module, whose parser then reads the
rest of the command line (its `--help`, its errors, its prog name `mnemos downstream TASK`).
tests/launcher/test_cli.py keeps the help lines here equal to what each module registers.
"""

from __future__ import annotations

import argparse
import importlib

TASK_MODULES: dict[str, tuple[str, str]] = {
    "slots": ("evaluation.downstream.slots",
              "Slot Attention: object discovery / set prediction on rendered scenes"),
    "mil": ("evaluation.downstream.mil",
            "multiple-instance learning with Hopfield pooling on bag .npz files (e.g. the paper's Tiger and Fox)"),
    "toy": ("evaluation.downstream.toy", "toy smoke tasks for the Hopfield layers (bit-pattern bags, latch)"),
    "bert-heads": ("evaluation.downstream.bert_heads",
                   "classify BERT attention heads into the Hopfield operating classes"),
    "repertoire": ("evaluation.downstream.repertoire",
                   "immune repertoire classification (DeepRC-style, Hopfield pooling)"),
}


def register(subparsers) -> None:
    p = subparsers.add_parser("downstream", help="Hopfield-layer and Slot Attention downstream tasks")
    sub = p.add_subparsers(dest="task", metavar="TASK")
    for task, (module, help_line) in TASK_MODULES.items():
        # No options of its own (not even -h): launcher.cli.parse_command_line hands everything after TASK
        # to the task's own parser.
        stub = sub.add_parser(task, help=help_line, add_help=False)
        stub.set_defaults(parse_rest=lambda rest, task=task, module=module:
                          task_parser(module).parse_args([task, *rest]))
    p.set_defaults(func=lambda args: p.print_help() or 2)


def task_parser(module: str) -> argparse.ArgumentParser:
    """The `mnemos downstream` parser with the one task `module` registers."""
    from launcher.argtypes import CommandParser, HelpFormatter
    from launcher.cli import use_formatter
    parser = CommandParser(prog="mnemos downstream")
    importlib.import_module(module).register(parser.add_subparsers(dest="task", metavar="TASK"))
    use_formatter(parser, HelpFormatter)
    return parser
