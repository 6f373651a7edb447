"""Hugging Face GPT-2 export of a mnemos GPT, and evaluation of exported weights outside the training
engine with accelerate's big-model loading (empty-weight init, device map across GPUs, CPU/disk offload).

Weight layout: mnemos `attn.qkv` is an nn.Linear whose weight stacks [W_q; W_k; W_v] along the output
dimension, shape (3d, d); HF GPT-2's `c_attn` is a Conv1D with weight (d, 3d) and the same q|k|v
column order, so every Linear weight is transposed and nothing is permuted. GPT-2 uses the tanh GELU
("gelu_new"), pre-LayerNorm blocks, learned positions and a tied output head, like mnemos.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def hf_config(cfg) -> Any:
    from transformers import GPT2Config
    if cfg.attn_pattern == "alternating" and cfg.local_window < cfg.n_ctx:
        raise ValueError(f"model.attn_pattern='alternating' with model.local_window={cfg.local_window} < "
                         f"n_ctx={cfg.n_ctx} (locally banded layers, the GPT-3 presets' default) has no GPT-2 "
                         f"equivalent in transformers (rule: only dense-attention models export to GPT2LMHeadModel); "
                         f"the pattern is fixed when training starts, so train a run that is to be exported with "
                         f"model.attn_pattern=dense (--set model.attn_pattern=dense, also on a GPT-3 preset). This "
                         f"checkpoint still works with `mnemos eval` and `mnemos ckpt export-torch`")
    return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, n_inner=cfg.ff_width, activation_function="gelu_new",
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.layer_norm_eps,
                      initializer_range=cfg.init_std, tie_word_embeddings=True, bos_token_id=None,
                      eos_token_id=None)


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """mnemos GPT state dict -> GPT2LMHeadModel state dict (Linear weights transposed to Conv1D)."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}
    for i in range(model.cfg.n_layer):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
            out[dst + b + ".weight"] = sd[src + a + ".weight"]
            out[dst + b + ".bias"] = sd[src + a + ".bias"]
        for a, b in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                     ("mlp.proj", "mlp.c_proj")):
            out[dst + b + ".weight"] = sd[src + a + ".weight"].t().contiguous()  # Linear (out,in) -> Conv1D (in,out)
            out[dst + b + ".bias"] = sd[src + a + ".bias"]
    out["lm_head.weight"] = sd["wte.weight"]
    return out


def to_hf(model):
    """A transformers GPT2LMHeadModel holding a copy of the mnemos GPT's weights."""
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel(hf_config(model.cfg))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise RuntimeError(f"GPT-2 export mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def export_hf(model, out_dir: str | os.PathLike, tokenizer_path: str | None = None) -> Path:
    """Save `model` as a Hugging Face GPT-2 checkpoint (safetensors) in out_dir; copy the tokenizer."""
    out = Path(out_dir)
    to_hf(model).save_pretrained(out, safe_serialization=True)
    if tokenizer_path:
        shutil.copyfile(tokenizer_path, out / "tokenizer.model")
    return out


class HFLogits(torch.nn.Module):
    """Wraps a HF causal LM as `idx (B, T) -> logits (B, T, V)` with a `cfg.n_ctx`, for MnemosLM."""

    def __init__(self, hf_model, n_ctx: int, input_device: str):
        super().__init__()
        self.hf = hf_model
        self.cfg = type("Cfg", (), {"n_ctx": n_ctx, "d_model": hf_model.config.n_embd})()
        self.input_device = input_device

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=idx.to(self.input_device)).logits

    def to(self, *args, **kwargs):  # accelerate placed the weights: moving them would undo the device map
        return self


def load_hf_big_model(path: str | os.PathLike, device_map: str | dict = "auto", max_memory: dict | None = None,
                      offload_folder: str | None = None, dtype: str = "fp32") -> HFLogits:
    """Load exported GPT-2 weights with accelerate: empty-weight init, then dispatch per the device map."""
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if torch_dtype != torch.float32 and not torch.cuda.is_available():
        raise ValueError(f"dtype={dtype} needs a GPU; on CPU use fp32")
    config = GPT2Config.from_pretrained(path)
    with init_empty_weights():
        model = GPT2LMHeadModel(config)
    model.tie_weights()
    if device_map == "auto":
        from accelerate import infer_auto_device_map
        from accelerate.utils import get_balanced_memory
        mem = max_memory or get_balanced_memory(model, dtype=torch_dtype, no_split_module_classes=["GPT2Block"])
        device_map = infer_auto_device_map(model, max_memory=mem, no_split_module_classes=["GPT2Block"],
                                           dtype=torch_dtype)
    if isinstance(device_map, dict) and set(device_map.values()) == {"disk"}:
        raise ValueError(f"--max-memory {max_memory} leaves no room for any layer on a GPU or the CPU (rule: at "
                         f"least one transformer block, {_block_bytes(model, torch_dtype) / 2**20:.0f} MiB here, must "
                         f"fit on a GPU or the CPU; the rest may go to disk)")
    model = load_checkpoint_and_dispatch(model, str(path), device_map=device_map, max_memory=max_memory,
                                         offload_folder=offload_folder, no_split_module_classes=["GPT2Block"],
                                         dtype=torch_dtype)
    model.eval()
    dmap = getattr(model, "hf_device_map", {}) or {}
    first = dmap.get("transformer.wte", dmap.get("", "cpu"))
    input_device = f"cuda:{first}" if isinstance(first, int) else str(first)
    if input_device == "disk":
        input_device = "cpu"
    log.info("loaded %s with device map %s", path, dmap)
    return HFLogits(model, config.n_positions, input_device)


def _block_bytes(model, dtype: torch.dtype) -> int:
    block = model.transformer.h[0]
    return sum(p.numel() for p in block.parameters()) * torch.finfo(dtype).bits // 8


def load_hf_for_eval(path: str | os.PathLike, tokenizer_path: str | None = None, **kwargs):
    """(model, tokenizer) for MnemosLM from an exported directory (tokenizer.model beside the weights)."""
    from data.tokenizer import Tokenizer
    tok_path = tokenizer_path or os.path.join(path, "tokenizer.model")
    if not os.path.exists(tok_path):
        raise FileNotFoundError(f"no tokenizer at {tok_path}: pass --tokenizer PATH/TO/tokenizer.model")
    return load_hf_big_model(path, **kwargs), Tokenizer(tok_path)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel pre-tokenizer's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_hf_tokenizer():
    """A transformers fast tokenizer with exactly `ByteTokenizer`'s ids (byte b -> id b, 256 = end of text),
    so lm-evaluation-harness's HF backend and mnemos see the same tokens."""
    from tokenizers import Tokenizer as RawTokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    vocab["<|endoftext|>"] = 256
    raw = RawTokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    return tok
