"""GPT-3 decoder (Brown et al. 2020), read top to bottom in forward order.

Architecture (GPT-3 Section 2.1): the GPT-2 model (Radford et al. 2019): learned token and position
embeddings, pre-LayerNorm blocks, GELU MLP of width 4 d_model, final LayerNorm, output projection tied to
the token embedding. Layers alternate dense and locally banded sparse attention (Sparse Transformer,
Child et al. 2019) when `attn_pattern == "alternating"`.

Parameter names are the contract with `parallel/` (its tensor-parallel plan matches them):
  wte, wpe, blocks.{i}.ln_1, blocks.{i}.attn.qkv, blocks.{i}.attn.proj, blocks.{i}.ln_2,
  blocks.{i}.mlp.fc, blocks.{i}.mlp.proj, ln_f, lm_head (weight shared with wte).
`attn.qkv.weight` stacks [W_q; W_k; W_v] along the output dimension (GPT-2's layout).

This module never imports torch.distributed: it computes logits; the loss lives with the trainer.
Widths are read from the layers themselves (e.g. `qkv.out_features`), so a tensor-parallel plan that
swaps in layers with local shapes needs no change here.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from launcher.config import ModelConfig


def local_band_mask(seq_len: int, window: int, device=None) -> torch.Tensor:
    """Boolean (T, T) mask, True where query i may attend key j: causal and i - j < window."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & (i - j < window)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, local: bool):
        super().__init__()
        self.d_head = cfg.d_head
        self.local = local  # Sparse Transformer's locally banded pattern (GPT-3 Section 2.1)
        self.window = cfg.local_window
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.band_kernel = "dense"  # "flex": FlexAttention block masks (model.banded_attention), set by use_band_kernel
        self.sdpa_backends: list | None = None  # SDPA kernels allowed for this layer, set by use_sdpa_backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d_model)
        B, T, _ = x.shape
        n_head = self.qkv.out_features // (3 * self.d_head)  # local head count under TP
        q, k, v = self.qkv(x).split(n_head * self.d_head, dim=2)
        q = q.view(B, T, n_head, self.d_head).transpose(1, 2)  # (B, h, T, d_head)
        k = k.view(B, T, n_head, self.d_head).transpose(1, 2)  # (B, h, T, d_head)
        v = v.view(B, T, n_head, self.d_head).transpose(1, 2)  # (B, h, T, d_head)
        p = self.dropout if self.training else 0.0
        if self.local and self.window < T and self.band_kernel == "flex":
            from model.banded_attention import banded_attention
            y = banded_attention(q, k, v, self.window, dropout_p=p)  # skips the tiles outside the band
        elif self.local and self.window < T:
            mask = local_band_mask(T, self.window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        elif self.sdpa_backends is not None:
            with sdpa_kernel(self.sdpa_backends):  # e.g. cuDNN's attention instead of torch's choice
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, n_head * self.d_head)  # (B, T, d_model / tp)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ff_width)  # d_ff = 4 d_model (GPT-3 Table 2.1)
        self.proj = nn.Linear(cfg.ff_width, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d_model)
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))  # GPT-2's tanh GELU


class Block(nn.Module):
    """Pre-LN transformer block (GPT-2 Section 2.3): x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, cfg: ModelConfig, local: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg, local)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, d_model)
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch != "gpt":
            raise ValueError(f"model.arch={cfg.arch!r}: GPT needs arch 'gpt'")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        # GPT-3 Section 2.1: "alternating dense and locally banded sparse attention patterns".
        local = [cfg.attn_pattern == "alternating" and i % 2 == 1 for i in range(cfg.n_layer)]
        self.blocks = nn.ModuleList(Block(cfg, local[i]) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input/output embeddings (GPT-2)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 init: N(0, 0.02) everywhere, residual projections N(0, 0.02/sqrt(2 n_layer)), zero biases.

        Draws tensors in a fixed order from `generator`, so the same seed gives the same full weights
        however the model is later sharded.
        """
        std = self.cfg.init_std
        resid_std = std / math.sqrt(2 * self.cfg.n_layer)  # GPT-2 Section 2.3
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "ln" in name.split(".")[-2]:
                p.fill_(1.0)
            elif name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                p.normal_(0.0, resid_std, generator=generator)
            else:
                p.normal_(0.0, std, generator=generator)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # idx: (B, T) token ids -> logits (B, T, vocab)
        B, T = idx.shape
        if T > self.cfg.n_ctx:
            raise ValueError(f"sequence length {T} exceeds model.n_ctx={self.cfg.n_ctx}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, d_model)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, vocab)

    def num_parameters(self) -> int:
        """Unique parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())


def use_band_kernel(model: nn.Module, kernel: str) -> int:
    """Route the locally banded layers of `model` through `kernel` ("dense" | "flex"); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, CausalSelfAttention) and m.local]
    for m in layers:
        m.band_kernel = kernel
    return len(layers)


SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def use_sdpa_backend(model: nn.Module, backend: str) -> int:
    """Run the dense causal attention of `model` through one SDPA kernel ("auto" = torch's choice,
    "flash", "cudnn", "efficient", "math"); returns how many layers. torch raises at the first forward
    when the kernel cannot run the inputs (e.g. cuDNN on a CPU): no silent fallback."""
    if backend != "auto" and backend not in SDPA_BACKENDS:
        raise ValueError(f"sdpa backend {backend!r} (choices: auto, {', '.join(SDPA_BACKENDS)})")
    layers = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    for m in layers:
        m.sdpa_backends = None if backend == "auto" else [SDPA_BACKENDS[backend]]
    return len(layers)


def build_gpt(cfg: ModelConfig, seed: int, device: str | torch.device = "cpu") -> GPT:
    """Build on the meta device, materialise on `device`, then initialise from `seed`."""
    with torch.device("meta"):
        model = GPT(cfg)
    model = model.to_empty(device=device)
    model.lm_head.weight = model.wte.weight  # to_empty breaks the tie; restore it
    gen = torch.Generator(device=device).manual_seed(seed)
    model.init_weights(gen)
    return model
