"""Reading a run's RUN/logs/steps.jsonl in tests."""

from __future__ import annotations

import json
from pathlib import Path


def step_records(run_dir: Path, while_running: bool = False) -> list[dict]:
    """The records logged so far. A finished run's log must parse whole; `while_running` reads a log the
    run may not have started yet or is half-way through writing a line of (that line is skipped)."""
    path = Path(run_dir) / "logs" / "steps.jsonl"
    if while_running and not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            if not while_running:
                raise
    return records


def step_losses(run_dir: Path, key: str = "loss", while_running: bool = False) -> dict[int, float]:
    """step -> logged training metric (the last record wins if a step was logged twice)."""
    return {rec["step"]: rec[key] for rec in step_records(run_dir, while_running) if rec.get("split") == "train"}
