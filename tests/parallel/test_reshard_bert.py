"""BERT through the reshard path: a ZeRO-3 checkpoint (2 ranks) loaded into a ZeRO-1 engine holds the same
fp32 weights, Adam moments, step count and dynamic loss-scaler state, and the next step gives the same loss
(gloo, tiny BERT)."""

import pytest
import torch

from tests.parallel._dist import run_ranks


def _bert_cfg(zero: int, seed: int):
    from launcher.config import RunConfig
    return RunConfig(seed=seed, model=dict(arch="bert", n_layer=2, d_model=64, n_head=4, n_ctx=32, vocab_size=256,
                                           layer_norm_eps=1e-12),
                     train=dict(global_batch_size=4, micro_batch_size=2), parallel=dict(zero_stage=zero))


def _batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(5, 256, (2, 32), generator=g)
    types = (torch.arange(32) >= 16).long().expand(2, 32)
    return ids, types, torch.ones(2, 32, dtype=torch.long)


def _step(engine, rank):
    mlm, nsp = engine(*_batch(rank))
    loss = mlm.logsumexp(-1).mean() - mlm[..., 7].mean() + nsp.logsumexp(-1).mean() - nsp[:, 0].mean()
    engine.backward(loss)
    engine.step()
    return loss.item()


def _full(engine):
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    return {n: (safe_get_full_fp32_param(p).clone(), safe_get_full_optimizer_state(p, "exp_avg").clone(),
                safe_get_full_optimizer_state(p, "exp_avg_sq").clone())
            for n, p in engine.module.named_parameters()}


SCALER = {"cur_scale": 1024.0, "cur_iter": 37, "last_overflow_iter": 20, "cur_hysteresis": 1}


def _dynamic_scaler(**state):
    """The scaler an fp16 run has (fp16 needs a GPU; here it is put into the fp32 engine's ZeRO optimizer,
    which saves and steps it the same way)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
    scaler = DynamicLossScaler(init_scale=2.0 ** 16, scale_window=1000, min_scale=1, delayed_shift=2,
                               consecutive_hysteresis=False)
    for k, v in state.items():
        setattr(scaler, k, v)
    return scaler


def _zero3_to_zero1(rank, world_size, root):
    from pathlib import Path
    from parallel.build import build_model
    from parallel.checkpoint import CheckpointManager
    from parallel.engine import make_engine
    from parallel.reshard import load_resharded
    from parallel.topology import Topology

    topo = Topology(world_size, rank).init_groups()
    cfg_a, cfg_b = _bert_cfg(3, seed=1), _bert_cfg(1, seed=2)  # B starts from other weights
    a = make_engine(build_model(cfg_a, topo), cfg_a, topo, torch.device("cpu"))
    for _ in range(2):
        _step(a, rank)
    a.optimizer.loss_scaler = _dynamic_scaler(**SCALER)  # as if two overflows had brought it down
    client = {"trainer": {"step": 2, "consumed_samples": 8, "consumed_tokens": 256},
              "sampler": {"consumed_samples": 8, "num_samples": 100, "seed": 0},
              "config": cfg_a.model_dump(mode="json")}
    mgr = CheckpointManager(Path(root) / "checkpoints", rank, world_size)
    ckpt = mgr.save(a, 2, client, {"rank": rank}, {"tp": 1, "dp": world_size, "zero_stage": 3,
                                                   "config": {"model": cfg_a.model.model_dump(mode="json")}})
    want = _full(a)
    b = make_engine(build_model(cfg_b, topo), cfg_b, topo, torch.device("cpu"))
    b.optimizer.loss_scaler = _dynamic_scaler()
    got_client = load_resharded(b, ckpt, topo, cfg_b)
    scaler = {k: getattr(b.optimizer.loss_scaler, k) for k in SCALER}
    got = _full(b)
    step_b = [b.optimizer.optimizer.state[f]["step"].item() for f in b.optimizer.single_partition_of_fp32_groups]
    loss_a, loss_b = _step(a, rank), _step(b, rank)
    diffs = {n: max((x - y).abs().max().item() for x, y in zip(want[n], got[n])) for n in want}
    return {"client": got_client["trainer"], "diff": max(diffs.values()), "steps": step_b,
            "loss": (loss_a, loss_b), "names": sorted(want) == sorted(got), "scaler": scaler}


@pytest.mark.slow
def test_bert_zero3_checkpoint_loads_into_zero1(tmp_path):
    results = run_ranks(_zero3_to_zero1, 2, str(tmp_path))
    for r in results:
        assert r["names"] and r["diff"] == 0.0, r
        assert r["client"] == {"step": 2, "consumed_samples": 8, "consumed_tokens": 256}
        assert r["steps"] == [2.0, 2.0]
        assert r["scaler"] == SCALER
        torch.testing.assert_close(r["loss"][1], r["loss"][0], rtol=1e-5, atol=0)
