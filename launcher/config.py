"""The one typed config tree of a training run.

YAML presets and `--set a.b=c` overrides resolve into `RunConfig`. Each section checks its own fields;
`RunConfig.check_cross_sections` checks the rules that span sections. Every failure names the field,
the value and the rule, and happens before any rank is spawned.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config value breaks a rule. The message names field, value and rule."""


# What a resumed run must keep: the model's shape, and what fixes the order of the training samples.
ARCH_FIELDS = ("arch", "n_layer", "d_model", "n_head", "d_ff", "n_ctx", "vocab_size", "type_vocab_size",
               "attn_pattern", "local_window")
SAMPLE_ORDER_FIELDS = ("train", "weights", "seq_len", "seed")


def data_files_fingerprint(data: "DataConfig") -> dict:
    """What the files behind the config's paths hold: the tokenizer's sha256 and each train shard's token
    count. A resumed run checks them: a tokenizer retrained into the same path, or shards tokenized again into
    the same directory, would otherwise be read on as if nothing had changed."""
    from data.indexed import IndexedDataset
    from data.tokenizer import file_sha256
    out: dict = {"train_tokens": [int(IndexedDataset(p).num_tokens) for p in data.train]}
    if data.tokenizer and os.path.isfile(data.tokenizer):
        out["tokenizer_sha256"] = file_sha256(data.tokenizer)
    return out


def check_same_data_files(saved: dict, data: "DataConfig", ckpt, now: dict | None = None) -> None:
    """Resuming from `ckpt` needs the files it trained on to hold what they held (see data_files_fingerprint)."""
    now = now or data_files_fingerprint(data)
    then_sha, now_sha = saved.get("tokenizer_sha256"), now.get("tokenizer_sha256")
    if then_sha and now_sha and then_sha != now_sha:
        raise ConfigError(f"data.tokenizer={data.tokenizer!r} is not the file the checkpoint {ckpt} trained with "
                          f"(sha256 {then_sha[:12]} then, {now_sha[:12]} now); rule: a resumed run reads the same "
                          f"token ids — restore that tokenizer, or start a new run_dir from these weights "
                          f"(`mnemos ckpt import-run`)")
    for i, (then, n) in enumerate(zip(saved.get("train_tokens") or [], now["train_tokens"])):
        if then != n:
            raise ConfigError(f"data.train[{i}]={data.train[i]!r} holds {n} tokens now, {then} when the checkpoint "
                              f"{ckpt} was saved; rule: a resumed run continues one sample order over unchanged "
                              f"shards — for other data use a new run_dir")


def check_same_architecture(saved_model: dict, model: "ModelConfig", ckpt) -> None:
    """Resuming from checkpoint `ckpt` (its saved model fields) needs the same shape."""
    now = model.model_dump(mode="json")
    for field in ARCH_FIELDS:
        if saved_model.get(field) != now.get(field):
            raise ConfigError(f"model.{field}={now.get(field)!r} differs from the checkpoint {ckpt} (saved "
                              f"{saved_model.get(field)!r}); rule: resuming needs the same architecture — use a "
                              f"new run_dir to start over")


class _Section(BaseModel):
    # Unknown keys are errors: a typo must never be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    arch: Literal["gpt", "bert"] = Field("gpt", description="Decoder (GPT-3) or encoder (BERT).")
    preset: str | None = Field(None, description="Name of the preset the shape came from, for the record.")
    n_layer: int = Field(2, gt=0, description="Number of transformer blocks.")
    d_model: int = Field(64, gt=0, description="Residual stream width.")
    n_head: int = Field(4, gt=0, description="Attention heads per block.")
    d_ff: int | None = Field(None, gt=0, description="MLP hidden width; None means 4 * d_model (GPT-3).")
    n_ctx: int = Field(128, gt=0, description="Maximum sequence length (learned positions).")
    vocab_size: int = Field(512, gt=0, description="Embedding rows; pad to a multiple of 128 for TP.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and residuals.")
    attn_pattern: Literal["dense", "alternating"] = Field(
        "dense", description="'alternating': odd layers use locally banded attention (GPT-3 / Sparse Transformer).")
    local_window: int = Field(256, gt=0, description="Band width in tokens of the local attention layers.")
    init_std: float = Field(0.02, gt=0, description="Std of normal init; residual projections get std/sqrt(2 n_layer).")
    type_vocab_size: int = Field(2, gt=0, description="BERT token-type (segment) embeddings.")
    layer_norm_eps: float = Field(1e-5, gt=0, description="LayerNorm epsilon.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"model.n_head={self.n_head} must divide model.d_model={self.d_model} "
                f"(rule: d_model % n_head == 0)")
        return self

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head


