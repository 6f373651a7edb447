"""What a training step optimises, per architecture. The trainer only knows this interface:

    objective.train_dataset()          -> dataset with __len__ and __getitem__(i) -> sample
    objective.valid_dataset()          -> the same, or None
    objective.collate(samples, device) -> dict of tensors (one micro-batch)
    objective.loss(model, batch)       -> (scalar loss, {"tokens": n, other metrics as floats})
"""

from __future__ import annotations

import numpy as np
import torch

from launcher.config import ConfigError, RunConfig
from parallel.loss import lm_cross_entropy
from parallel.topology import Topology


class GPTObjective:
    """Next-token prediction on packed, EOT-separated sequences (GPT-3 App. B)."""

    def __init__(self, cfg: RunConfig, topology: Topology):
        from data.tokenizer import Tokenizer

        if cfg.data.tokenizer is None:
            raise ConfigError("data.tokenizer=None (rule: GPT training needs the sentencepiece model that made "
                              "the shards, for its end-of-text id)")
        self.cfg = cfg
        self.topology = topology
        self.eos_id = Tokenizer(cfg.data.tokenizer).eos_id
        self.vocab_size = cfg.model.vocab_size

    def _dataset(self, prefixes: list[str], seed: int):
        from data.gpt_dataset import PackedGPTDataset
        return PackedGPTDataset(prefixes, seq_len=self.cfg.data.seq_len, eos_id=self.eos_id,
                                weights=self.cfg.data.weights if prefixes is self.cfg.data.train else None,
                                seed=seed)

    def train_dataset(self):
        return self._dataset(self.cfg.data.train, self.cfg.data.seed)

    def valid_dataset(self):
        return self._dataset(self.cfg.data.valid, self.cfg.data.seed + 1) if self.cfg.data.valid else None

    def collate(self, samples: list[np.ndarray], device) -> dict[str, torch.Tensor]:
        rows = np.stack(samples)  # (B, T + 1)
        if rows.max(initial=0) >= self.vocab_size:  # shards from a larger tokenizer: fail, never train on zeros
            raise ConfigError(f"token id {int(rows.max())} in the training data, but model.vocab_size="
                              f"{self.vocab_size} (rule: the shards come from a tokenizer the embedding covers)")
        tokens = torch.from_numpy(rows.astype(np.int64))
        if torch.device(device).type == "cuda":
            tokens = tokens.pin_memory()  # page-locked, so the copy below does not block the host
        tokens = tokens.to(device, non_blocking=True)  # one transfer; input and target are views of it
        return {"input": tokens[:, :-1], "target": tokens[:, 1:]}

    def loss(self, model, batch) -> tuple[torch.Tensor, dict]:
        logits = model(batch["input"])  # (B, T, V / tp)
        loss = lm_cross_entropy(logits, batch["target"], self.topology)
        return loss, {"tokens": batch["target"].numel()}


def make_objective(cfg: RunConfig, topology: Topology):
    if cfg.model.arch == "gpt":
        return GPTObjective(cfg, topology)
    from launcher.objectives_bert import BertObjective
    return BertObjective(cfg, topology)
