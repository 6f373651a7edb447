"""Model shapes of GPT-3 Table 2.1 and BERT (Devlin et al. 2018), plus tiny shapes for tests.

Each preset gives the model shape and, for GPT-3, the paper's batch size (tokens) and peak learning rate.
"""

from __future__ import annotations

# GPT-3 Table 2.1. n_ctx 2048, d_ff = 4 d_model. Vocabulary 50257 padded to 50304 (a multiple of 128).
# gpt3-xl: the paper prints 24 heads, but 2048 / 24 is not an integer; 16 heads of 128 is the shape
# every reproduction uses. gpt3-13b: the paper prints d_model 5140; 5120 = 40 x 128.
GPT3_TABLE = {
    #  name           layers d_model heads batch_tokens   lr
    "gpt3-small":  (12,   768,  12, 0.5e6, 6.0e-4),
    "gpt3-medium": (24,  1024,  16, 0.5e6, 3.0e-4),
    "gpt3-large":  (24,  1536,  16, 0.5e6, 2.5e-4),
    "gpt3-xl":     (24,  2048,  16, 1.0e6, 2.0e-4),
    "gpt3-2.7b":   (32,  2560,  32, 1.0e6, 1.6e-4),
    "gpt3-6.7b":   (32,  4096,  32, 2.0e6, 1.2e-4),
    "gpt3-13b":    (40,  5120,  40, 2.0e6, 1.0e-4),
    "gpt3-175b":   (96, 12288,  96, 3.2e6, 0.6e-4),
}
GPT3_VOCAB = 50304
GPT3_CTX = 2048

PRESETS: dict[str, dict] = {
    name: dict(arch="gpt", n_layer=L, d_model=d, n_head=h, n_ctx=GPT3_CTX, vocab_size=GPT3_VOCAB,
               attn_pattern="alternating", local_window=256)
    for name, (L, d, h, _, _) in GPT3_TABLE.items()
}
PRESETS.update({
    "gpt-tiny": dict(arch="gpt", n_layer=2, d_model=64, n_head=4, n_ctx=128, vocab_size=512),
    "gpt-mini": dict(arch="gpt", n_layer=4, d_model=128, n_head=4, n_ctx=256, vocab_size=2048),
    # BERT (Devlin et al. 2018, Section 3): base L12 H768 A12, large L24 H1024 A16; 30522 WordPiece
    # tokens padded to a multiple of 128; 512 positions.
    "bert-base": dict(arch="bert", n_layer=12, d_model=768, n_head=12, n_ctx=512, vocab_size=30592,
                      layer_norm_eps=1e-12),
    "bert-large": dict(arch="bert", n_layer=24, d_model=1024, n_head=16, n_ctx=512, vocab_size=30592,
                       layer_norm_eps=1e-12),
    "bert-tiny": dict(arch="bert", n_layer=2, d_model=64, n_head=4, n_ctx=128, vocab_size=512,
                      layer_norm_eps=1e-12),
})


def preset_shape(name: str) -> dict:
    """The model fields of a preset; KeyError names the choices."""
    if name not in PRESETS:
        raise KeyError(f"model.preset={name!r} is not a preset (choices: {', '.join(PRESETS)})")
    return dict(PRESETS[name], preset=name)


def gpt3_hparams(name: str) -> dict:
    """Paper batch size (tokens) and peak learning rate of a GPT-3 preset."""
    _, _, _, batch_tokens, lr = GPT3_TABLE[name]
    return {"batch_tokens": int(batch_tokens), "lr": lr}
