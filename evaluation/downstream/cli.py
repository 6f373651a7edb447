"""`mnemos downstream ...`: each task module registers its own sub-command."""

from __future__ import annotations

import importlib

TASK_MODULES: list[str] = [
    "evaluation.downstream.slots",
    "evaluation.downstream.mil",         # Hopfield pooling MIL (Tiger/Fox/Elephant)
    "evaluation.downstream.toy",         # Hopfield toy smoke tasks
    "evaluation.downstream.bert_heads",  # BERT heads by Hopfield operating class
    "evaluation.downstream.repertoire",  # DeepRC-style immune repertoire classification
]


def register(subparsers) -> None:
    p = subparsers.add_parser("downstream", help="Hopfield-layer and Slot Attention downstream tasks")
    sub = p.add_subparsers(dest="task", metavar="TASK")
    for name in TASK_MODULES:
        importlib.import_module(name).register(sub)
    p.set_defaults(func=lambda args: p.print_help() or 2)
