import math

import pytest
import torch

from launcher.config import ModelConfig, load_config
from model.gpt import GPT, CausalSelfAttention, build_gpt, local_band_mask
from model.presets import GPT3_TABLE


def test_local_attention_equals_dense_attention_under_explicit_band_mask():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, d_model=32, n_head=4, n_ctx=64, vocab_size=64, local_window=5)
    attn = CausalSelfAttention(cfg, local=True)
    x = torch.randn(2, 20, 32)
    got = attn(x)
    # Reference: plain softmax attention with -inf outside the band (no SDPA).
    B, T, _ = x.shape
    q, k, v = attn.qkv(x).split(32, dim=2)
    q, k, v = (t.view(B, T, 4, 8).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    band = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(max(0, i - 4), i + 1):
            band[i, j] = True
    assert torch.equal(band, local_band_mask(T, 5))
    scores = scores.masked_fill(~band, float("-inf"))
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, 32)
    torch.testing.assert_close(got, attn.proj(ref), rtol=1e-5, atol=1e-6)
    # and the band really changes the result compared with full causal attention
    dense = CausalSelfAttention(cfg, local=False)
    dense.load_state_dict(attn.state_dict())
    assert not torch.allclose(dense(x), got)


def test_alternating_pattern_makes_odd_layers_local():
    cfg = ModelConfig(n_layer=4, d_model=32, n_head=4, attn_pattern="alternating")
    m = GPT(cfg)
    assert [b.attn.local for b in m.blocks] == [False, True, False, True]


def test_gpt_is_causal_and_tied():
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=4, n_ctx=16, vocab_size=50)
    m = build_gpt(cfg, seed=0)
    assert m.lm_head.weight is m.wte.weight
    x = torch.randint(0, 50, (1, 10))
    y1 = m(x)
    x2 = x.clone()
    x2[0, 7] = (x2[0, 7] + 1) % 50
    y2 = m(x2)
    torch.testing.assert_close(y1[0, :7], y2[0, :7])
    assert not torch.allclose(y1[0, 7:], y2[0, 7:])


def test_gpt2_initialisation_scales_residual_projections():
    cfg = ModelConfig(n_layer=8, d_model=256, n_head=4, vocab_size=512)
    m = build_gpt(cfg, seed=0)
    std_fc = m.blocks[0].mlp.fc.weight.std().item()
    std_proj = m.blocks[0].mlp.proj.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / math.sqrt(16)) < 0.0005
    assert torch.all(m.blocks[0].attn.qkv.bias == 0)
    assert torch.all(m.ln_f.weight == 1)
    # the same seed gives the same weights
    m2 = build_gpt(cfg, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


@pytest.mark.parametrize("name", list(GPT3_TABLE))
def test_gpt3_presets_match_table_2_1(name):
    layers, d_model, heads, _, _ = GPT3_TABLE[name]
    cfg = load_config(None, [f"model.preset={name}"]).model
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_ctx, cfg.ff_width) == (layers, d_model, heads, 2048, 4 * d_model)


def test_gpt3_175b_builds_on_meta_with_paper_parameter_count():
    cfg = load_config(None, ["model.preset=gpt3-175b"]).model
    with torch.device("meta"):
        m = GPT(cfg)
    n = m.num_parameters()
    assert abs(n - 174.6e9) / 174.6e9 < 0.005, n
    assert all(p.is_meta for p in m.parameters())
    # with the unpadded 50257-token vocabulary too
    with torch.device("meta"):
        m2 = GPT(cfg.model_copy(update={"vocab_size": 50257}))
    assert abs(m2.num_parameters() - 174.6e9) / 174.6e9 < 0.005


def test_small_preset_counts():
    for name, expected in {"gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-xl": 1.3e9, "gpt3-13b": 13e9}.items():
        cfg = load_config(None, [f"model.preset={name}"]).model
        with torch.device("meta"):
            n = GPT(cfg).num_parameters()
        assert abs(n - expected) / expected < 0.03, (name, n)