class DataConfig(_Section):
    tokenizer: str | None = Field(None, description="Path to the sentencepiece .model file.")
    blend: str | None = Field(None, description="A `mnemos data blend` output directory (or its blend.json); "
                              "fills data.train, data.weights, data.valid and (unless given) data.tokenizer, and "
                              "must match data.seq_len.")
    train: list[str] = Field(default_factory=list, description="Prefixes of .bin/.idx token shards to train on.")
    weights: list[float] | None = Field(None, description="Sampling weight per train prefix (blend); None = by size.")
    valid: list[str] = Field(default_factory=list, description="Prefixes of validation shards.")
    seq_len: int = Field(128, gt=0, description="Tokens per training sequence (packed, EOT-separated).")
    seed: int = Field(1234, description="Seed of the shuffled sampler.")

    @model_validator(mode="before")
    @classmethod
    def _from_blend(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("blend"):
            return data
        blend = read_blend(str(data["blend"]))
        data = dict(data)
        seq_len = data.get("seq_len", cls.model_fields["seq_len"].default)
        if seq_len != blend["seq_len"]:
            raise ValueError(f"data.seq_len={seq_len} but data.blend={data['blend']!r} was built for "
                             f"{blend['seq_len']} (rule: train with the blend's --seq-len)")
        for key in ("train", "weights", "valid"):
            given = data.get(key)
            if given not in (None, []) and given != blend[key]:  # a resumed run's config holds both, equal
                raise ValueError(f"data.{key} is given and so is data.blend={data['blend']!r}, which sets it "
                                 f"differently (rule: one of the two)")
            data[key] = blend[key]
        if data.get("tokenizer") is None and blend["tokenizer"]:  # a tokenizer given is checked against the shards
            data["tokenizer"] = blend["tokenizer"]
        return data

    @model_validator(mode="after")
    def _weights_match(self) -> "DataConfig":
        if self.weights is not None:
            if len(self.weights) != len(self.train):
                raise ValueError(f"data.weights has {len(self.weights)} entries but data.train has "
                                 f"{len(self.train)} (rule: one weight per train prefix)")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"data.weights={self.weights} must be >= 0 with a positive sum")
        return self


def check_bert_weights(data: "DataConfig") -> None:
    """BERT pairs sentences of the train prefixes read as one corpus, i.e. each prefix by its size; weights
    that say the same (a blend of one dataset) are fine, others would be ignored and are refused."""
    if data.weights is None:
        return
    from data.indexed import IndexedDataset
    tokens = [IndexedDataset(p).num_tokens for p in data.train]
    share = [t / max(1, sum(tokens)) for t in tokens]
    given = [w / sum(data.weights) for w in data.weights]
    if any(abs(a - b) > 1e-6 for a, b in zip(share, given)):
        raise ConfigError(f"data.weights={[round(w, 4) for w in data.weights]} but BERT reads data.train as one "
                          f"corpus, each prefix by its size ({[round(x, 4) for x in share]}) (rule: weights by size "
                          f"only, e.g. a blend of one dataset; or tokenize the datasets into one shard set)")


