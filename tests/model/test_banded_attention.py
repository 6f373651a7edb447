"""FlexAttention banded attention equals SDPA with GPT's dense band mask (`model.gpt.local_band_mask`)
for sequence lengths that are and are not multiples of the 128-token block. torch has no FlexAttention
backward on CPU: gradients are compared on a GPU (the test skips without CUDA); on CPU the function
refuses inputs that need gradients, naming the alternative."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from model.banded_attention import band_block_mask, banded_attention
from model.gpt import local_band_mask

# eager FlexAttention (CPU) warns on every first call that it is not fused; that is the point here
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _qkv(T, B=2, H=3, Dh=16, seed=0, device="cpu", dtype=torch.float32, grad=False):
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(B, H, T, Dh, generator=g, device=device, dtype=dtype).requires_grad_(grad)
            for _ in range(3)]


def _dense(q, k, v, window):
    mask = local_band_mask(q.size(2), window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _out_and_grads(fn, q, k, v, seed=1):
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v)
    g = torch.Generator(device=q.device).manual_seed(seed)
    out.backward(torch.randn(out.shape, generator=g, device=q.device, dtype=out.dtype))
    return out.detach(), [t.grad.clone() for t in (q, k, v)]


@pytest.mark.parametrize("T", [1, 5, 127, 128, 129, 300])
@pytest.mark.parametrize("window", [1, 3, 64, 128, 256])
def test_banded_equals_sdpa_with_the_dense_band_mask(T, window):
    q, k, v = _qkv(T)
    out = banded_attention(q, k, v, window)
    assert out.shape == q.shape
    torch.testing.assert_close(out, _dense(q, k, v, window), atol=1e-5, rtol=0)


def test_other_head_count_and_head_width():
    q, k, _ = _qkv(130, B=1, H=5, Dh=32)
    v = torch.randn(1, 5, 130, 32)
    torch.testing.assert_close(banded_attention(q, k, v, 50), _dense(q, k, v, 50), atol=1e-5, rtol=0)


def test_window_as_wide_as_the_sequence_is_plain_causal_attention():
    q, k, v = _qkv(200)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(banded_attention(q, k, v, 200), causal, atol=1e-5, rtol=0)
    torch.testing.assert_close(banded_attention(q, k, v, 10_000), causal, atol=1e-5, rtol=0)


def test_explicit_scale_is_used():
    q, k, v = _qkv(40)
    mask = local_band_mask(40, 8)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(banded_attention(q, k, v, 8, scale=0.3), ref, atol=1e-5, rtol=0)


def test_block_masks_are_cached_per_length_window_and_device():
    band_block_mask.cache_clear()
    a = band_block_mask(300, 64, "cpu")
    assert band_block_mask(300, 64, "cpu") is a
    assert band_block_mask(301, 64, "cpu") is not a and band_block_mask(300, 65, "cpu") is not a
    q, k, v = _qkv(300)
    banded_attention(q, k, v, 64)
    info = band_block_mask.cache_info()
    assert info.misses == 3 and info.hits >= 2


def test_gpt3_band_skips_most_tiles():
    # T = 2048, window 256 (the GPT-3 presets): each 128-row tile of queries needs at most 3 key tiles
    # of the 16, so the kernel computes ~17% of the scores the dense mask makes SDPA compute.
    mask = band_block_mask(2048, 256, "cpu")
    assert mask.sparsity() > 80.0
    dense_tiles = (torch.arange(16)[:, None] >= torch.arange(16)[None, :]).sum().item()  # causal: 136
    kept = int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum())
    assert kept == 1 + 2 + 14 * 3 < dense_tiles / 2  # query tiles 0 and 1 have fewer tiles behind them


def test_refusals():
    q, k, v = _qkv(16)
    with pytest.raises(ValueError, match="no attention dropout"):
        banded_attention(q, k, v, 4, dropout_p=0.1)
    with pytest.raises(ValueError, match="window=0"):
        banded_attention(q, k, v, 0)
    with pytest.raises(ValueError, match=r"\(B, H, T, Dh\)"):
        banded_attention(q[0], k[0], v[0], 4)
    q, k, v = _qkv(16, grad=True)
    with pytest.raises(NotImplementedError, match="no backward on CPU.*dense band mask"):
        banded_attention(q, k, v, 4)
    with torch.no_grad():  # evaluation is fine
        torch.testing.assert_close(banded_attention(q, k, v, 4), _dense(q, k, v, 4), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_flex_attention_on_cpu_matches_dense():
    q, k, v = _qkv(200, H=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = banded_attention(q, k, v, 48, compiled=True)
    torch.testing.assert_close(out, _dense(q, k, v, 48), atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for the compiled FlexAttention kernel")
@pytest.mark.parametrize("d_head", [64, 80, 128])  # gpt3-small/medium, gpt3-2.7b, gpt3-xl
def test_compiled_flex_attention_on_gpu_matches_dense_in_bf16(d_head):
    q, k, v = _qkv(2048, B=2, H=4, Dh=d_head, device="cuda", dtype=torch.bfloat16, grad=True)
    ref, ref_grads = _out_and_grads(lambda *a: _dense(*a, 256), q, k, v)
    out, grads = _out_and_grads(lambda *a: banded_attention(*a, 256), q, k, v)
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=5e-2, rtol=5e-2)


def _alternating_gpt(device="cpu"):
    from launcher.config import ModelConfig
    from model.gpt import build_gpt
    cfg = ModelConfig(n_layer=4, d_model=64, n_head=4, n_ctx=96, vocab_size=128, attn_pattern="alternating",
                      local_window=16)
    return build_gpt(cfg, seed=0, device=device)


def test_gpt_with_the_flex_band_kernel_gives_the_dense_logits():
    """perf.band_kernel='flex' routes exactly the banded layers through FlexAttention; the model's output
    is unchanged (CPU: forward only, as in evaluation)."""
    from model.gpt import use_band_kernel
    model = _alternating_gpt().eval()
    idx = torch.randint(0, 128, (2, 80), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = model(idx)
        assert use_band_kernel(model, "flex") == 2  # layers 1 and 3 of 4 are banded
        flex = model(idx)
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
    # the banded layers really went through FlexAttention: with gradients on, the CPU refuses it
    with pytest.raises(NotImplementedError, match="no backward on CPU"):
        model(idx)


def test_band_kernel_config_rules():
    from launcher.config import RunConfig
    with pytest.raises(ValueError, match=r"perf.band_kernel='flex' with model.dropout=0.1"):
        RunConfig(model={"dropout": 0.1}, perf={"band_kernel": "flex"})
    with pytest.raises(ValueError, match=r"perf.band_kernel='flex' with device='cpu'"):
        RunConfig(device="cpu", perf={"band_kernel": "flex"})
    with pytest.raises(ValueError, match=r"needs model.arch='gpt'"):
        RunConfig(model={"arch": "bert"}, perf={"band_kernel": "flex"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (FlexAttention backward)")
def test_flex_band_kernel_trains_like_the_dense_mask_on_gpu():
    """Ten AdamW steps with the flex band kernel follow the dense-mask loss curve (fp32, CUDA)."""
    from model.gpt import use_band_kernel
    curves = []
    for kernel in ("dense", "flex"):
        model = _alternating_gpt("cuda")
        use_band_kernel(model, kernel)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(2)
        losses = []
        for _ in range(10):
            x = torch.randint(0, 128, (4, 81), generator=g).cuda()
            loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        curves.append(losses)
    torch.testing.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), rtol=1e-4, atol=1e-4)
