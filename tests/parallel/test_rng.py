"""Tracked RNG: TP stream independent of the default stream, nested forks, state round trip, and
activation recomputation replaying the same dropout masks."""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from parallel.rng import RNGTracker, TrackedDropout


def _tracker(tp_rank=0):
    t = RNGTracker("cpu")
    t.seed_tp(1234, tp_rank)
    return t


def test_fork_draws_from_tp_stream_and_leaves_default_stream_untouched():
    torch.manual_seed(0)
    expected_default = torch.rand(4)
    torch.manual_seed(0)
    t = _tracker()
    with t.fork():
        a = torch.rand(4)
    assert torch.equal(torch.rand(4), expected_default)  # default stream as if the fork never happened
    torch.manual_seed(1234 + 2718)
    assert torch.equal(a, torch.rand(4))  # the TP stream is seed + 2718 + tp_rank
    with t.fork():
        b = torch.rand(4)
    assert not torch.equal(a, b)  # the TP stream advances across forks


def test_tp_ranks_get_different_streams_and_suspend_returns_to_default():
    t0, t1 = _tracker(0), _tracker(1)
    with t0.fork():
        a = torch.rand(8)
    with t1.fork():
        b = torch.rand(8)
    assert not torch.equal(a, b)
    torch.manual_seed(5)
    ref = torch.rand(3)
    torch.manual_seed(5)
    t = _tracker()
    with t.fork():
        with t.fork():  # nested fork of the same stream is a no-op, not a reset
            torch.rand(2)
        with t.suspend():
            shared = torch.rand(3)
    assert torch.equal(shared, ref)


def test_state_dict_round_trip():
    t = _tracker()
    state = t.state_dict()
    with t.fork():
        a = torch.rand(5)
    t.load_state_dict(state)
    with t.fork():
        assert torch.equal(torch.rand(5), a)


def test_tracked_dropout_modes():
    t = _tracker()
    x = torch.ones(64)
    torch.manual_seed(0)
    shared = TrackedDropout(0.5, t, "shared").train()(x)
    torch.manual_seed(0)
    assert torch.equal(shared, F.dropout(x, 0.5, True))
    torch.manual_seed(0)
    tp = TrackedDropout(0.5, t, "tp").train()(x)
    assert not torch.equal(tp, shared)
    assert torch.equal(TrackedDropout(0.5, t, "tp").eval()(x), x)


def test_recomputation_replays_tp_stream_masks():
    t = _tracker()
    drop = TrackedDropout(0.5, t, "tp").train()
    w = torch.randn(16, 16)

    def f(x):
        return drop(x @ w).sum(-1)

    x = torch.randn(4, 16, requires_grad=True)
    state = t.state_dict()
    f(x).sum().backward()
    ref = x.grad.clone()
    x.grad = None
    t.load_state_dict(state)
    checkpoint(f, x, use_reentrant=False, context_fn=t.checkpoint_context_fn).sum().backward()
    assert torch.equal(x.grad, ref)