def read_blend(path: str) -> dict:
    """train / weights / valid prefixes and seq_len of a `mnemos data blend` output. Its prefixes name the
    blend directory as it was given to `blend -o`; from another working directory they are found inside
    the blend directory instead (BLEND/train/NAME)."""
    import json
    blend_json = path if path.endswith(".json") else os.path.join(path, "blend.json")
    if not os.path.isfile(blend_json):
        raise ValueError(f"data.blend={path!r}: no blend.json there (rule: a `mnemos data blend` output directory)")
    with open(blend_json) as f:
        summary = json.load(f)
    folder = os.path.dirname(blend_json)

    def locate(prefix: str) -> str:
        if os.path.exists(prefix + ".idx"):
            return prefix
        inside = os.path.join(folder, os.path.basename(os.path.dirname(prefix)), os.path.basename(prefix))
        if os.path.exists(inside + ".idx"):
            return inside
        raise ValueError(f"data.blend={path!r} names shard {prefix!r}, which is missing (rule: the blend's "
                         f"shards stay where `mnemos data blend` wrote them)")

    cfg = summary["config"]
    if not cfg["data.train"]:
        raise ValueError(f"data.blend={path!r} has no train samples: {summary['splits'].get('train')}")
    train = [locate(p) for p in cfg["data.train"]]
    from data.blend import tokenizer_of  # blends written before the tokenizer was recorded: their shards say
    tokenizer = cfg.get("data.tokenizer") or tokenizer_of(train[0])
    return {"train": train, "weights": cfg["data.weights"], "valid": [locate(p) for p in cfg["data.valid"]],
            "seq_len": summary["seq_len"], "tokenizer": tokenizer}


class OptimConfig(_Section):
    lr: float = Field(6e-4, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to this fraction of peak (GPT-3: 10%).")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="Adam beta2 (GPT-3: 0.95).")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay; not applied to biases/LayerNorm.")
    grad_clip: float = Field(1.0, ge=0, description="Global gradient-norm clip; 0 disables.")


class ScheduleConfig(_Section):
    warmup_tokens: int = Field(0, ge=0, description="Linear LR warmup length in tokens (GPT-3: 375M).")
    decay_tokens: int = Field(0, ge=0, description="Decay ends here, in tokens (GPT-3: 260B); 0 = constant.")
    decay_shape: Literal["cosine", "linear"] = Field(
        "cosine", description="GPT-3 decays by cosine; BERT linearly (to optim.min_lr_ratio x peak).")
    batch_ramp_tokens: int = Field(0, ge=0, description="Batch size ramps linearly to full over this many tokens.")
    batch_ramp_start_tokens: int = Field(32768, gt=0, description="Batch size in tokens at the start of the ramp.")


class TrainConfig(_Section):
    max_steps: int = Field(100, gt=0, description="Optimizer steps to train for.")
    global_batch_size: int = Field(8, gt=0, description="Sequences per optimizer step over all data-parallel ranks.")
    micro_batch_size: int = Field(4, gt=0, description="Sequences per rank per forward/backward.")
    eval_every_steps: int = Field(50, ge=0, description="Validation every N steps; 0 disables.")
    eval_batches: int = Field(8, gt=0, description="Validation batches of train.global_batch_size samples per evaluation (Megatron's --eval-iters): the first eval_batches x global_batch_size validation samples (all of them if fewer), whatever the parallel layout or micro batch size.")
    log_every_steps: int = Field(10, gt=0, description="Progress line every N steps.")


class ParallelConfig(_Section):
    tp: int = Field(1, gt=0, description="Tensor-parallel degree (Megatron style).")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage over the data-parallel group.")
    sequence_parallel: bool = Field(False, description="Shard LayerNorm/dropout regions along the sequence under TP.")
    activation_checkpointing: bool = Field(False, description="Recompute block activations in backward.")
    checkpoint_policy: Literal["full", "selective"] = Field("full", description="With activation_checkpointing: 'full' keeps each block's input only and re-runs the block in backward; 'selective' keeps the matmul and attention outputs and recomputes only the ops between them (LayerNorm, GELU, dropout, adds): less memory saved, no matmul repeated.")

    @model_validator(mode="after")
    def _policy_needs_checkpointing(self) -> "ParallelConfig":
        if self.checkpoint_policy != "full" and not self.activation_checkpointing:
            raise ValueError(f"parallel.checkpoint_policy={self.checkpoint_policy!r} with "
                             f"parallel.activation_checkpointing=False (rule: a policy needs checkpointing on; "
                             f"set parallel.activation_checkpointing=true)")
        return self


class PrecisionConfig(_Section):
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Compute dtype; master weights stay fp32.")


