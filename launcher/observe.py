"""What a person and a machine see of a run: a progress line with rate and ETA, TensorBoard scalars,
and a JSON-lines log of every step. Only rank 0 writes."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("mnemos.train")


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class RunLogger:
    def __init__(self, run_dir: str | Path, enabled: bool, tensorboard: bool, total_steps: int,
                 progress: bool = True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.progress = progress
        self._tb = None
        self._jsonl = None
        self._t0 = time.time()
        self._first_step: int | None = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "logs" / "steps.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if v is not None:
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def start(self, step: int) -> None:
        """Mark where this process's rate measurement begins (after a resume, not at step 0)."""
        self._first_step, self._t0 = step, time.time()

    def progress_line(self, step: int, values: dict[str, float]) -> None:
        if not (self.enabled and self.progress):
            return
        if self._first_step is None:
            self.start(step - 1)
        done = step - self._first_step
        rate = done / max(1e-9, time.time() - self._t0)
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        parts = " ".join(f"{k} {v:.4g}" for k, v in values.items() if v is not None)
        log.info("step %d/%d | %s | %.2f steps/s | ETA %s", step, self.total_steps, parts, rate, _fmt_duration(eta))

    def event(self, step: int, kind: str, **info) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "event": kind, **info}) + "\n")
        log.warning("step %d: %s %s", step, kind, info or "")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def peak_memory_bytes(device) -> int:
    import torch
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except Exception:  # pragma: no cover - non-POSIX
        return 0


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
