"""Atomic, verifiable checkpoints around DeepSpeed's sharded save.

Layout of RUN/checkpoints/:
    step_00000100/            one checkpoint: DeepSpeed's shards, rank_state_*.pt, manifest.json
    latest                    text file naming the newest complete checkpoint (replaced atomically)
    .tmp/                     checkpoints being written; never loaded

A save writes into .tmp/step_N, every rank flushes its files, rank 0 checksums them into manifest.json
(written last), renames the directory into place and only then replaces `latest`. A crash at any point
leaves the previous checkpoint loadable. On load, the newest directory whose manifest verifies wins;
corrupt or partial ones are reported and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from parallel.manifest import (DIGEST_PREFIX, STEP_DIR, digest_files, fsync_path, list_checkpoints, looks_complete,
                               step_dirname, write_latest, write_manifest)

log = logging.getLogger("mnemos.checkpoint")


class CheckpointError(RuntimeError):
    pass


def rng_state() -> dict:
    """Every RNG a step touches, in a form torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fault_point(step: int, rank: int) -> None:
    """Fault injection for tests: MNEMOS_FAULT_KILL_DURING_SAVE=STEP:RANK kills that rank mid-save."""
    spec = os.environ.get("MNEMOS_FAULT_KILL_DURING_SAVE")
    if spec:
        s, r = (int(x) for x in spec.split(":"))
        if s == step and r == rank:
            log.error("fault injection: rank %d dies while saving step %d", rank, step)
            os._exit(17)


