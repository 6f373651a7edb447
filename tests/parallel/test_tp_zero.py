"""TP 2 x DP 2 with DeepSpeed ZeRO-1 over 4 gloo ranks reproduces a single-process run: the standalone
check that `build_model` + `lm_cross_entropy` + Topology-as-mpu compose with `deepspeed.initialize`
(ZeRO shards over the DP group only; gradient clipping sums TP shards once and replicated params once)."""

import pytest
import torch

from launcher.config import RunConfig
from parallel.build import build_model
from parallel.loss import lm_cross_entropy
from parallel.topology import Topology
from tests.parallel._dist import run_ranks

SHAPE = dict(arch="gpt", n_layer=2, d_model=32, n_head=4, n_ctx=16, vocab_size=64)
GLOBAL_BATCH, T, STEPS, LR, CLIP = 4, 8, 10, 1e-2, 0.3


def _data(step):
    g = torch.Generator().manual_seed(100 + step % 2)  # two batches, alternating: the loss must fall
    x = torch.randint(0, SHAPE["vocab_size"], (GLOBAL_BATCH, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def _cfg(tp):
    return RunConfig(seed=3, model=SHAPE, parallel={"tp": tp})


def _reference():
    topo = Topology.single()
    model = build_model(_cfg(1), topo, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    losses, norms = [], []
    for step in range(STEPS):
        idx, tgt = _data(step)
        loss = lm_cross_entropy(model(idx), tgt, topo)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, norms


def _tp_zero_worker(rank, world, zero_stage):
    import deepspeed
    import torch.distributed as dist
    topo = Topology(world, rank, tp=2).init_groups()
    # the groups are what the Topology says: TP {0,1} {2,3}, DP {0,2} {1,3}
    sums = []
    for group in (topo.tp_group, topo.dp_group):
        t = torch.tensor([float(rank)])
        dist.all_reduce(t, group=group)
        sums.append(t.item())
    assert sums == [float(sum(topo.tp_ranks())), float(sum(topo.dp_ranks()))], sums
    model = build_model(_cfg(2), topo, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    ds_config = {"train_batch_size": GLOBAL_BATCH, "train_micro_batch_size_per_gpu": GLOBAL_BATCH // topo.dp,
                 "gradient_accumulation_steps": 1, "gradient_clipping": CLIP,
                 "zero_optimization": {"stage": zero_stage}, "zero_allow_untested_optimizer": True,
                 "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config, mpu=topo)
    losses, norms = [], []
    micro = GLOBAL_BATCH // topo.dp
    for step in range(STEPS):
        idx, tgt = _data(step)
        sl = slice(topo.dp_rank * micro, (topo.dp_rank + 1) * micro)  # this DP replica's sequences
        loss = lm_cross_entropy(engine(idx[sl]), tgt[sl], topo)
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean, group=topo.dp_group)
        losses.append(mean.item() / topo.dp)
        norms.append(float(engine.get_global_grad_norm()))
    return losses, norms


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_tp2_dp2_zero_matches_single_process(zero_stage):
    ref_losses, ref_norms = _reference()
    assert max(ref_norms) > CLIP  # clipping acts, so a wrong grad norm would change the losses
    results = run_ranks(_tp_zero_worker, 4, zero_stage)
    for rank, (losses, norms) in enumerate(results):
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"rank {rank} losses: {m}")
        torch.testing.assert_close(torch.tensor(norms), torch.tensor(ref_norms), rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"rank {rank} grad norms: {m}")
    assert ref_losses[-1] < ref_losses[0]