class CheckpointConfig(_Section):
    every_steps: int = Field(0, ge=0, description="Save every N steps; 0 saves only at the end.")
    keep_last: int = Field(2, gt=0, description="How many recent checkpoints to keep.")
    keep_every_steps: int = Field(0, ge=0, description="Also keep one permanently every M steps; 0 = none.")
    save_at_end: bool = Field(True, description="Save when training finishes.")
    async_finalize: bool = Field(False, description="Checksum, manifest and rename in a background thread so training resumes right after the shards are written.")


class LoggingConfig(_Section):
    tensorboard: bool = Field(True, description="Write TensorBoard scalars under RUN/tensorboard.")
    progress: Literal["line", "none"] = Field("line", description="Periodic progress line with rate and ETA.")


class PerfConfig(_Section):
    """Fast paths (issue #11). Each one is checked against the plain path by a test."""

    loss_chunk_tokens: int = Field(0, ge=0, description="GPT: compute the LM head and cross-entropy this many tokens at a time, so the (tokens x vocab) fp32 logits are never held whole (forward and backward); 0 = plain head + loss.")
    compile: bool = Field(False, description="torch.compile the model inside the DeepSpeed engine (engine.compile, inductor); the first steps pay the compile time.")
    async_metrics: bool | None = Field(None, description="Keep step metrics (loss, grad norm) on the device and read them once per train.log_every_steps instead of every step (no host-device sync for logging; the spike detector's history then lags by up to that many steps); None = on for CUDA, off on CPU.")
    band_kernel: Literal["dense", "flex"] = Field("dense", description="GPT's locally banded layers: 'dense' = SDPA with a (T, T) band mask; 'flex' = FlexAttention block masks that skip the tiles outside the band (CUDA for training: torch has no FlexAttention backward on CPU; needs model.dropout=0).")
    sdpa_backend: Literal["auto", "flash", "cudnn", "efficient", "math"] = Field("auto", description="GPT's dense causal attention: 'auto' lets torch pick the SDPA kernel; 'cudnn' (Hopper GPUs: cuDNN's fused attention), 'flash', 'efficient' or 'math' force one and fail if it cannot run. 'cudnn' and 'efficient' need CUDA.")
    prefetch: bool = Field(False, description="GPT: a background thread reads, collates and (on CUDA, on a side stream through page-locked memory) copies the next step's micro-batches while the current step computes; the batches are the same as without it.")
    loss_check: Literal["micro_batch", "off"] = Field("micro_batch", description="'micro_batch': all ranks agree on NaN/inf/spiking losses before each backward (one host-device sync per micro-batch); 'off': no check and no sync, a bad loss then reaches the optimizer.")

    @field_validator("loss_check", mode="before")
    @classmethod
    def _loss_check_from_yaml_bool(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` (also no/false) as False and `on` (yes/true) as True: the README's
        # `perf.loss_check: off` and `--set perf.loss_check=off` must mean 'off'.
        if isinstance(value, bool):
            return "micro_batch" if value else "off"
        return value


class BertPretrainConfig(_Section):
    """BERT pretraining data settings (a `bert:` section of the run config, when the tree has one)."""

    short_seq_len: int = Field(128, ge=8, description="Sequence length of the first phase (BERT: 128).")
    short_seq_fraction: float = Field(0.9, ge=0, le=1, description="Fraction of train.max_steps at short_seq_len (BERT: 0.9); the rest uses data.seq_len.")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="Fraction of tokens predicted by the masked LM (BERT: 15%).")
    nsp_random_prob: float = Field(0.5, ge=0, le=1, description="Probability that segment B comes from another document (BERT: 50%).")
    short_seq_prob: float = Field(0.1, ge=0, le=1, description="Probability a sample aims at a shorter random length (reference code: 10%).")
    whole_word_masking: bool = Field(False, description="Mask all pieces of a word together.")


class FaultsConfig(_Section):
    hang_minutes: float = Field(0.0, ge=0, description="Exit (for a scheduler restart) after this long without a finished step; 0 = off.")
    spike_zscore: float = Field(0.0, ge=0, description="A micro-batch loss this many std above the recent mean is a spike; 0 = only NaN/inf count.")
    rollback_after: int = Field(3, gt=0, description="After this many bad steps since the last checkpoint, roll back to it and skip the data seen since.")


class RunConfig(_Section):
    run_dir: str = Field("runs/default", description="Run directory: config.yaml, checkpoints/, tensorboard/, results/, logs/.")
    seed: int = Field(1234, description="Seed for weights, dropout and everything not seeded elsewhere.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to compute; auto = cuda when present.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    precision: PrecisionConfig = Field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    bert: BertPretrainConfig = Field(default_factory=BertPretrainConfig)
    perf: PerfConfig = Field(default_factory=PerfConfig)

    @model_validator(mode="after")
    def _perf_rules(self) -> "RunConfig":
        chunk = self.perf.loss_chunk_tokens
        if chunk and self.model.arch != "gpt":
            raise ValueError(f"perf.loss_chunk_tokens={chunk} needs model.arch='gpt', not model.arch="
                             f"{self.model.arch!r} (rule: the chunked loss replaces the GPT LM head)")
        if chunk and self.parallel.zero_stage == 3:
            raise ValueError(f"perf.loss_chunk_tokens={chunk} does not work with parallel.zero_stage=3 (rule: "
                             f"the chunked loss reads the LM-head weight after the head's forward, when ZeRO-3 "
                             f"has released it; use zero_stage <= 2 or loss_chunk_tokens=0)")
        if self.perf.band_kernel == "flex":
            if self.model.arch != "gpt":
                raise ValueError(f"perf.band_kernel='flex' needs model.arch='gpt', not {self.model.arch!r} "
                                 f"(rule: only GPT has locally banded layers)")
            if self.model.dropout > 0:
                raise ValueError(f"perf.band_kernel='flex' with model.dropout={self.model.dropout} (rule: "
                                 f"FlexAttention has no attention dropout; set model.dropout=0 or band_kernel='dense')")
            if self.device == "cpu":
                raise ValueError("perf.band_kernel='flex' with device='cpu' (rule: torch has no FlexAttention "
                                 "backward on CPU; train on CPU with band_kernel='dense')")
        if self.perf.sdpa_backend != "auto":
            if self.model.arch != "gpt":
                raise ValueError(f"perf.sdpa_backend={self.perf.sdpa_backend!r} needs model.arch='gpt', not "
                                 f"{self.model.arch!r} (rule: the switch routes GPT's causal attention)")
            if self.perf.sdpa_backend in ("cudnn", "efficient") and self.device == "cpu":
                raise ValueError(f"perf.sdpa_backend={self.perf.sdpa_backend!r} with device='cpu' (rule: that "
                                 f"kernel is CUDA's; on CPU use 'auto', 'flash' or 'math')")
        if self.perf.prefetch and self.model.arch != "gpt":
            raise ValueError(f"perf.prefetch=True needs model.arch='gpt', not {self.model.arch!r} (rule: BERT's "
                             f"samples change with the step's sequence-length phase, known only when it starts)")
        if self.perf.loss_check == "off" and self.faults.spike_zscore > 0:
            raise ValueError(f"perf.loss_check='off' leaves faults.spike_zscore={self.faults.spike_zscore} "
                             f"nothing to check (rule: set faults.spike_zscore=0 or perf.loss_check=micro_batch)")
        return self

    def unused_vocab_note(self) -> str | None:
        """A note when model.vocab_size is well past what data.tokenizer needs (a preset's 50304 rows with
        a 32k tokenizer): rows no id reaches still cost memory and the LM head's compute. Megatron and
        NeoX size the embedding from the tokenizer; here the config says it, so say what it costs."""
        if self.data.tokenizer is None or not os.path.exists(self.data.tokenizer):
            return None
        from data.tokenizer import Tokenizer
        tok = Tokenizer(self.data.tokenizer)
        enough = tok.padded_vocab_size()
        enough += -enough % self.parallel.tp
        unused = self.model.vocab_size - enough
        if unused <= 0:
            return None
        return (f"model.vocab_size={self.model.vocab_size} has {unused} embedding rows that no id of "
                f"data.tokenizer={self.data.tokenizer!r} ({tok.vocab_size} pieces) reaches: "
                f"{unused * self.model.d_model / 1e6:.1f}M parameters trained for nothing; "
                f"--set model.vocab_size={enough} fits the tokenizer")

    def check_device(self, device_type: str) -> None:
        """Rules that depend on where the ranks compute ('cuda' or 'cpu'). `mnemos train` checks them before
        it spawns local ranks (launcher.train_cli.check_local_device), each rank again on its device."""
        if device_type == "cuda":
            return
        if self.precision.dtype != "fp32":
            raise ConfigError(f"precision.dtype={self.precision.dtype!r} needs a CUDA GPU; this run is on "
                              f"{device_type} (rule: bf16/fp16 only where the hardware supports it; use fp32)")
        if self.perf.band_kernel == "flex":
            raise ConfigError(f"perf.band_kernel='flex' on {device_type} (rule: torch has no FlexAttention "
                              f"backward off CUDA; use band_kernel='dense')")
        if self.perf.sdpa_backend in ("cudnn", "efficient"):
            raise ConfigError(f"perf.sdpa_backend={self.perf.sdpa_backend!r} on {device_type} (rule: that kernel "
                              f"is CUDA's; use 'auto', 'flash' or 'math')")

    def check_cross_sections(self, world_size: int) -> None:
        """Rules that span sections; needs the number of ranks the run will use."""
        tp = self.parallel.tp
        if world_size % tp != 0:
            raise ConfigError(f"parallel.tp={tp} must divide the world size {world_size} (rule: world % tp == 0)")
        if self.model.n_head % tp != 0:
            raise ConfigError(f"parallel.tp={tp} must divide model.n_head={self.model.n_head} "
                              f"(rule: heads are split across TP ranks)")
        if self.model.vocab_size % tp != 0:
            raise ConfigError(f"parallel.tp={tp} must divide model.vocab_size={self.model.vocab_size} "
                              f"(rule: the vocabulary is split across TP ranks; pad it to a multiple of 128)")
        if self.model.ff_width % tp != 0:
            raise ConfigError(f"parallel.tp={tp} must divide the MLP width {self.model.ff_width}")
        dp = world_size // tp
        per_step = self.train.micro_batch_size * dp
        if self.train.global_batch_size % per_step != 0:
            raise ConfigError(
                f"train.global_batch_size={self.train.global_batch_size} must be a multiple of "
                f"train.micro_batch_size={self.train.micro_batch_size} x data-parallel ranks {dp} = {per_step} "
                f"(rule: global batch = micro batch x dp x gradient-accumulation steps)")
        if self.data.seq_len > self.model.n_ctx:
            raise ConfigError(f"data.seq_len={self.data.seq_len} exceeds model.n_ctx={self.model.n_ctx} "
                              f"(rule: sequences must fit the learned positions)")
        if not self.data.train:
            raise ConfigError("data.train=[] (rule: at least one token-shard prefix to train on)")
        for field, prefixes in (("data.train", self.data.train), ("data.valid", self.data.valid)):
            for p in prefixes:
                for ext in (".bin", ".idx"):
                    if not os.path.exists(p + ext):
                        hint = ""
                        if os.path.isdir(p):  # a `mnemos data tokenize` output: name its shards, or blend it
                            from data.tokenize import find_prefixes
                            found = find_prefixes([p])
                            hint = (f"; {p} is a directory of {len(found)} shard(s): list their prefixes "
                                    f"({found[0]}, ...) or give `data.blend` a `mnemos data blend` of it"
                                    if found else f"; {p} is a directory holding no shards")
                        raise ConfigError(f"{field} entry {p!r}: file {p + ext} does not exist "
                                          f"(rule: each prefix names an existing .bin/.idx pair{hint})")
        if self.data.tokenizer is None and self.model.arch == "gpt":
            raise ConfigError("data.tokenizer=None (rule: GPT training needs the sentencepiece model that made the "
                              "shards, for its end-of-text id)")
        if self.data.tokenizer is not None:
            if not os.path.exists(self.data.tokenizer):
                raise ConfigError(f"data.tokenizer={self.data.tokenizer!r} does not exist")
            from data.tokenizer import Tokenizer
            try:
                tok = Tokenizer(self.data.tokenizer)
            except (RuntimeError, OSError) as err:  # sentencepiece's own words for a file it cannot load
                raise ConfigError(f"data.tokenizer={self.data.tokenizer!r} is not a sentencepiece model: {err}") \
                    from None
            if tok.vocab_size > self.model.vocab_size:  # TP's vocab-parallel embedding would zero the rest
                raise ConfigError(f"model.vocab_size={self.model.vocab_size} is smaller than the "
                                  f"{tok.vocab_size} pieces of data.tokenizer={self.data.tokenizer!r} (rule: the "
                                  f"embedding covers every id; e.g. model.vocab_size={tok.padded_vocab_size()})")
            self._check_shards_tokenizer()
            if self.model.arch == "bert":
                check_bert_weights(self.data)  # the ranks would fail on it one by one, after the run dir exists
                from data.bert_samples import BertVocab
                try:
                    BertVocab.from_tokenizer(tok)
                except ValueError as err:
                    raise ConfigError(f"data.tokenizer={self.data.tokenizer!r} cannot make BERT samples: {err}") \
                        from None

    def _check_shards_tokenizer(self) -> None:
        """Shards made by another tokenizer of the same size would train on ids that name other pieces."""
        from data.blend import tokenizer_identity, tokenizer_of
        ours = tokenizer_identity(self.data.tokenizer)
        seen: dict[str, str | None] = {}  # folder -> tokenizer: shards of one tokenize output share it
        for field, prefixes in (("data.train", self.data.train), ("data.valid", self.data.valid)):
            for prefix in prefixes:
                folder = os.path.dirname(prefix)
                if folder not in seen:
                    seen[folder] = tokenizer_of(prefix)
                made_by = seen[folder]
                if made_by and tokenizer_identity(made_by) != ours:
                    raise ConfigError(f"{field} entry {prefix!r} was tokenized by {made_by}, not by data.tokenizer="
                                      f"{self.data.tokenizer!r} (rule: the shards and the run use one tokenizer)")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def _parse_scalar(text: str) -> Any:
    # YAML's scalar rules: 3e-4 -> float, true -> bool, [1,2] -> list, abc -> str.
    value = yaml.safe_load(text)
    return text if value is None and text not in ("null", "~", "") else value


def _one_line(err: yaml.YAMLError) -> str:
    """Where and what, on one line: 'line 2, column 1: expected ',' or ']' (while parsing a flow sequence)'."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or not problem:
        return " ".join(str(err).split())
    context = getattr(err, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override to a nested dict, in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = _parse_scalar(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}={raw!r}: not valid YAML: {_one_line(err)}") from None


def note_unused_vocab(cfg: RunConfig) -> None:
    """Log `cfg.unused_vocab_note()`, once, where a command prepares a run (not on every rank)."""
    note = cfg.unused_vocab_note()
    if note:
        logging.getLogger("mnemos.train").warning(note)


def _did_you_mean(loc: tuple) -> str:
    """' (did you mean max_steps?)' for a mistyped key, from the fields of the section it sits in."""
    import difflib
    model = RunConfig
    for name in loc[:-1]:
        field = model.model_fields.get(str(name))
        model = getattr(field, "annotation", None) if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ""
    key, names = str(loc[-1]), list(model.model_fields)
    close = [n for n in names if n.startswith(key)][:1] or difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))}?)" if close else ""


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(config)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"{field}: unknown key (value {e['input']!r}); rule: only fields of the schema are allowed"
                         + _did_you_mean(e["loc"]))
        elif field == "(config)" or msg.startswith(field):
            lines.append(msg)
        else:
            lines.append(f"{field}={e.get('input')!r}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def build_config(tree: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or a preset name from configs/), apply `a.b=c` overrides, validate."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists() and (PRESET_DIR / f"{path}.yaml").exists():
            p = PRESET_DIR / f"{path}.yaml"
        if not p.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p}: not valid YAML: {_one_line(err)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping")
    tree = copy.deepcopy(tree)
    for o in overrides or []:
        apply_override(tree, o)
    # A model preset name expands into its shape; explicit model.* keys still win.
    model_tree = tree.get("model", {})
    if isinstance(model_tree, dict) and model_tree.get("preset"):
        from model.presets import preset_shape
        try:
            shape = preset_shape(model_tree["preset"])
        except KeyError as e:
            raise ConfigError(str(e.args[0])) from None
        tree["model"] = {**shape, **model_tree}
    return build_config(tree)
