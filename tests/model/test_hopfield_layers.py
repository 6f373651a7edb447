"""Hopfield, HopfieldPooling, HopfieldLayer: shapes, options, and equivalence with nn.MultiheadAttention."""

import math

import pytest
import torch
import torch.nn as nn

from model.hopfield import Hopfield, HopfieldLayer, HopfieldPooling, hopfield_update


def _copy_mha_weights(hop: Hopfield, mha: nn.MultiheadAttention) -> None:
    d = mha.embed_dim
    with torch.no_grad():
        wq, wk, wv = mha.in_proj_weight.split(d)
        bq, bk, bv = mha.in_proj_bias.split(d)
        hop.q_proj.weight.copy_(wq), hop.q_proj.bias.copy_(bq)
        hop.k_proj.weight.copy_(wk), hop.k_proj.bias.copy_(bk)
        hop.v_proj.weight.copy_(wv), hop.v_proj.bias.copy_(bv)
        hop.out_proj.weight.copy_(mha.out_proj.weight), hop.out_proj.bias.copy_(mha.out_proj.bias)


@pytest.mark.parametrize("heads", [1, 4])
def test_one_step_equals_multihead_attention(heads):
    torch.manual_seed(0)
    d, B, S, N = 32, 3, 5, 7
    mha = nn.MultiheadAttention(d, heads, batch_first=True)
    hop = Hopfield(input_size=d, num_heads=heads, scaling=1 / math.sqrt(d // heads), update_steps_max=0,
                   normalize_stored_pattern=False, normalize_state_pattern=False,
                   normalize_pattern_projection=False)
    _copy_mha_weights(hop, mha)
    y, r = torch.randn(B, N, d), torch.randn(B, S, d)
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[0, -2:] = True
    amask = torch.rand(S, N) < 0.2
    amask[:, 0] = False  # keep every row attendable
    ref, ref_w = mha(r, y, y, key_padding_mask=pad, attn_mask=amask, average_attn_weights=False)
    out, a = hop((y, r, y), stored_pattern_padding_mask=pad, association_mask=amask, return_association=True)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(a, ref_w, atol=1e-6)
    # self-attention form with a single tensor, sequence-first
    mha_sf = nn.MultiheadAttention(d, heads)
    hop_sf = Hopfield(input_size=d, num_heads=heads, batch_first=False, normalize_stored_pattern=False,
                      normalize_state_pattern=False, normalize_pattern_projection=False)
    _copy_mha_weights(hop_sf, mha_sf)
    x = torch.randn(N, B, d)
    assert torch.allclose(hop_sf(x), mha_sf(x, x, x)[0], atol=1e-5)


def test_static_patterns_reproduce_the_update_rule():
    # all projections off, no normalisation, no output projection: Z = Y softmax(beta Y^T R)  (Eq. 3)
    torch.manual_seed(1)
    d, N = 16, 20
    hop = Hopfield(input_size=d, hidden_size=d, scaling=0.7, stored_pattern_as_static=True,
                   state_pattern_as_static=True, pattern_projection_as_static=True,
                   normalize_stored_pattern=False, normalize_state_pattern=False,
                   normalize_pattern_projection=False, disable_out_projection=True)
    assert len(list(hop.parameters())) == 0
    Y, R = torch.randn(2, N, d), torch.randn(2, 3, d)
    z = hop((Y, R, Y))
    ref = hopfield_update(Y.transpose(1, 2)[:, None], R, 0.7)  # (2, 3, d)
    assert torch.allclose(z, ref, atol=1e-6)
    # two updates and the retrieval = the update rule applied three times
    hop.update_steps_max, hop.update_steps_eps = 2, 0.0
    z3 = hop((Y, R, Y))
    x = R
    for _ in range(3):
        x = hopfield_update(Y.transpose(1, 2)[:, None], x, 0.7)
    assert torch.allclose(z3, x, atol=1e-5)


def test_update_until_convergence_reaches_a_fixed_point():
    torch.manual_seed(2)
    hop = Hopfield(input_size=8, hidden_size=8, update_steps_max=None, update_steps_eps=1e-7, scaling=2.0,
                   stored_pattern_as_static=True, state_pattern_as_static=True, pattern_projection_as_static=True,
                   normalize_stored_pattern=False, normalize_state_pattern=False,
                   normalize_pattern_projection=False, disable_out_projection=True)
    Y, R = torch.randn(1, 10, 8), torch.randn(1, 4, 8)
    z = hop((Y, R, Y))
    assert torch.allclose(hopfield_update(Y.transpose(1, 2)[:, None], z, 2.0), z, atol=1e-5)


def test_options_shapes_and_gradients():
    torch.manual_seed(3)
    hop = Hopfield(input_size=12, hidden_size=6, output_size=5, pattern_size=3, num_heads=2,
                   scaling=[0.5, 1.0], update_steps_max=2, normalize_hopfield_space=True, dropout=0.1,
                   pattern_projection_as_connected=True, stored_pattern_size=10, state_pattern_size=7,
                   pattern_projection_size=9)
    y, r, p = torch.randn(4, 11, 10), torch.randn(4, 2, 7), torch.randn(4, 11, 9)
    z = hop((y, r, p))
    assert z.shape == (4, 2, 5)
    z.sum().backward()
    assert hop.q_proj.weight.grad is not None and hop.k_proj.weight.grad is not None
    a = hop.get_association_matrix((y, r, p))
    assert a.shape == (4, 2, 2, 11) and torch.allclose(a.sum(-1), torch.ones(4, 2, 2))
    with pytest.raises(ValueError, match="as_static"):
        Hopfield(input_size=12, num_heads=2, hidden_size=4, stored_pattern_as_static=True)


def test_pooling_masks_padding_and_is_permutation_invariant():
    torch.manual_seed(4)
    pool = HopfieldPooling(input_size=8, hidden_size=4, output_size=6, num_heads=2, quantity=3)
    x = torch.randn(2, 5, 8)
    out = pool(x)
    assert out.shape == (2, 18) and pool.output_size == 18
    perm = torch.randperm(5)
    assert torch.allclose(pool(x[:, perm]), out, atol=1e-5)
    # padding: appended garbage instances that are masked do not change the result
    padded = torch.cat([x, 100 * torch.randn(2, 3, 8)], dim=1)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 5:] = True
    assert torch.allclose(pool(padded, stored_pattern_padding_mask=mask), out, atol=1e-5)
    a = pool.get_association_matrix(x)
    assert a.shape == (2, 2, 3, 5)


