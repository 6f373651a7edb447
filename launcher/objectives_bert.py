"""BERT pretraining objective: masked LM + next sentence prediction (Devlin et al. 2018, Section 3.1).

The trainer drives it through this interface (the GPT objective's, plus `begin_step`):

    obj = BertObjective(cfg: RunConfig, topology: Topology, vocab: BertVocab | None = None,
                        bert: BertPretrainConfig | None = None)
    obj.train_dataset() -> PhasedBertDataset: __len__, __getitem__(i) -> sample dict (numpy), for
                           i in [0, len). Feed it the usual ShuffledSampler(len(ds), seed); a sample is a
                           pure function of (seed, seq_len, i), so resuming needs only the sampler state.
    obj.valid_dataset() -> the same over data.valid, or None.
    obj.begin_step(step: int) -> None
                           Call before drawing the samples of optimizer step `step` (0-based; also before
                           evaluating). Selects the sequence-length phase: bert.short_seq_len for the first
                           bert.short_seq_fraction of train.max_steps, data.seq_len after (BERT: 128 for
                           90% of the steps, then 512). A function of the step only: resuming across the
                           boundary is exact.
    obj.seq_len_at(step: int) -> int: the phase length (for token counting / FLOPs).
    obj.collate(samples: list[dict], device) -> dict of tensors:
        input_ids, token_type_ids, attention_mask (B, N) int64 (N = longest sample, <= phase length);
        masked_positions (B, P) int64, masked_labels (B, P) int64 (-100 = padding), P = max predictions
        of the phase; next_sentence_label (B,) int64 (0 IsNext, 1 NotNext).
    obj.loss(model, batch) -> (loss, metrics)
        model(input_ids, token_type_ids, attention_mask, masked_positions) -> (mlm logits (B, P, V/tp),
        nsp logits (B, 2)) (model.bert.BertForPreTraining, or a DeepSpeed engine around it).
        loss = mean MLM cross-entropy over the masked tokens + NSP cross-entropy (the paper's sum).
        metrics (python floats / ints): tokens (non-pad tokens in the micro-batch), batch_size,
        mlm_loss, nsp_loss, mlm_acc, nsp_acc, masked_tokens. Under TP the MLM loss is vocab-parallel
        (parallel.loss) and mlm_acc takes the argmax over the whole vocabulary (a TP all-gather).
    obj.state_dict() / obj.load_state_dict(state): the dataset fingerprints and the phase; loading
        refuses a different dataset.

Optimizer and schedule (the paper's, Section A.2), set in configs/bert-*.yaml: Adam lr 1e-4, beta2 0.999,
weight decay 0.01, warmup 10k steps then linear decay to 0. The schedule is token-based in the trainer;
the trainer counts data.seq_len tokens per sample, so token budgets are steps x global batch x seq_len.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from launcher.config import BertPretrainConfig, ConfigError, RunConfig, check_bert_weights
from parallel.loss import lm_cross_entropy
from parallel.topology import Topology

log = logging.getLogger(__name__)


class BertObjective:
    """Masked LM + next sentence prediction on sentence-pair samples; see the module docstring."""

    def __init__(self, cfg: RunConfig, topology: Topology, vocab=None, bert: BertPretrainConfig | None = None):
        from data.bert_samples import BertVocab

        self.cfg, self.topology = cfg, topology
        self.bert = bert or getattr(cfg, "bert", None) or BertPretrainConfig()
        if vocab is None:
            if cfg.data.tokenizer is None:
                raise ConfigError("data.tokenizer=None (rule: BERT training needs the sentencepiece model "
                                  "with [CLS]/[SEP]/[MASK] pieces that made the shards)")
            vocab = BertVocab.from_sentencepiece(cfg.data.tokenizer)
        elif not isinstance(vocab, BertVocab):
            vocab = BertVocab.from_tokenizer(vocab)
        if vocab.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                              f"{vocab.vocab_size} pieces (rule: the embedding must cover every id)")
        self.vocab = vocab
        long_len = cfg.data.seq_len
        self.phase_lens = [long_len] if self.bert.short_seq_len >= long_len or self.bert.short_seq_fraction == 0 \
            else [self.bert.short_seq_len, long_len]
        self.switch_step = (round(self.bert.short_seq_fraction * cfg.train.max_steps)
                            if len(self.phase_lens) == 2 else 0)
        self._train = self._valid = None
        self.phase = 0
        self._stepped = False  # has the trainer called begin_step?

    # ---- data --------------------------------------------------------------------------------------
    def _documents(self, prefixes: list[str]):
        from data.indexed import IndexedDataset
        docs = [IndexedDataset(p) for p in prefixes]
        return docs[0] if len(docs) == 1 else _Concat(docs)

    def _dataset(self, prefixes: list[str], seed: int, num_samples: int | None):
        from data.bert_samples import BertSentencePairDataset, PhasedBertDataset
        docs = self._documents(prefixes)
        b = self.bert
        make = lambda n, k: BertSentencePairDataset(  # noqa: E731
            docs, self.vocab, n, seed=seed, mask_prob=b.mask_prob, nsp_random_prob=b.nsp_random_prob,
            short_seq_prob=b.short_seq_prob, whole_word_masking=b.whole_word_masking, num_samples=k)
        first = make(self.phase_lens[0], None)
        # one virtual range for all phases: enough samples for the whole run, a whole number of passes
        # over the first phase's chunks (each pass re-pairs and re-masks: dynamic masking)
        n = first.n_chunks
        total = num_samples or n
        total = max(n, math.ceil(total / n) * n)
        phases = [make(length, total) for length in self.phase_lens]
        ds = PhasedBertDataset(phases)
        ds.set_phase(self.phase)
        return ds

    def train_dataset(self):
        check_bert_weights(self.cfg.data)  # also before launch; here for runs started from Python
        need = self.cfg.train.max_steps * self.cfg.train.global_batch_size
        self._train = self._dataset(self.cfg.data.train, self.cfg.data.seed, need)
        return self._train

    def valid_dataset(self):
        if not self.cfg.data.valid:
            return None
        self._valid = self._dataset(self.cfg.data.valid, self.cfg.data.seed + 1, None)
        return self._valid

    def seq_len_at(self, step: int) -> int:
        return self.phase_lens[self.phase_at(step)]

    def phase_at(self, step: int) -> int:
        return 0 if len(self.phase_lens) == 1 or step < self.switch_step else 1

    def begin_step(self, step: int) -> None:
        self._stepped = True
        phase = self.phase_at(step)
        if phase != self.phase:
            log.info("step %d: BERT sequence length %d -> %d", step, self.phase_lens[self.phase],
                     self.phase_lens[phase])
        self.phase = phase
        for ds in (self._train, self._valid):
            if ds is not None:
                ds.set_phase(phase)

    def state_dict(self) -> dict:
        return {"phase": self.phase, "train": self._train.state_dict() if self._train else None}

    def load_state_dict(self, state: dict) -> None:
        if self._train is not None and state.get("train") is not None:
            self._train.load_state_dict(state["train"])
        self.phase = int(state["phase"])
        for ds in (self._train, self._valid):
            if ds is not None:
                ds.set_phase(self.phase)

    # ---- batch and loss ----------------------------------------------------------------------------
    def collate(self, samples: list[dict], device) -> dict[str, torch.Tensor]:
        from data.bert_samples import collate
        if not self._stepped and len(self.phase_lens) == 2:
            log.warning("the trainer never called BertObjective.begin_step(step): every step uses the first "
                        "phase's sequence length %d, never data.seq_len=%d", self.phase_lens[0], self.phase_lens[1])
            self._stepped = True  # say it once
        ds = self._train or self._valid
        max_pred = ds.phases[self.phase].max_predictions if ds is not None else None
        arrays = collate(samples, self.vocab.pad_id, max_pred)
        return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        mlm_logits, nsp_logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                       batch["masked_positions"])  # (B, P, V / tp), (B, 2)
        labels = batch["masked_labels"]
        mlm_loss = lm_cross_entropy(mlm_logits, labels, self.topology)  # Section 3.1, Task #1
        nsp_loss = F.cross_entropy(nsp_logits.float(), batch["next_sentence_label"])  # Task #2
        with torch.no_grad():
            real = labels != -100
            n_masked = int(real.sum())
            pred = mlm_predictions(mlm_logits, self.topology)
            mlm_acc = float((pred == labels)[real].float().mean()) if n_masked else 0.0
            nsp_acc = float((nsp_logits.argmax(-1) == batch["next_sentence_label"]).float().mean())
        metrics = {"tokens": int(batch["attention_mask"].sum()), "batch_size": int(labels.size(0)),
                   "mlm_loss": float(mlm_loss.detach()), "nsp_loss": float(nsp_loss.detach()), "mlm_acc": mlm_acc,
                   "nsp_acc": nsp_acc, "masked_tokens": n_masked}
        return mlm_loss + nsp_loss, metrics


def mlm_predictions(logits: torch.Tensor, topology: Topology) -> torch.Tensor:
    """Predicted token ids (global vocabulary) from logits (..., V / tp) sharded over the TP group.

    Rank r holds the contiguous vocabulary slice [r V/tp, (r+1) V/tp) (parallel.layers.Shard); the
    winner is the best of the ranks' local maxima (ties go to the lowest id, as torch.argmax does).
    """
    mx, arg = logits.detach().float().max(-1)
    if topology.tp == 1:
        return arg
    import torch.distributed as dist
    arg = arg + topology.tp_rank * logits.size(-1)
    maxima = [torch.empty_like(mx) for _ in range(topology.tp)]
    args = [torch.empty_like(arg) for _ in range(topology.tp)]
    dist.all_gather(maxima, mx.contiguous(), group=topology.tp_group)
    dist.all_gather(args, arg.contiguous(), group=topology.tp_group)
    best = torch.stack(maxima).argmax(0)  # (...): the rank holding the maximum
    return torch.stack(args).gather(0, best[None])[0]


class _Concat:
    """Several shards read as one document list."""

    def __init__(self, parts):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.parts[k][i - int(self.offsets[k])]
