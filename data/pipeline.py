"""datatrove-shaped processing: documents flow through a list of steps.

- A step is `run(docs, rank, world_size) -> Iterator[Document]` (readers ignore `docs` and read their
  share of the inputs; writers pass documents through after writing them).
- A filter only decides keep/drop (`filter(doc) -> bool | (False, reason)`); `BaseFilter` counts
  documents in/kept/dropped per reason and keeps the rejects (a bounded sample in memory, all of them
  in a rejects writer when given one).
- A pipeline is a plain list. `PipelineExecutor` runs task `rank` of `tasks` on a fresh deep copy of
  the pipeline and writes `LOGDIR/stats/RANK.json` then the marker `LOGDIR/completions/RANK`; a re-run
  skips completed tasks, and because every writer commits its output by renaming at the end and every
  random decision is seeded from the document, an interrupted stage re-run gives identical output.
  `LocalExecutor` runs the tasks in local processes; a Slurm array job calls `run_task(rank)` with
  `SLURM_ARRAY_TASK_ID` (see `task_rank_from_env`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

log = logging.getLogger(__name__)


@dataclass
class Document:
    text: str
    id: str
    metadata: dict = field(default_factory=dict)


class PipelineStep:
    """Base of every step: a name and a counter of named statistics."""

    name = "step"

    def __init__(self):
        self.stats: Counter = Counter()

    def stat(self, key: str, value: float = 1) -> None:
        self.stats[key] += value

    def run(self, docs: Iterable[Document] | None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        raise NotImplementedError

    def __call__(self, docs=None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        return self.run(docs, rank, world_size)

    def stats_dict(self) -> dict:
        return {"step": self.name, **{k: (int(v) if float(v).is_integer() else float(v))
                                      for k, v in sorted(self.stats.items())}}


class BaseFilter(PipelineStep):
    """Subclasses implement `filter(doc)`: True to keep, False or (False, reason) to drop."""

    name = "filter"

    def __init__(self, rejects_writer: "PipelineStep | None" = None, max_rejects_in_memory: int = 100):
        super().__init__()
        self.rejects_writer = rejects_writer
        self.max_rejects_in_memory = max_rejects_in_memory
        self.rejects: list[tuple[Document, str]] = []

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        raise NotImplementedError

    def run(self, docs, rank=0, world_size=1):
        writer = self.rejects_writer.open(rank) if self.rejects_writer is not None else None
        try:
            for doc in docs:
                self.stat("documents_in")
                decision = self.filter(doc)
                keep, reason = (decision, self.name) if isinstance(decision, bool) else decision
                if keep:
                    self.stat("kept")
                    yield doc
                    continue
                reason = reason or self.name
                self.stat("dropped")
                self.stat(f"dropped:{reason}")
                doc.metadata["filter_reason"] = reason
                if len(self.rejects) < self.max_rejects_in_memory:
                    self.rejects.append((doc, reason))
                if writer is not None:
                    writer.write(doc)
        finally:
            if writer is not None:
                writer.close()


class Map(PipelineStep):
    """Applies `fn(doc) -> Document | None` (None drops, counted as such)."""

    name = "map"

    def __init__(self, fn, name: str | None = None):
        super().__init__()
        self.fn = fn
        if name:
            self.name = name

    def run(self, docs, rank=0, world_size=1):
        for doc in docs:
            self.stat("documents_in")
            out = self.fn(doc)
            if out is None:
                self.stat("dropped")
                continue
            self.stat("kept")
            yield out


def run_pipeline(pipeline: Sequence[PipelineStep], rank: int = 0, world_size: int = 1,
                 docs: Iterable[Document] | None = None) -> list[dict]:
    """Run the steps on one task in this process; returns each step's stats."""
    for step in pipeline:
        docs = step.run(docs, rank, world_size)
    for _ in docs:
        pass
    return [step.stats_dict() for step in pipeline]


