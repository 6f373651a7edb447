"""Locally banded causal attention through FlexAttention block masks (issue #11).

GPT-3 (Section 2.1) alternates dense layers with the locally banded pattern of the Sparse Transformer
(Child et al. 2019): query i sees key j when j <= i and i - j < window, the band of
`model.gpt.local_band_mask`. The dense path builds that (T, T) mask and hands it to SDPA, which then
computes every one of the T x T scores and cannot use the flash kernel. A FlexAttention `BlockMask`
records which (128 x 128) tiles of the score matrix the band touches, so the fused kernel skips the
others: about window / T of the work at T = 2048, window = 256.

`banded_attention(q, k, v, window)` has the dense path's semantics, (B, H, T, Dh) in and out. Block masks
are cached per (T, window, device). FlexAttention is fast only when compiled: on CUDA it is compiled by
default; on CPU it runs eagerly unless `compiled=True` (eager flex attention materialises the scores,
like the dense path; fine for tests, not for speed). torch 2.13 has no FlexAttention backward on CPU:
there this is forward-only (evaluation); CPU training keeps the dense mask.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


def band_mask_mod(window: int):
    """FlexAttention mask_mod of the local band: causal and fewer than `window` tokens back."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return mask_mod


@functools.lru_cache(maxsize=64)
def band_block_mask(seq_len: int, window: int, device: str) -> BlockMask:
    """The band's BlockMask for T = `seq_len` (any T: the last tile is partial), shared by every batch
    row and head. Cached: building it evaluates the mask_mod on every tile."""
    if window <= 0:
        raise ValueError(f"window={window} (rule: the band keeps at least the token itself, window >= 1)")
    return create_block_mask(band_mask_mod(window), B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len,
                             device=device)


@functools.cache
def _compiled_flex_attention():
    # One compiled kernel per shape/dtype, made on first use (compiling takes seconds to a minute).
    return torch.compile(flex_attention, dynamic=False)


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, *,
                     dropout_p: float = 0.0, scale: float | None = None,
                     compiled: bool | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + band) v over the local causal band of width `window`.

    q, k, v: (B, H, T, Dh) -> (B, H, T, Dh); scale defaults to 1/sqrt(Dh) (as SDPA). Equals
    `F.scaled_dot_product_attention(q, k, v, attn_mask=local_band_mask(T, window))`. `compiled`: None
    compiles on CUDA only. On CPU, forward only (no gradients). FlexAttention has no attention
    dropout: `dropout_p > 0` is refused rather than ignored (use the dense path when training with
    attention dropout)."""
    if dropout_p > 0:
        raise ValueError(f"dropout_p={dropout_p}: FlexAttention has no attention dropout (rule: use the dense "
                         f"SDPA path with model.dropout > 0, or set model.dropout=0)")
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must be (B, H, T, Dh) with equal B, H, T; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.device.type == "cpu" and any(t.requires_grad for t in (q, k, v)):
        if not torch.is_grad_enabled():  # evaluation: torch refuses inputs that merely could need grads
            q, k, v = q.detach(), k.detach(), v.detach()
        else:
            raise NotImplementedError("banded_attention: FlexAttention has no backward on CPU (torch "
                                      f"{torch.__version__}); train on CPU with the dense band mask "
                                      "(SDPA + model.gpt.local_band_mask), use this on CUDA or for CPU "
                                      "inference")
    block_mask = band_block_mask(q.size(2), window, str(q.device))  # q: (B, H, T, Dh)
    if compiled is None:
        compiled = q.is_cuda
    attend = _compiled_flex_attention() if compiled else flex_attention
    return attend(q, k, v, block_mask=block_mask, scale=scale)  # (B, H, T, Dh)
