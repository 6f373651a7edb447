"""What the Hopfield layers accept and refuse: mask types, update steps, head sizes, shapes, nonsense arguments.
Every refusal names the argument, the value and the rule."""


import pytest
import torch

from model.hopfield import Hopfield, HopfieldLayer, HopfieldPooling, hopfield_update


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.int32])
@pytest.mark.parametrize("which", ["stored_pattern_padding_mask", "association_mask"])
def test_integer_masks_are_refused(dtype, which):
    # a 0/1 integer mask used to be added to the scores (a +1 bias on the padded slots) instead of masking them
    torch.manual_seed(0)
    x = torch.randn(1, 5, 8)
    mask = torch.tensor([[0, 0, 0, 1, 1]], dtype=dtype)
    if which == "association_mask":
        mask = mask.expand(5, 5)
    for layer in (Hopfield(input_size=8), HopfieldPooling(input_size=8, scaling=1.0)):
        if which == "association_mask" and isinstance(layer, HopfieldPooling):
            mask = mask[:1]  # S = quantity = 1
        with pytest.raises(TypeError, match=f"{which} has dtype {dtype}"):
            layer(x, **{which: mask})


def test_bool_and_float_masks_mask():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    pool = HopfieldPooling(input_size=8, scaling=1.0)
    pad = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 0, 0, 0]]).bool()
    _, a = pool(x, stored_pattern_padding_mask=pad, return_association=True)
    assert a.masked_select(pad[:, None, None]).abs().max() == 0
    additive = torch.zeros(2, 5).masked_fill(pad, float("-inf"))
    _, a_float = pool(x, stored_pattern_padding_mask=additive, return_association=True)
    torch.testing.assert_close(a_float, a)


def _static(d: int, **kw) -> Hopfield:
    """All projections and normalisations off: the layer is the update rule on raw patterns."""
    return Hopfield(input_size=d, hidden_size=d, stored_pattern_as_static=True, state_pattern_as_static=True,
                    pattern_projection_as_static=True, normalize_stored_pattern=False,
                    normalize_state_pattern=False, normalize_pattern_projection=False, disable_out_projection=True,
                    **kw)


def _count_softmaxes(monkeypatch, layer, x) -> int:
    calls = []
    softmax = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda *a, **k: calls.append(1) or softmax(*a, **k))
    layer(x)
    monkeypatch.setattr(torch, "softmax", softmax)
    return len(calls)


@pytest.mark.parametrize("steps", [0, 1, 2, 5])
def test_update_steps_max_counts_updates_as_hflayers(monkeypatch, steps):
    # hflayers: update_steps_max=N is N state updates then the retrieval, N + 1 softmaxes (0 = attention)
    torch.manual_seed(0)
    hop = _static(6, scaling=0.3, update_steps_max=steps, update_steps_eps=0.0)
    Y, R = torch.randn(2, 9, 6), torch.randn(2, 3, 6)
    assert _count_softmaxes(monkeypatch, hop, (Y, R, Y)) == steps + 1
    x = R
    for _ in range(steps + 1):
        x = hopfield_update(Y.transpose(1, 2)[:, None], x, 0.3)
    torch.testing.assert_close(hop((Y, R, Y)), x)


def test_update_steps_eps_stops_on_the_association_matrix(monkeypatch):
    # Well-separated patterns and a large beta: the association matrix is one-hot from the first softmax and does
    # not move, while the state jumps from the query onto the stored pattern (||q_new - q|| is large). hflayers
    # stops after the first update (2 softmaxes); a criterion on q would run all the steps.
    Y = 10 * torch.eye(4)[None]  # (1, 4, 4)
    R = Y[:, :2] + 0.5 * torch.tensor([[[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]]])
    hop = _static(4, scaling=1.0, update_steps_max=5, update_steps_eps=1e-3)
    assert _count_softmaxes(monkeypatch, hop, (Y, R, Y)) == 2
    assert (Y[:, :2] - R).norm(dim=-1).min() > 0.5  # the state did move by far more than eps
    hop.scaling.fill_(0.01)  # a soft association keeps moving: all 5 updates run
    assert _count_softmaxes(monkeypatch, hop, (Y, R, Y)) == 6


