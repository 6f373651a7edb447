"""Shared plumbing for the Hopfield downstream tasks: run directory, seeding, progress, AUC statistics, and the
JSON + Markdown result files (RUN/config.yaml, RUN/tensorboard/, RUN/results/ like every mnemos run)."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import yaml

from evaluation.json_values import finite_or_null

log = logging.getLogger("mnemos.downstream")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(n: int) -> None:
    """CPU threads for this process (the downstream tasks default to 1: they are small and the CI is shared)."""
    if n > 0:
        torch.set_num_threads(n)


@dataclass
class RunDir:
    root: Path

    @classmethod
    def check(cls, out: str | Path, task: str, config: dict) -> None:
        """Refuse an --out whose config.yaml is not this downstream task's own (a training run's, another
        task's): writing ours would replace it. A rerun of the same task into its own directory is fine."""
        path = Path(out) / "config.yaml"
        if not path.is_file():
            return
        try:
            existing = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            existing = None
        if isinstance(existing, dict):
            if existing.get("downstream_task") == task:
                return
            # written before downstream_task was recorded: the same task has the same option names
            if (existing.get("command") == "downstream" and "downstream_task" not in existing
                    and set(existing) == set(config)):
                return
        from launcher.config import ConfigError
        raise ConfigError(f"downstream {task}: --out {out} holds a config.yaml of another run (rule: --out must be a "
                          f"new directory or one of an earlier `downstream {task}` run; its config.yaml would be "
                          f"replaced)")

    @classmethod
    def create(cls, out: str | Path, config: dict, task: str) -> "RunDir":
        cls.check(out, task, config)
        root = Path(out)
        for sub in ("results", "tensorboard"):  # no logs/: these tasks log to the console only
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "config.yaml").write_text(yaml.safe_dump({"downstream_task": task, **config}, sort_keys=False))
        return cls(root)

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def writer(self):
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(log_dir=str(self.tensorboard))


class Progress:
    """A periodic progress line with rate and ETA (the downstream tasks' 'bar')."""

    def __init__(self, total: int, what: str, every_s: float = 5.0):
        self.total, self.what, self.every_s = total, what, every_s
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def step(self, n: int = 1, info: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info("%s %d/%d (%.2f/s, ETA %s) %s", self.what, self.done, self.total, rate, _fmt_s(eta), info)


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC (ties count half); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores)))


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def write_results(run: RunDir, name: str, payload: dict, table_header: Sequence[str],
                  table_rows: Sequence[Sequence], title: str, notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """RUN/results/{name}.json (machine-readable) and {name}.md (a Markdown table for people). JSON has no NaN or
    Infinity: a value that is not finite (an AUC with one class, the SE of one repetition) is written as null."""
    jpath = run.results / f"{name}.json"
    jpath.write_text(json.dumps(finite_or_null(payload), indent=2, allow_nan=False, default=_jsonable))
    lines = [f"# {title}", "", "| " + " | ".join(table_header) + " |", "|" + "---|" * len(table_header)]
    for row in table_rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    mpath = run.results / f"{name}.md"
    mpath.write_text("\n".join(lines) + "\n")
    return jpath, mpath


def mean_pm_se(mean: float, se: float, fmt: str = ".2f", scale: float = 1.0, no_se: str = "one repetition") -> str:
    """'mean ± se' for a Markdown cell, as the log says it: '-' for a mean that is not finite, 'mean ± - (no_se)'
    for an SE that is not (one repetition: no spread to estimate)."""
    if not math.isfinite(mean):
        return "-"
    if not math.isfinite(se):
        return f"{scale * mean:{fmt}} ± - ({no_se})"
    return f"{scale * mean:{fmt}} ± {scale * se:{fmt}}"


def _cell(c) -> str:
    if isinstance(c, float):
        return f"{c:.4f}" if math.isfinite(c) else "-"
    return str(c)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
