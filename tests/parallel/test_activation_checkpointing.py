import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from launcher.config import ModelConfig
from model.gpt import build_gpt
from parallel.activation_checkpointing import apply_activation_checkpointing

CFG = ModelConfig(n_layer=3, d_model=32, n_head=4, n_ctx=32, vocab_size=64, dropout=0.2)


class CountOps(TorchDispatchMode):
    """Counts aten ops by name (overload packet) while active."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _loss_and_grads(policy: str | None):
    model = build_gpt(CFG, seed=0)
    names_before = [n for n, _ in model.named_parameters()]
    if policy:
        assert apply_activation_checkpointing(model, policy) == 3
    assert [n for n, _ in model.named_parameters()] == names_before  # checkpoints stay compatible
    calls = []
    model.blocks[1].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    model.train()
    torch.manual_seed(1)
    x = torch.randint(0, 64, (2, 17))
    with CountOps() as forward_ops:
        logits = model(x[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, 64), x[:, 1:].reshape(-1))
    with CountOps() as backward_ops:
        loss.backward()
    assert len(calls) == (2 if policy else 1)  # the block's forward runs again in backward
    return (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, backward_ops.counts,
            forward_ops.counts)


@pytest.mark.parametrize("policy", ["full", "selective"])
def test_checkpointed_blocks_give_identical_loss_and_gradients_with_dropout(policy):
    loss_a, grads_a, *_ = _loss_and_grads(None)
    loss_b, grads_b, *_ = _loss_and_grads(policy)
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0, msg=name)


def test_selective_recomputes_the_cheap_ops_and_no_matmul():
    """What backward executes: full re-runs every op of each block, selective only the ones between the
    matmuls (GELU, LayerNorm, dropout); the matmul count equals the run without checkpointing."""
    (_, _, plain, forward), full, selective = (_loss_and_grads(None), *(_loss_and_grads(p)[2] for p in
                                                                        ("full", "selective")))
    matmuls = lambda c: c.get("mm", 0) + c.get("addmm", 0) + c.get("bmm", 0)  # noqa: E731
    assert matmuls(selective) == matmuls(plain)
    # full repeats every matmul of the blocks' forward (all of the forward's but the LM head)
    assert matmuls(full) == matmuls(plain) + matmuls(forward) - 1 > matmuls(plain)
    for op in ("gelu", "native_layer_norm"):  # forward ops: recomputed by both policies, never by plain
        assert op not in plain
        assert full[op] == selective[op] == 3 * (2 if op == "native_layer_norm" else 1)


def test_unknown_policy_and_a_policy_without_checkpointing_are_refused():
    with pytest.raises(ValueError, match="choices: full, selective"):
        apply_activation_checkpointing(build_gpt(CFG, seed=0), "half")
    from launcher.config import RunConfig
    with pytest.raises(ValueError, match=r"parallel.checkpoint_policy='selective' with "
                                         r"parallel.activation_checkpointing=False"):
        RunConfig(parallel={"checkpoint_policy": "selective"})


def test_selective_policy_composes_with_the_tp_rng_tracker():
    """Under TP the tracker's context (replaying the TP dropout stream) and the selective policy's context
    both wrap the recomputation: the masks replay and the gradients are exact."""
    import functools

    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    from parallel.activation_checkpointing import _combined, _keep_matmuls
    from parallel.rng import TrackedDropout
    from tests.parallel.test_rng import _tracker

    t = _tracker()
    drop = TrackedDropout(0.5, t, "tp").train()
    w = torch.randn(16, 16)

    def f(x):
        return F.gelu(drop(x @ w)) @ w

    x = torch.randn(4, 16, requires_grad=True)
    state = t.state_dict()
    f(x).sum().backward()
    ref = x.grad.clone()
    x.grad = None
    t.load_state_dict(state)
    context_fn = _combined(t.checkpoint_context_fn,
                           functools.partial(create_selective_checkpoint_contexts, _keep_matmuls))
    out = checkpoint(f, x, use_reentrant=False, context_fn=context_fn).sum()
    with CountOps() as ops:
        out.backward()
    assert torch.equal(x.grad, ref)
    assert ops.counts.get("gelu", 0) == 1  # recomputed in backward
    assert ops.counts.get("mm", 0) == 2  # only the two input gradients: the forward matmuls were kept
