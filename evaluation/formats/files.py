"""The file checks every family's loader starts with: one file per split where a format has one, and a
missing file named with its task before anything is parsed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.task import TaskError


def existing_file(path: Any, task: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"task {task}: data file {p} does not exist")
    return p


def single_file(files: Any, task: str, what: str = "file") -> Path:
    """The one existing path of a split whose format is a single file (a one-item list is accepted)."""
    if isinstance(files, (list, tuple)):
        if len(files) != 1:
            raise TaskError(f"task {task}: expected one {what} per split, got {files}")
        files = files[0]
    return existing_file(files, task)