def test_update_steps_arguments_are_checked():
    for bad in (1.5, "2", True):
        with pytest.raises(TypeError, match=f"update_steps_max={bad!r}"):
            Hopfield(input_size=8, update_steps_max=bad)
    for bad in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match="update_steps_eps=.* must be a number >= 0"):
            Hopfield(input_size=8, update_steps_eps=bad)
    hop = Hopfield(input_size=8)
    with pytest.raises(TypeError, match="update_steps_max=2.0"):
        hop.update_steps_max = 2.0


def test_num_heads_must_divide_input_size_unless_hidden_size_is_given():
    with pytest.raises(ValueError, match="num_heads=3 does not divide input_size=8"):
        Hopfield(input_size=8, num_heads=3)
    with pytest.raises(ValueError, match="num_heads=3 does not divide input_size=8"):
        HopfieldPooling(input_size=8, num_heads=3)
    hop = Hopfield(input_size=8, num_heads=3, hidden_size=4)  # explicit size per head: 3 heads of 4
    assert hop.q_proj.out_features == 12 and hop(torch.randn(2, 5, 8)).shape == (2, 5, 8)
    assert Hopfield(input_size=8, num_heads=4).hidden_size == 2


@pytest.mark.parametrize("make,match", [
    (lambda: Hopfield(input_size=-8), "input_size=-8 must be >= 1"),
    (lambda: Hopfield(input_size=8, hidden_size=0), "hidden_size=0 must be >= 1"),
    (lambda: Hopfield(input_size=8, num_heads=0), "num_heads=0 must be >= 1"),
    (lambda: Hopfield(input_size=8, num_heads=2, scaling=[1.0, 2.0, 3.0]), "scaling has 3 values.*num_heads=2"),
    (lambda: Hopfield(input_size=8, scaling=0.0), "scaling=0.0 must be > 0"),
    (lambda: Hopfield(input_size=8, num_heads=2, scaling=[1.0, -1.0]), r"scaling=\[1.0, -1.0\] must be > 0"),
    (lambda: HopfieldPooling(input_size=8, quantity=0), "quantity=0 must be >= 1"),
    (lambda: HopfieldLayer(input_size=8, quantity=0), "quantity=0 must be >= 1"),
    (lambda: HopfieldLayer(input_size=8, stored_pattern=torch.randn(2, 3, 8)),
     r"stored_pattern must be a 2-D float tensor \(N, features\), got \(2, 3, 8\)"),
    (lambda: HopfieldLayer(input_size=8, stored_pattern=torch.randn(3, 8), pattern_projection=torch.randn(4, 2)),
     "pattern_projection has 4 rows, stored_pattern 3"),
])
def test_nonsense_arguments_are_refused_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_input_and_mask_shapes_are_checked_naming_the_argument():
    torch.manual_seed(0)
    hop = Hopfield(input_size=8)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"input has 7 features, expected \(B, N, input_size=8\), got shape \(2, 5, 7\)"):
        hop(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"input must be 3-D \(B, N, input_size=8\), got shape \(5, 8\)"):
        hop(torch.randn(5, 8))
    with pytest.raises(ValueError, match=r"batch sizes differ.*stored_pattern \(2, 5, 8\), state_pattern \(3, 4, 8\)"):
        hop((x, torch.randn(3, 4, 8), x))
    with pytest.raises(ValueError, match="stored_pattern and pattern_projection need the same number of patterns N"):
        hop((x, x, torch.randn(2, 6, 8)))
    with pytest.raises(ValueError, match=r"state_pattern has 4 features, expected \(B, S, state_pattern_size=8\)"):
        hop((x, torch.randn(2, 3, 4), x))
    with pytest.raises(ValueError, match=r"stored_pattern_padding_mask must have shape \(B, N\) = \(2, 5\), got \(2, 4\)"):
        hop(x, stored_pattern_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"association_mask must have shape \(S, N\) = \(5, 5\) or .* got \(4, 4\)"):
        hop(x, association_mask=torch.zeros(4, 4, dtype=torch.bool))
    seq_first = Hopfield(input_size=8, batch_first=False)
    with pytest.raises(ValueError, match=r"input must be 3-D \(N, B, input_size=8\)"):
        seq_first(torch.randn(5, 8))
    with pytest.raises(ValueError, match=r"HopfieldPooling: input has 6 features, expected \(B, N, input_size=8\)"):
        HopfieldPooling(input_size=8)(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"HopfieldLayer: input must be 3-D \(B, S, input_size=8\)"):
        HopfieldLayer(input_size=8, quantity=4)(torch.randn(5, 8))


