"""comm.py's autograd functions and the vocab-parallel cross-entropy on 2 gloo ranks."""

import torch
import torch.nn.functional as F

from parallel import comm
from parallel.loss import lm_cross_entropy, vocab_parallel_cross_entropy
from parallel.topology import Topology
from tests.parallel._dist import run_ranks


def _grad_of(fn, x, weight):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    (y * weight).sum().backward()
    return y.detach(), x.grad


def _collectives(rank, world, _):
    topo = Topology(world, rank, tp=world).init_groups()
    g = topo.tp_group
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 4, 6, generator=gen) for _ in range(world)]   # each rank's input
    ws = [torch.randn(2, 4, 6, generator=gen) for _ in range(world)]   # each rank's upstream weight
    out = {}
    x, w = xs[rank], ws[rank]
    out["copy"] = _grad_of(lambda t: comm.copy_to_tp_region(t, g), x, w)
    out["reduce"] = _grad_of(lambda t: comm.reduce_from_tp_region(t, g), x, w)
    out["scatter"] = _grad_of(lambda t: comm.scatter_to_tp_region(t, g), x, w[..., :3])
    out["gather"] = _grad_of(lambda t: comm.gather_from_tp_region(t, g), x, torch.cat([w, w], -1))
    out["seq_scatter"] = _grad_of(lambda t: comm.scatter_to_sequence_region(t, g), x, w[:, :2])
    out["seq_gather"] = _grad_of(lambda t: comm.gather_from_sequence_region(t, g), x, torch.cat([w, w], 1))
    out["seq_gather_nopartial"] = _grad_of(lambda t: comm.gather_from_sequence_region(t, g, False), x,
                                           torch.cat([w, w], 1))
    out["seq_rs"] = _grad_of(lambda t: comm.reduce_scatter_to_sequence_region(t, g), x, w[:, :2])

    # vocab-parallel cross-entropy: full logits known to every rank, each keeps its vocabulary slice
    N, V = 12, 10
    logits = torch.randn(N, V, generator=gen) * 3
    targets = torch.randint(0, V, (N,), generator=gen)
    targets[3] = -100
    local = logits.chunk(world, -1)[rank].clone().requires_grad_(True)
    per_tok = vocab_parallel_cross_entropy(local, targets, g, rank * V // world)
    mean = lm_cross_entropy(local.view(3, 4, -1), targets.view(3, 4), topo)
    mean.backward()
    out["ce"] = (per_tok.detach(), mean.detach(), local.grad, logits, targets)
    return out


def test_collectives_and_vocab_parallel_ce_on_two_ranks():
    world = 2
    res = run_ranks(_collectives, world, None)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 4, 6, generator=gen) for _ in range(world)]
    ws = [torch.randn(2, 4, 6, generator=gen) for _ in range(world)]
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for r in range(world):
        o = res[r]
        # f: identity forward, all-reduce backward
        close(o["copy"][0], xs[r]); close(o["copy"][1], sum(ws))
        # g: all-reduce forward, identity backward
        close(o["reduce"][0], sum(xs)); close(o["reduce"][1], ws[r])
        # scatter/gather along the hidden dim
        close(o["scatter"][0], xs[r][..., 3 * r:3 * r + 3])
        close(o["scatter"][1], torch.cat([ws[q][..., :3] for q in range(world)], -1))
        close(o["gather"][0], torch.cat(xs, -1)); close(o["gather"][1], ws[r])
        # sequence dimension (dim 1)
        close(o["seq_scatter"][0], xs[r][:, 2 * r:2 * r + 2])
        close(o["seq_scatter"][1], torch.cat([ws[q][:, :2] for q in range(world)], 1))
        close(o["seq_gather"][0], torch.cat(xs, 1))
        close(o["seq_gather"][1], sum(torch.cat([w, w], 1) for w in ws)[:, 4 * r:4 * r + 4])  # reduce-scatter
        close(o["seq_gather_nopartial"][1], ws[r])
        close(o["seq_rs"][0], sum(xs)[:, 2 * r:2 * r + 2])
        close(o["seq_rs"][1], torch.cat([ws[q][:, :2] for q in range(world)], 1))

    per_tok, mean, grad_local, logits, targets = res[0]["ce"]
    ref_logits = logits.clone().requires_grad_(True)
    ref = F.cross_entropy(ref_logits, targets, reduction="none")
    ref_mean = F.cross_entropy(ref_logits, targets)
    ref_mean.backward()
    for r in range(world):
        per_tok, mean, grad_local, _, _ = res[r]["ce"]
        torch.testing.assert_close(per_tok, ref.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mean, ref_mean.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_local, ref_logits.grad.chunk(world, -1)[r], rtol=1e-5, atol=1e-7)


def test_single_rank_is_identity_without_torch_distributed():
    x = torch.randn(2, 4, 6)
    for f in (comm.copy_to_tp_region, comm.reduce_from_tp_region, comm.scatter_to_tp_region,
              comm.gather_from_tp_region, comm.scatter_to_sequence_region, comm.gather_from_sequence_region,
              comm.reduce_scatter_to_sequence_region):
        assert f(x, None) is x