def _move_into_place(src: Path, final: Path) -> None:
    """Rename a finished save `src` to `final`. A directory already there (an older save of the step after a
    rollback, or a corrupt one the resume skipped) is first renamed aside into .tmp/ and deleted after, so
    the step's name never holds a half-deleted directory."""
    old = None
    if final.exists():
        old = final.parent / ".tmp" / (final.name + ".replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(src, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class CheckpointManager:
    """Save and restore a DeepSpeed engine plus the trainer's own state."""

    def __init__(self, root: str | Path, rank: int, world_size: int, keep_last: int = 2,
                 keep_every_steps: int = 0, async_finalize: bool = False):
        """`async_finalize`: training resumes right after DeepSpeed has written the shards; fsync,
        sha256, manifest, rename and `latest` happen in a background thread per rank (no collectives
        there: ranks exchange digests through small files). The checkpoint becomes visible only when
        complete, exactly as in the synchronous path; the next save (or `wait()`) joins the thread."""
        self.root = Path(root)
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last
        self.keep_every_steps = keep_every_steps
        self.async_finalize = async_finalize
        self._pending = None
        self._pending_error: BaseException | None = None
        # Step directories that failed verification when the run resumed (filled by the resume on rank 0):
        # they hold no loadable checkpoint, so pruning does not count them toward keep_last.
        self.corrupt: set[str] = set()

    def _barrier(self):
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()

    def save(self, engine, step: int, client_state: dict, rank_state: dict, meta: dict) -> Path:
        self.wait()
        tag = step_dirname(step)
        tmp_root = self.root / ".tmp"
        if self.rank == 0:
            shutil.rmtree(tmp_root / tag, ignore_errors=True)
            (tmp_root / tag).mkdir(parents=True, exist_ok=True)
        self._barrier()
        engine.save_checkpoint(str(tmp_root), tag=tag, client_state=client_state, save_latest=False)
        from parallel.rng import tracker_of
        tracker = tracker_of(getattr(engine, "module", engine))
        if tracker is not None:  # the TP dropout stream (Megatron's CUDA RNG tracker)
            rank_state = {**rank_state, "tp_rng": tracker.state_dict()}
        part = tmp_root / tag / f"rank_state_{self.rank:05d}.pt"
        torch.save(rank_state, str(part) + ".tmp")
        os.replace(str(part) + ".tmp", part)
        _fault_point(step, self.rank)
        self._barrier()
        if self.async_finalize:
            import threading
            self._pending = threading.Thread(target=self._finalize_async, name="mnemos-checkpoint-finalize",
                                             args=(tmp_root / tag, {**meta, "step": step,
                                                                    "world_size": self.world_size}))
            self._pending.start()
            return self.root / tag
        files = self._digest_in_parallel(tmp_root / tag)
        final = self.root / tag
        if self.rank == 0:
            write_manifest(tmp_root / tag, {**meta, "step": step, "world_size": self.world_size}, files)
            _move_into_place(tmp_root / tag, final)
            self.corrupt.discard(tag)
            write_latest(self.root, tag)
            self._prune()
        self._barrier()
        return final

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until a pending asynchronous finalize is done; re-raise its error."""
        if self._pending is not None:
            self._pending.join(timeout_s)
            if self._pending.is_alive():
                raise CheckpointError(f"checkpoint finalize still running after {timeout_s}s")
            self._pending = None
        if self._pending_error is not None:
            err, self._pending_error = self._pending_error, None
            raise CheckpointError(f"asynchronous checkpoint finalize failed: {err}") from err

    def _finalize_async(self, ckpt_dir: Path, meta: dict, timeout_s: float = 3600.0) -> None:
        try:
            mine = digest_files(ckpt_dir, self.rank, self.world_size)
            part = ckpt_dir / f"{DIGEST_PREFIX}{self.rank:05d}.json"
            tmp = part.with_name(part.name + ".tmp")
            tmp.write_text(json.dumps(mine))
            os.replace(tmp, part)
            if self.rank != 0:
                return
            parts = [ckpt_dir / f"{DIGEST_PREFIX}{r:05d}.json" for r in range(self.world_size)]
            deadline = time.time() + timeout_s
            while not all(p.exists() for p in parts):
                if time.time() > deadline:
                    raise CheckpointError(f"{ckpt_dir.name}: not every rank hashed its files within "
                                          f"{timeout_s:.0f}s; the checkpoint stays unfinished in .tmp")
                time.sleep(0.05)
            files = {}
            for p in parts:
                files.update(json.loads(p.read_text()))
                p.unlink()
            final = self.root / ckpt_dir.name
            write_manifest(ckpt_dir, meta, files)
            _move_into_place(ckpt_dir, final)
            self.corrupt.discard(final.name)
            write_latest(self.root, final.name)
            self._prune()
            log.info("checkpoint %s finalized in the background", final)
        except BaseException as err:  # surfaced by wait() / the next save
            log.error("asynchronous checkpoint finalize of %s failed: %s", ckpt_dir, err)
            self._pending_error = err

    def _digest_in_parallel(self, ckpt_dir: Path) -> dict | None:
        """Every rank fsyncs and hashes its share of the files (not rank 0 alone: at scale a checkpoint
        has thousands of shards); rank 0 gets the union."""
        import torch.distributed as dist
        if not dist.is_initialized() or self.world_size == 1:
            return digest_files(ckpt_dir) if self.rank == 0 else None
        mine = digest_files(ckpt_dir, self.rank, self.world_size)
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if self.rank != 0:
            return None
        files = {}
        for part in gathered:
            files.update(part)
        return files

    def _prune(self) -> None:
        """Keep the newest `keep_last` loadable checkpoints (and valid `keep_every_steps` milestones) and delete
        what is older. A corrupt or partial directory newer than those is left alone (a later save of its
        step replaces it); one older than them could never be resumed from and goes too."""
        kept = 0
        for ckpt in list_checkpoints(self.root):
            loadable = ckpt.name not in self.corrupt and looks_complete(ckpt)
            if kept < self.keep_last:
                kept += loadable
                continue
            step = int(STEP_DIR.match(ckpt.name).group(1))
            if loadable and self.keep_every_steps and step % self.keep_every_steps == 0:
                continue
            shutil.rmtree(ckpt, ignore_errors=True)
            self.corrupt.discard(ckpt.name)

    def load(self, engine, ckpt_dir: Path) -> tuple[dict, dict | None]:
        """Load engine state (model, optimizer, ZeRO shards) saved in the same layout and return
        (client_state, this rank's state). Every file is read with torch.load(weights_only=True)."""
        from parallel.reshard import make_engine_loading_safe
        ckpt_dir = Path(ckpt_dir)
        make_engine_loading_safe(engine)  # DeepSpeed's own loader would unpickle with weights_only=False
        _, client_state = engine.load_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name,
                                                 load_optimizer_states=True, load_lr_scheduler_states=False)
        if client_state is None:
            raise CheckpointError(f"DeepSpeed could not load {ckpt_dir}")
        part = ckpt_dir / f"rank_state_{self.rank:05d}.pt"
        rank_state = torch.load(part, weights_only=True) if part.exists() else None
        from parallel.rng import tracker_of
        tracker = tracker_of(getattr(engine, "module", engine))
        if rank_state is not None and tracker is not None and "tp_rng" in rank_state:
            tracker.load_state_dict(rank_state["tp_rng"])
        return client_state, rank_state
