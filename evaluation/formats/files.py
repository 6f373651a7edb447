"""What every family's loader starts with: the file checks (one file per split where a format has one, a
missing file named with its task before anything is parsed) and the two JSON readers, whose errors name
the task, the file and, for JSON Lines, the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

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


class Record(dict):
    """One JSON Lines record (or a part of one) that knows where it came from, for error messages."""

    def __init__(self, data: dict, where: str):
        super().__init__(data)
        self.where = where


def read_jsonl(files: Any, task: str) -> Iterator[Record]:
    """Every record of one split's JSON Lines file(s); a missing file or a line that is no JSON object is a
    TaskError naming the file and line."""
    for path in files if isinstance(files, (list, tuple)) else [files]:
        existing_file(path, task)
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TaskError(f"task {task}: {path} line {n} is not JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise TaskError(f"task {task}: {path} line {n} is not a JSON object")
                yield Record(obj, f"task {task}: {path} line {n}")


def read_json(files: Any, task: str) -> Any:
    """The parsed contents of a split's one JSON file; unparsable JSON is a TaskError naming the file."""
    p = single_file(files, task)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TaskError(f"task {task}: {p} is not valid JSON: {e}") from None


def need(rec: Record, obj: dict, *fields: str) -> None:
    """A TaskError at the record's file and line when `obj` (the record or a part of it) lacks a field."""
    missing = [f for f in fields if f not in obj]
    if missing:
        raise TaskError(f"{rec.where}: missing field {', '.join(missing)} (has {', '.join(sorted(obj))})")