def task_rank_from_env(default: int = 0) -> int:
    for var in ("SLURM_ARRAY_TASK_ID", "MNEMOS_TASK_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return default


def _settings(obj, depth: int = 0):
    """What a pipeline step was set up with, as JSON-able values: numbers, strings, short lists, and the
    simple attributes of the objects it holds (one level down); anything larger is named by its type."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (list, tuple)) and len(obj) <= 64:
        return [_settings(x, depth) for x in obj]
    if depth < 2 and hasattr(obj, "__dict__") and not isinstance(obj, type):
        return {"class": type(obj).__name__,
                **{k: _settings(v, depth + 1) for k, v in sorted(vars(obj).items()) if not k.startswith("_")}}
    return type(obj).__name__


class PipelineExecutor:
    """Runs tasks of a pipeline with per-task stats and completion markers (resumable)."""

    def __init__(self, pipeline: Sequence[PipelineStep], logging_dir: str, tasks: int = 1,
                 skip_completed: bool = True):
        if tasks < 1:
            raise ValueError(f"tasks={tasks} must be >= 1")
        self.pipeline = list(pipeline)
        self.logging_dir = str(logging_dir)
        self.tasks = tasks
        self.skip_completed = skip_completed

    def _marker(self, rank: int) -> str:
        return os.path.join(self.logging_dir, "completions", f"{rank:05d}")

    def _stats_path(self, rank: int) -> str:
        return os.path.join(self.logging_dir, "stats", f"{rank:05d}.json")

    def is_done(self, rank: int) -> bool:
        """The task completed with this pipeline: a marker left by other steps or settings (say, the same
        OUT with --write-index added) does not count, so the task runs again."""
        if not (os.path.exists(self._marker(rank)) and os.path.exists(self._stats_path(rank))):
            return False
        with open(self._marker(rank)) as f:
            return f.read().strip() == self.fingerprint()

    def fingerprint(self) -> str:
        """A hash of the steps' classes and settings (their simple attributes, one level into objects) and of
        the number of tasks: task 0 of 2 holds half of what task 0 of 1 holds."""
        text = json.dumps([self.tasks] + [_settings(step) for step in self.pipeline], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()

    def run_task(self, rank: int) -> list[dict]:
        if not 0 <= rank < self.tasks:
            raise ValueError(f"task rank={rank} (rule: 0 <= rank < tasks={self.tasks})")
        if self.skip_completed and self.is_done(rank):
            log.info("task %d/%d already completed, skipping", rank, self.tasks)
            with open(self._stats_path(rank)) as f:
                return json.load(f)["steps"]
        t0 = time.time()
        steps = copy.deepcopy(self.pipeline)
        stats = run_pipeline(steps, rank, self.tasks)
        os.makedirs(os.path.dirname(self._stats_path(rank)), exist_ok=True)
        os.makedirs(os.path.dirname(self._marker(rank)), exist_ok=True)
        _write_json(self._stats_path(rank), {"rank": rank, "tasks": self.tasks, "seconds": round(time.time() - t0, 3),
                                             "steps": stats})
        with open(self._marker(rank), "w") as f:
            f.write(self.fingerprint() + "\n")
        return stats

    def merged_stats(self) -> list[dict]:
        merged: list[dict] | None = None
        for rank in range(self.tasks):
            with open(self._stats_path(rank)) as f:
                steps = json.load(f)["steps"]
            if merged is None:
                merged = [dict(s) for s in steps]
                continue
            for m, s in zip(merged, steps):
                for k, v in s.items():
                    if k != "step":
                        m[k] = m.get(k, 0) + v
        merged = merged or []
        _write_json(os.path.join(self.logging_dir, "stats.json"), {"tasks": self.tasks, "steps": merged})
        return merged

    def run(self) -> list[dict]:
        raise NotImplementedError


def _run_one(args):
    executor, rank = args
    return executor.run_task(rank)


class LocalExecutor(PipelineExecutor):
    """Runs all tasks here, `workers` at a time in separate processes (1 = in this process)."""

    def __init__(self, pipeline, logging_dir, tasks: int = 1, workers: int = 1, skip_completed: bool = True):
        super().__init__(pipeline, logging_dir, tasks, skip_completed)
        self.workers = max(1, min(workers, tasks))

    def run(self) -> list[dict]:
        t0 = time.time()
        todo = list(range(self.tasks))
        if self.workers == 1:
            for rank in todo:
                self.run_task(rank)
                log.info("task %d/%d done (%.1fs elapsed)", rank + 1, self.tasks, time.time() - t0)
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(self.workers) as pool:
                for k, _ in enumerate(pool.imap_unordered(_run_one, [(self, r) for r in todo])):
                    log.info("%d/%d tasks done (%.1fs elapsed)", k + 1, self.tasks, time.time() - t0)
        return self.merged_stats()


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def format_stats(steps: list[dict]) -> str:
    """Markdown table: one row per step, its counters."""
    lines = ["| step | stats |", "| --- | --- |"]
    for s in steps:
        body = ", ".join(f"{k}={v}" for k, v in s.items() if k != "step")
        lines.append(f"| {s['step']} | {body} |")
    return "\n".join(lines)
