"""Readers and scorers of the published formats that a YAML template cannot handle alone, one module per
task family. Each module registers what it has with `evaluation.task.processor`, `loader` and `scorer`
(and metrics with `evaluation.metrics.register`); the YAML definitions in evaluation/tasks/ name them.
Every module here is imported when `evaluation.task` is, so a name is known before any YAML is read.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