def test_hopfield_layer_as_lookup_memory():
    torch.manual_seed(5)
    # learned memory
    layer = HopfieldLayer(input_size=8, output_size=4, quantity=16, lookup_weights_as_separated=True)
    out = layer(torch.randn(3, 2, 8))
    assert out.shape == (3, 2, 4)
    out.sum().backward()
    assert layer.stored.grad is not None and layer.values.grad is not None
    # fixed memory: a training set as keys and one-hot labels as values -> nearest-neighbour-like classifier
    keys = torch.nn.functional.normalize(torch.randn(30, 8), dim=-1) * 3  # on a sphere: self has the largest dot
    labels = torch.nn.functional.one_hot(torch.arange(30) % 3, 3).float()
    mem = HopfieldLayer(input_size=8, hidden_size=8, stored_pattern=keys, pattern_projection=labels, scaling=10.0,
                        state_pattern_as_static=True, stored_pattern_as_static=True,
                        pattern_projection_as_static=True, normalize_stored_pattern=False,
                        normalize_state_pattern=False, normalize_pattern_projection=False,
                        disable_out_projection=True)
    pred = mem(keys[None] + 0.01 * torch.randn(1, 30, 8))  # (1, 30, 3)
    assert (pred.argmax(-1)[0] == torch.arange(30) % 3).all()
    assert len(list(mem.parameters())) == 0