def test_hopfield_layer_lookup_weights_and_targets_follow_hflayers():
    with pytest.raises(ValueError, match="lookup_targets_as_trainable=False applies to separate targets only"):
        HopfieldLayer(input_size=8, quantity=4, lookup_targets_as_trainable=False)
    layer = HopfieldLayer(input_size=8, quantity=4, lookup_weights_as_separated=True, lookup_targets_as_trainable=False)
    assert layer.stored.requires_grad and not layer.values.requires_grad
    frozen = HopfieldLayer(input_size=8, quantity=4, trainable=False)  # shared lookup weights, frozen
    assert not frozen.stored.requires_grad
    with pytest.raises(ValueError, match="lookup_weights_as_separated=True learns separate targets"):
        HopfieldLayer(input_size=8, stored_pattern=torch.randn(5, 8), lookup_weights_as_separated=True)


def test_hopfield_layer_padding_mask_hides_memory_entries():
    # a fixed memory used leave-one-out: each query may not retrieve its own entry
    torch.manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1) * 3
    labels = torch.nn.functional.one_hot(torch.arange(6) % 2, 2).float()
    mem = HopfieldLayer(input_size=8, hidden_size=8, stored_pattern=keys, pattern_projection=labels, scaling=10.0,
                        state_pattern_as_static=True, stored_pattern_as_static=True,
                        pattern_projection_as_static=True, normalize_stored_pattern=False,
                        normalize_state_pattern=False, normalize_pattern_projection=False,
                        disable_out_projection=True)
    own = torch.eye(6, dtype=torch.bool)  # (B=6, N=6): query b may not see entry b
    a = mem.get_association_matrix(keys[:, None], stored_pattern_padding_mask=own)  # (6, 1, 1, 6)
    assert a.shape == (6, 1, 1, 6) and a[..., 0, 0, :].diagonal().abs().max() == 0
    torch.testing.assert_close(a.sum(-1), torch.ones(6, 1, 1))
    amask = torch.zeros(1, 6, dtype=torch.bool)
    amask[0, :3] = True
    a2 = mem.get_association_matrix(keys[:, None], association_mask=amask)
    assert a2[..., :3].abs().max() == 0


def test_pooling_association_matrix_takes_the_association_mask():
    torch.manual_seed(0)
    pool = HopfieldPooling(input_size=8, quantity=2)
    amask = torch.tensor([[True, False, False, False], [False, False, False, True]])  # (quantity, N)
    a = pool.get_association_matrix(torch.randn(3, 4, 8), association_mask=amask)
    assert a[:, :, 0, 0].abs().max() == 0 and a[:, :, 1, 3].abs().max() == 0


def test_fully_padded_bag_is_nan_and_leaves_the_others_alone():
    # documented behaviour (as nn.MultiheadAttention): an all-padding bag has nothing to attend to -> NaN; the
    # other bags' results, update steps included, are those they get on their own
    torch.manual_seed(0)
    pool = HopfieldPooling(input_size=8, scaling=0.2, update_steps_max=3, update_steps_eps=0.0)
    x = torch.randn(2, 5, 8)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1] = True
    out = pool(x, stored_pattern_padding_mask=pad)
    assert out[1].isnan().all()
    torch.testing.assert_close(out[0], pool(x[:1])[0])
