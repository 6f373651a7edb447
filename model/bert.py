"""BERT encoder (Devlin et al. 2018), read top to bottom in forward order.

Architecture (BERT Section 3, and the Transformer encoder of Vaswani et al. 2017 it cites): the input
representation is the sum of token, learned position and segment (token-type) embeddings, followed by
LayerNorm and dropout (Section 3 "Input/Output Representations", Figure 2). Each block is post-LayerNorm: x = LN(x + Attn(x)), then
x = LN(x + FFN(x)) with a GELU (erf) FFN of width 4 d_model (Section 3, "Model Architecture"). The pooler
is a tanh dense layer on the [CLS] state (Section 3, "C"). Pretraining heads (Section 3.1, Appendix A.1):
the masked-LM head is dense + GELU + LayerNorm followed by a decoder tied to the word embeddings with its
own output bias; the next-sentence head is a 2-way linear layer on the pooled [CLS] state.

Parameter names are the contract with `parallel/` (a tensor-parallel plan matches them) and with
`to_hf_state_dict` (the map to `transformers.BertForPreTraining`):
  bert.wte, bert.wpe, bert.wtt (token types), bert.ln_emb,
  bert.blocks.{i}.attn.qkv, bert.blocks.{i}.attn.proj, bert.blocks.{i}.ln_1,
  bert.blocks.{i}.mlp.fc, bert.blocks.{i}.mlp.proj, bert.blocks.{i}.ln_2,
  bert.pooler.dense, mlm.transform, mlm.ln, mlm.decoder (weight shared with bert.wte), mlm.bias, nsp.
`attn.qkv.weight` stacks [W_q; W_k; W_v] along the output dimension (as in model/gpt.py).

This module never imports torch.distributed: it computes logits; the loss lives with the objective
(launcher/objectives_bert.py). Widths are read from the layers themselves (`qkv.out_features`), so a
tensor-parallel plan that swaps in layers with local shapes needs no change here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from launcher.config import ModelConfig


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N) with 1 for real tokens, 0 for padding -> boolean (B, 1, 1, N) SDPA mask, True = attend."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention (Vaswani et al. 2017, Section 3.2.2); padding keys are masked."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.d_head = cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B, N, d_model), mask: (B, 1, 1, N) bool or None
        B, N, _ = x.shape
        n_head = self.qkv.out_features // (3 * self.d_head)  # local head count under TP
        q, k, v = self.qkv(x).split(n_head * self.d_head, dim=2)
        q = q.view(B, N, n_head, self.d_head).transpose(1, 2)  # (B, h, N, d_head)
        k = k.view(B, N, n_head, self.d_head).transpose(1, 2)  # (B, h, N, d_head)
        v = v.view(B, N, n_head, self.d_head).transpose(1, 2)  # (B, h, N, d_head)
        p = self.dropout if self.training else 0.0
        # softmax(Q K^T / sqrt(d_k)) V (Vaswani et al. Eq. 1), padding keys excluded
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, N, n_head * self.d_head)  # (B, N, d_model / tp)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ff_width)  # feed-forward size 4H (BERT Section 3)
        self.proj = nn.Linear(cfg.ff_width, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, N, d_model)
        return self.drop(self.proj(F.gelu(self.fc(x))))  # exact (erf) GELU, as in BERT's release


class Block(nn.Module):
    """Post-LN encoder block (Vaswani et al. Section 3.1): LN(x + attn(x)), then LN(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B, N, d_model)
        x = self.ln_1(x + self.attn(x, mask))
        x = self.ln_2(x + self.mlp(x))
        return x


