"""Run a function on N local ranks (gloo on CPU) and collect what each rank returns."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, init_file: str, out_dir: str, fn, args) -> None:
    torch.set_num_threads(1)
    # DeepSpeed calls the c10d collectives torch has renamed; one warning per call per rank buries the
    # test output that matters
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # what torchrun would set (DeepSpeed checks them)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save({"ok": result}, os.path.join(out_dir, f"{rank}.pt"))
    except BaseException:
        torch.save({"error": traceback.format_exc()}, os.path.join(out_dir, f"{rank}.pt"))
        raise
    finally:
        dist.destroy_process_group()
    # The result is on disk. Leave without interpreter teardown: native threads that DeepSpeed and gloo
    # leave behind can abort the process at exit, which would fail a run whose work was complete (the
    # same reason launcher/worker.py exits this way).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world_size: int, *args) -> list:
    """fn(rank, world_size, *args) on `world_size` spawned processes; returns the per-rank results.
    `fn` must be a module-level function (it is pickled by reference)."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        try:
            mp.spawn(_worker, args=(world_size, init_file, tmp, fn, args), nprocs=world_size, join=True)
        except Exception as err:
            errors = []
            for r in range(world_size):
                path = os.path.join(tmp, f"{r}.pt")
                if os.path.exists(path):
                    out = torch.load(path, weights_only=False)
                    if "error" in out:
                        errors.append(f"rank {r}:\n{out['error']}")
            raise AssertionError("\n".join(errors) or str(err)) from None
        return [torch.load(os.path.join(tmp, f"{r}.pt"), weights_only=False)["ok"] for r in range(world_size)]
