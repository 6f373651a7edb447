"""Asynchronous checkpoint finalize (CheckpointManager(async_finalize=True)): training continues after
DeepSpeed wrote the shards; the checkpoint appears only when hashed and renamed, verifies, and loads."""

import pytest
import torch

from tests.parallel._dist import run_ranks


def _gpt_cfg():
    from launcher.config import RunConfig
    return RunConfig(seed=3, model=dict(n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=256),
                     train=dict(global_batch_size=4, micro_batch_size=2), parallel=dict(zero_stage=1))


def _step(engine, rank):
    idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(rank))
    loss = engine(idx).logsumexp(-1).mean()
    engine.backward(loss)
    engine.step()


def _async_save_then_load(rank, world_size, root):
    from pathlib import Path
    from deepspeed.utils import safe_get_full_fp32_param
    from parallel.build import build_model
    from parallel.checkpoint import CheckpointManager
    from parallel.manifest import list_checkpoints, verify
    from parallel.engine import make_engine
    from parallel.topology import Topology

    topo = Topology(world_size, rank).init_groups()
    cfg = _gpt_cfg()
    engine = make_engine(build_model(cfg, topo), cfg, topo, torch.device("cpu"))
    _step(engine, rank)
    mgr = CheckpointManager(Path(root) / "checkpoints", rank, world_size, async_finalize=True)
    meta = {"tp": 1, "dp": world_size, "zero_stage": 1}
    client = {"trainer": {"step": 1}, "config": cfg.model_dump(mode="json")}
    path = mgr.save(engine, 1, client, {"rank": rank}, meta)
    want = {n: safe_get_full_fp32_param(p).clone() for n, p in engine.module.named_parameters()}
    _step(engine, rank)  # training goes on while the checkpoint is finalized
    mgr.save(engine, 2, client, {"rank": rank}, meta)  # joins the first finalize
    mgr.wait()
    import torch.distributed as dist
    dist.barrier()
    ok = [verify(p)[0] for p in list_checkpoints(Path(root) / "checkpoints")]
    leftovers = sorted(p.name for p in (Path(root) / "checkpoints" / ".tmp").glob("step_*"))  # unfinished saves
    latest = (Path(root) / "checkpoints" / "latest").read_text().strip()
    fresh = make_engine(build_model(cfg, topo), cfg, topo, torch.device("cpu"))
    got_client, _ = mgr.load(fresh, path)
    diff = max((safe_get_full_fp32_param(p) - want[n]).abs().max().item()
               for n, p in fresh.module.named_parameters())
    return {"ok": ok, "leftovers": leftovers, "latest": latest, "diff": diff, "client": got_client["trainer"]}


@pytest.mark.slow
def test_async_finalize_gives_complete_verified_loadable_checkpoints(tmp_path):
    for r in run_ranks(_async_save_then_load, 2, str(tmp_path)):
        assert r["ok"] == [True, True] and r["leftovers"] == [] and r["latest"] == "step_00000002", r
        assert r["diff"] == 0.0 and r["client"] == {"step": 1}