class Pooler(nn.Module):
    """tanh dense layer on the final [CLS] state: the sentence representation C (BERT Section 3)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # h: (B, N, d_model) -> (B, d_model)
        return torch.tanh(self.dense(h[:, 0]))


class BertModel(nn.Module):
    """The encoder: embeddings, n_layer post-LN blocks, pooler. Returns (hidden states, pooled [CLS])."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch != "bert":
            raise ValueError(f"model.arch={cfg.arch!r}: BERT needs arch 'bert'")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.wtt = nn.Embedding(cfg.type_vocab_size, cfg.d_model)  # segment A / B (Section 3, Figure 2)
        self.ln_emb = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.pooler = Pooler(cfg)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # input_ids, token_type_ids, attention_mask: (B, N) -> hidden (B, N, d_model), pooled (B, d_model)
        B, N = input_ids.shape
        if N > self.cfg.n_ctx:
            raise ValueError(f"sequence length {N} exceeds model.n_ctx={self.cfg.n_ctx}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        pos = torch.arange(N, device=input_ids.device)
        # Input representation = token + segment + position embeddings (BERT Section 3, Figure 2)
        x = self.wte(input_ids) + self.wtt(token_type_ids) + self.wpe(pos)  # (B, N, d_model)
        x = self.drop(self.ln_emb(x))
        mask = padding_mask(attention_mask)  # (B, 1, 1, N)
        for block in self.blocks:
            x = block(x, mask)
        return x, self.pooler(x)


class MaskedLMHead(nn.Module):
    """MLM output (BERT Appendix A.1 / release): dense + GELU + LayerNorm, then the tied decoder + bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)  # weight tied to bert.wte
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))  # the output-only bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # h: (B, P, d_model) -> logits (B, P, vocab)
        return self.decoder(self.ln(F.gelu(self.transform(h)))) + self.bias


class _BertWithHead(nn.Module):
    """Shared init for an encoder plus task heads."""

    cfg: ModelConfig

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """BERT init (release `initializer_range`): weights N(0, init_std), zero biases, LayerNorm (1, 0).

        Draws tensors in `named_parameters()` order from `generator` (the tied decoder weight is the word
        embedding and is drawn once), so the same seed gives the same full weights however the model is
        later sharded.
        """
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "ln" in name.split(".")[-2]:
                p.fill_(1.0)
            else:
                p.normal_(0.0, self.cfg.init_std, generator=generator)

    def tie_weights(self) -> None:
        """Nothing tied outside pretraining; BertForPreTraining overrides."""

    def num_parameters(self) -> int:
        """Unique parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())


class BertForPreTraining(_BertWithHead):
    """Encoder + masked-LM head + next-sentence head (BERT Section 3.1). Returns logits, not the loss."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg)
        self.mlm = MaskedLMHead(cfg)
        self.nsp = nn.Linear(cfg.d_model, 2)  # IsNext / NotNext (Section 3.1, Task #2)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the MLM decoder weight with the word embedding; call again after `to_empty`."""
        self.mlm.decoder.weight = self.bert.wte.weight

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                masked_positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # input_ids: (B, N); masked_positions: (B, P) or None -> mlm (B, P or N, vocab), nsp (B, 2)
        h, pooled = self.bert(input_ids, token_type_ids, attention_mask)  # (B, N, d), (B, d)
        if masked_positions is not None:
            # Only the masked tokens are predicted (Section 3.1, Task #1): gather them before the head.
            idx = masked_positions[:, :, None].expand(-1, -1, h.size(-1))  # (B, P, d)
            h = h.gather(1, idx)  # (B, P, d_model)
        return self.mlm(h), self.nsp(pooled)


class BertForSequenceClassification(_BertWithHead):
    """Fine-tuning head for classification/regression on C (BERT Section 4.1): dropout + linear."""

    def __init__(self, cfg: ModelConfig, num_labels: int):
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.d_model, num_labels)  # num_labels = 1 is regression

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids: (B, N) -> logits (B, num_labels)
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        return self.classifier(self.drop(pooled))


class BertForQuestionAnswering(_BertWithHead):
    """Span extraction (BERT Section 4.2): start vector S and end vector E dotted with every T_i."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg)
        self.qa = nn.Linear(cfg.d_model, 2)  # rows: S, E

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # input_ids: (B, N) -> start logits (B, N), end logits (B, N)
        h, _ = self.bert(input_ids, token_type_ids, attention_mask)
        start, end = self.qa(h).unbind(-1)  # (B, N) each
        return start, end


def build_bert(cfg: ModelConfig, seed: int, device: str | torch.device = "cpu") -> BertForPreTraining:
    """Build on the meta device, materialise on `device`, restore the tie, initialise from `seed`."""
    with torch.device("meta"):
        model = BertForPreTraining(cfg)
    model = model.to_empty(device=device)
    model.tie_weights()
    model.init_weights(torch.Generator(device=device).manual_seed(seed))
    return model


@torch.no_grad()
def attention_probabilities(model: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                            attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-layer, per-head attention probabilities softmax(Q K^T / sqrt(d) + mask) for a batch.

    `model` is a BertModel or any model holding one as `.bert`. Returns (layers, B, heads, N, N), rows are
    queries, columns keys; padding keys get probability 0 (rows of padding queries are still computed).
    Read from the q/k projections of the ordinary forward pass (eval mode, no dropout), so the numbers are
    exactly the ones the model attends with.
    """
    bert = model.bert if hasattr(model, "bert") else model
    captured: list[torch.Tensor] = []
    hooks = [blk.attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
             for blk in bert.blocks]
    was_training = bert.training
    bert.eval()
    try:
        bert(input_ids, token_type_ids, attention_mask)
    finally:
        for h in hooks:
            h.remove()
        bert.train(was_training)
    mask = padding_mask(attention_mask)
    probs = []
    for blk, qkv in zip(bert.blocks, captured):
        B, N, _ = qkv.shape
        d_head = blk.attn.d_head
        n_head = qkv.size(-1) // (3 * d_head)
        q, k, _ = qkv.float().split(n_head * d_head, dim=2)
        q = q.view(B, N, n_head, d_head).transpose(1, 2)  # (B, h, N, d_head)
        k = k.view(B, N, n_head, d_head).transpose(1, 2)  # (B, h, N, d_head)
        scores = q @ k.transpose(-1, -2) / d_head ** 0.5  # (B, h, N, N)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs.append(scores.softmax(-1))
    return torch.stack(probs)  # (layers, B, h, N, N)


# --- name map to / from transformers' BertForPreTraining (and its fine-tuning heads) ---

_BLOCK_MAP = {  # ours (under bert.blocks.{i}.) -> HF (under bert.encoder.layer.{i}.)
    "attn.proj": "attention.output.dense",
    "ln_1": "attention.output.LayerNorm",
    "mlp.fc": "intermediate.dense",
    "mlp.proj": "output.dense",
    "ln_2": "output.LayerNorm",
}
_TOP_MAP = {
    "bert.wte": "bert.embeddings.word_embeddings",
    "bert.wpe": "bert.embeddings.position_embeddings",
    "bert.wtt": "bert.embeddings.token_type_embeddings",
    "bert.ln_emb": "bert.embeddings.LayerNorm",
    "bert.pooler.dense": "bert.pooler.dense",
    "mlm.transform": "cls.predictions.transform.dense",
    "mlm.ln": "cls.predictions.transform.LayerNorm",
    "nsp": "cls.seq_relationship",
    "classifier": "classifier",
    "qa": "qa_outputs",
}


def to_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers' BertForPreTraining / BertForSequenceClassification / QA names.

    Splits `attn.qkv` into query/key/value; writes the tied decoder weight and the MLM bias under every
    name HF looks them up by. Keys of a bare BertModel (no `bert.` prefix) are accepted too.
    """
    if not any(k.startswith("bert.") for k in sd):
        sd = {f"bert.{k}": v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        module, _, leaf = key.rpartition(".")
        if module.startswith("bert.blocks."):
            i, sub = module[len("bert.blocks."):].split(".", 1)
            base = f"bert.encoder.layer.{i}."
            if sub == "attn.qkv":
                for name, part in zip(("query", "key", "value"), t.chunk(3, dim=0)):
                    out[f"{base}attention.self.{name}.{leaf}"] = part.clone()
            else:
                out[f"{base}{_BLOCK_MAP[sub]}.{leaf}"] = t
        elif key == "mlm.bias":
            out["cls.predictions.bias"] = t
            out["cls.predictions.decoder.bias"] = t
        elif module == "mlm.decoder":
            out["cls.predictions.decoder.weight"] = t
        elif module in _TOP_MAP:
            out[f"{_TOP_MAP[module]}.{leaf}"] = t
        else:
            raise KeyError(f"no transformers name for parameter {key!r}")
    if "cls.predictions.decoder.weight" not in out and "cls.predictions.bias" in out:
        out["cls.predictions.decoder.weight"] = out["bert.embeddings.word_embeddings.weight"]
    return out


def from_hf_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' BERT names -> ours (the inverse of `to_hf_state_dict`); HF buffers are skipped."""
    inverse_top = {v: k for k, v in _TOP_MAP.items()}
    inverse_block = {v: k for k, v in _BLOCK_MAP.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in hf.items():
        module, _, leaf = key.rpartition(".")
        if key.endswith(("position_ids", "token_type_ids")) or key == "cls.predictions.decoder.bias":
            continue
        if module.startswith("bert.encoder.layer."):
            i, sub = module[len("bert.encoder.layer."):].split(".", 1)
            if sub.startswith("attention.self."):
                qkv.setdefault((i, leaf), {})[sub.rsplit(".", 1)[1]] = t
            else:
                out[f"bert.blocks.{i}.{inverse_block[sub]}.{leaf}"] = t
        elif key == "cls.predictions.bias":
            out["mlm.bias"] = t
        elif module == "cls.predictions.decoder":
            out["mlm.decoder.weight"] = t
        elif module in inverse_top:
            out[f"{inverse_top[module]}.{leaf}"] = t
        else:
            raise KeyError(f"no mnemos name for transformers parameter {key!r}")
    for (i, leaf), parts in qkv.items():
        out[f"bert.blocks.{i}.attn.qkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out
