"""The training loop. One instance per rank; `Trainer.run()` is a list of verbs.

Resumes by itself from the newest valid checkpoint under RUN/checkpoints. SIGTERM or SIGUSR1 (a
scheduler's preemption notice; Ctrl-C, which `mnemos train --nproc N` passes on as SIGTERM) makes every
rank finish its step, save a checkpoint and return.

Host-device syncs (issue #11): with `perf.async_metrics` (default on CUDA) a step's loss and grad norm
stay on the device and are read once per `train.log_every_steps` (and before evaluation, checkpoints,
bad steps and the end); control flags (stop request, bad-loss agreement) travel over a CPU (gloo) group,
so they never wait for the GPU. The one sync left per micro-batch is the bad-loss check, which must see
the loss before backward; `perf.loss_check=off` removes it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from launcher.config import (SAMPLE_ORDER_FIELDS, ConfigError, RunConfig, check_same_architecture,
                             check_same_data_files, data_files_fingerprint)
from launcher.faults import LossGuard, StopFlag, Watchdog
from launcher.observe import RunLogger, peak_memory_bytes, write_json_atomic
from launcher.schedule import global_batch_size, learning_rate

log = logging.getLogger("mnemos.train")

# Per-micro-batch counts an objective reports; everything else it reports is averaged and logged.
COUNT_METRICS = ("tokens", "batch_size", "masked_tokens")

PEAK_TFLOPS_BF16 = 989.0  # H100/H200 dense bf16 (datasheet, without sparsity): the MFU denominator

# Architecture fields that must match to resume (shapes of every tensor depend on them).


@dataclass
class TrainState:
    step: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0


def pick_device(cfg: RunConfig) -> torch.device:
    want = cfg.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' but no CUDA device is visible (rule: use device=cpu or auto)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def model_flops_per_token(cfg: RunConfig, n_params: int) -> float:
    """6 N + 12 L d s (PaLM / torchtitan accounting, no recompute)."""
    m = cfg.model
    return 6 * n_params + 12 * m.n_layer * m.d_model * cfg.data.seq_len


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun set up (or a world of one)."""
    if not dist.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            from launcher.deepspeed_launch import free_port
            os.environ["MASTER_PORT"] = str(free_port())
        import deepspeed
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                                   verbose=False)
    return dist.get_rank(), dist.get_world_size()


def _inject_fault(loss: torch.Tensor, window: int) -> torch.Tensor:
    """Fault injection for tests, keyed by the data window (the k-th global batch of the sample order,
    which is step k of an uninterrupted run), so a skipped window does not fault again:
    MNEMOS_FAULT_LOSS_AT_WINDOWS=5:nan,9:x100 makes rank 0's loss NaN in window 5 and 100x in window 9;
    MNEMOS_FAULT_HANG_AT_WINDOW=3 makes rank 0 stop making progress there;
    MNEMOS_FAULT_STEP_DELAY_S=0.1 slows every micro-step (a run long enough for a signal to land mid-way)."""
    if dist.get_rank() != 0:
        return loss
    delay = os.environ.get("MNEMOS_FAULT_STEP_DELAY_S")
    if delay:
        time.sleep(float(delay))
    hang = os.environ.get("MNEMOS_FAULT_HANG_AT_WINDOW")
    if hang and int(hang) == window:
        time.sleep(10**6)
    for item in filter(None, os.environ.get("MNEMOS_FAULT_LOSS_AT_WINDOWS", "").split(",")):
        at, what = item.split(":")
        if int(at) == window:
            return loss * (float("nan") if what == "nan" else float(what.lstrip("x")))
    return loss


class Trainer:
    def __init__(self, cfg: RunConfig, stop: StopFlag | None = None):
        """`stop`: the flag launcher.worker installed as it started (else one is installed by `run`)."""
        from parallel.build import build_model
        from parallel.checkpoint import CheckpointManager
        from parallel.engine import check_precision_supported, make_engine
        from parallel.topology import Topology
        from launcher.objectives import make_objective

        self.cfg = cfg
        self.device = pick_device(cfg)
        if self.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        cfg.check_device(self.device.type)
        check_precision_supported(cfg, self.device)
        self.rank, self.world = init_distributed(self.device)
        cfg.check_cross_sections(self.world)
        self.topology = Topology(self.world, self.rank, tp=cfg.parallel.tp)
        self.topology.init_groups()
        self.run_dir = Path(cfg.run_dir)
        self.is_main = self.rank == 0

        self.seed_everything()
        self.objective = make_objective(cfg, self.topology)
        self.train_data = self.objective.train_dataset()
        self.data_files = data_files_fingerprint(cfg.data)  # checked when a later run resumes from our checkpoints
        self.valid_data = self.objective.valid_dataset()
        from data.gpt_dataset import ShuffledSampler
        self.sampler = ShuffledSampler(len(self.train_data), seed=cfg.data.seed)

        model = build_model(cfg, self.topology, self.device)
        if cfg.perf.band_kernel == "flex":  # CUDA only: cfg.check_device said so above
            from model.gpt import use_band_kernel
            use_band_kernel(model, "flex")
        if cfg.perf.sdpa_backend != "auto":
            from model.gpt import use_sdpa_backend
            use_sdpa_backend(model, cfg.perf.sdpa_backend)
        if cfg.perf.loss_chunk_tokens:  # the head hands the loss its input; logits come chunk by chunk
            from parallel.loss import use_chunked_loss
            use_chunked_loss(model, cfg.perf.loss_chunk_tokens)
        if cfg.parallel.activation_checkpointing:
            from parallel.activation_checkpointing import apply_activation_checkpointing
            apply_activation_checkpointing(model, cfg.parallel.checkpoint_policy)
        self.n_params = self._count_full_params(model)
        self.engine = make_engine(model, cfg, self.topology, self.device)
        if cfg.perf.compile:
            # DeepSpeed's engine.compile() compiles the wrapped module in place (nn.Module.compile), so
            # parameter names, ZeRO hooks and checkpoints stay those of the eager model.
            self.engine.compile(backend="inductor")
            if self.is_main:
                log.info("perf.compile: model compiled with torch.compile (inductor) inside the DeepSpeed "
                         "engine (is_compiled=%s); the first steps include compile time", self.engine.is_compiled)
        # Control flags ride a CPU group: with NCCL, a flag on the GPU would cost a host-device sync.
        self.control_group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self.async_metrics = (cfg.perf.async_metrics if cfg.perf.async_metrics is not None
                              else self.device.type == "cuda")
        self.pending: list[dict] = []  # finished steps whose metrics are still on the device
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", self.rank, self.world,
                                      keep_last=cfg.checkpoint.keep_last,
                                      keep_every_steps=cfg.checkpoint.keep_every_steps,
                                      async_finalize=cfg.checkpoint.async_finalize)
        self.state = TrainState()
        # The step of the newest checkpoint this process saved or loaded (its manifest verified): a step
        # directory merely present may be a corrupt one that the resume skipped.
        self.checkpointed_step: int | None = None
        self.logger = RunLogger(self.run_dir, self.is_main, cfg.logging.tensorboard, cfg.train.max_steps,
                                progress=cfg.logging.progress == "line")
        self.stop = stop or StopFlag()
        self.guard = LossGuard(cfg.faults.spike_zscore)
        self.faults_seen: dict[str, int] = {}
        self.bad_since_checkpoint = 0
        self.history: dict[str, list] = {"train_loss": [], "valid": []}
        self.prefetcher = None
        if cfg.perf.prefetch:
            from launcher.prefetch import StepPrefetcher
            self.prefetcher = StepPrefetcher(self._collate_step, self.device)

    # ---- set-up helpers ---------------------------------------------------------------------------
    def plan_data_budget(self) -> dict:
        """How much of the training data max_steps reads (the batch ramp included): a run that repeats its
        data many times, or sees a sliver of it, should say so before it spends the steps."""
        cfg = self.cfg
        samples, tokens, step = 0, 0, 0
        while step < cfg.train.max_steps:
            batch = global_batch_size(cfg, tokens, self.topology.dp)
            if batch == cfg.train.global_batch_size:  # past the ramp: the rest in one go
                samples += batch * (cfg.train.max_steps - step)
                break
            samples, tokens, step = samples + batch, tokens + batch * cfg.data.seq_len, step + 1
        n = len(self.train_data)
        return {"train_samples": n, "samples_to_read": samples, "epochs": round(samples / max(1, n), 4)}

    def seed_everything(self) -> None:
        import random
        # Dropout masks differ across data-parallel ranks but agree inside a tensor-parallel group.
        seed = self.cfg.seed + 1000 * (self.rank // self.cfg.parallel.tp)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _count_full_params(self, model) -> int:
        n_local = sum(p.numel() for p in model.parameters())
        if self.topology.tp == 1:
            return n_local
        from parallel.build import model_class
        with torch.device("meta"):
            return sum(p.numel() for p in model_class(self.cfg.model.arch)(self.cfg.model).parameters())

    # ---- checkpoint state -------------------------------------------------------------------------
    def client_state(self) -> dict:
        state = {"trainer": asdict(self.state), "sampler": self.sampler.state_dict(),
                 "config": self.cfg.model_dump(mode="json"), "history": self.history,
                 "loss_guard": self.guard.state_dict(), "faults": self.faults_seen}
        if hasattr(self.objective, "state_dict"):
            state["objective"] = self.objective.state_dict()
        return state

    def rank_state(self) -> dict:
        from parallel.checkpoint import rng_state
        return {"rng": rng_state(), "rank": self.rank}

    def save(self) -> None:
        t0 = time.time()
        meta = {"tp": self.topology.tp, "dp": self.topology.dp, "zero_stage": self.cfg.parallel.zero_stage,
                "consumed_tokens": self.state.consumed_tokens, "arch": self.cfg.model.arch,
                "config": {"model": self.cfg.model.model_dump(mode="json"),
                           "data": self.cfg.data.model_dump(mode="json", include=set(SAMPLE_ORDER_FIELDS))},
                "data_files": self.data_files}
        path = self.ckpt.save(self.engine, self.state.step, self.client_state(), self.rank_state(), meta)
        self.checkpointed_step = self.state.step
        self.bad_since_checkpoint = 0
        if self.is_main:
            log.info("saved checkpoint %s in %.1fs", path, time.time() - t0)

    def maybe_resume(self) -> None:
        from parallel.checkpoint import set_rng_state
        from parallel.manifest import newest_valid, read_manifest
        ckpt = None
        if self.is_main:
            ckpt = newest_valid(self.ckpt.root, skipped=self.ckpt.corrupt)
        box = [str(ckpt) if ckpt else None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return
        ckpt = Path(box[0])
        manifest = read_manifest(ckpt)
        self.check_same_architecture(manifest, ckpt)
        if "data_files" in manifest:  # `mnemos train` checked before launch; a Slurm/k8s job's ranks check here
            check_same_data_files(manifest["data_files"], self.cfg.data, ckpt, self.data_files)
        saved = (manifest.get("tp"), manifest.get("dp"), manifest.get("zero_stage"))
        if saved == (self.topology.tp, self.topology.dp, self.cfg.parallel.zero_stage):
            client, rank_state = self.ckpt.load(self.engine, ckpt)
        else:  # another layout (or a universal checkpoint): merge and re-slice weights + optimizer state
            from parallel.reshard import load_resharded
            client, rank_state = load_resharded(self.engine, ckpt, self.topology, self.cfg), None
        self.check_same_architecture(client, ckpt)
        self.state = TrainState(**client["trainer"])
        self.sampler.load_state_dict(client["sampler"])
        if "objective" in client and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(client["objective"])
        self.history = client.get("history", self.history)
        self.guard.load_state_dict(client.get("loss_guard", {}))
        self.faults_seen = dict(client.get("faults", {}))
        self.checkpointed_step = self.state.step
        same_layout = manifest.get("world_size") == self.world and manifest.get("tp") == self.topology.tp
        if rank_state is not None and same_layout:
            set_rng_state(rank_state["rng"])
        if self.is_main:
            log.info("resumed from %s at step %d (%d tokens)", ckpt, self.state.step, self.state.consumed_tokens)

    def check_same_architecture(self, saved: dict, ckpt: Path) -> None:
        saved_model = (saved.get("config") or {}).get("model")
        if saved_model:
            check_same_architecture(saved_model, self.cfg.model, ckpt)

    # ---- the step ---------------------------------------------------------------------------------
    def micro_batches(self, global_batch: int):
        """This rank's micro-batches of the step, from the global sample order."""
        start = self.sampler.consumed
        indices = self.sampler.next_indices(global_batch)
        if self.prefetcher is None:
            yield from (self._collate(row) for row in self._my_rows(indices))  # one at a time, as they train
            return
        batches = self.prefetcher.take((start, global_batch), indices)
        # the next step's samples, known now: its batch size follows from the tokens after this step
        tokens_after = self.state.consumed_tokens + global_batch * self.cfg.data.seq_len
        following = global_batch_size(self.cfg, tokens_after, self.topology.dp)
        self.prefetcher.submit((self.sampler.consumed, following), self.sampler.peek_indices(following))
        yield from batches

    def _my_rows(self, indices):
        micro, dp = self.cfg.train.micro_batch_size, self.topology.dp
        grid = indices.reshape(len(indices) // (micro * dp), dp, micro)  # (accum, dp, micro)
        return grid[:, self.topology.dp_rank]

    def _collate(self, row) -> dict:
        return self.objective.collate([self.train_data[int(i)] for i in row], self.device)

    def _collate_step(self, indices) -> list[dict]:
        return [self._collate(row) for row in self._my_rows(indices)]

    def _dp_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.topology.dp > 1:
            dist.all_reduce(values, group=self.topology.dp_group)
            values /= self.topology.dp
        return values

    def train_step(self, global_batch: int) -> dict:
        from parallel.engine import set_learning_rate
        engine = self.engine
        if engine.train_batch_size() != global_batch:
            engine.set_train_batch_size(global_batch)
        # The LR of a step counts the tokens it trains on, so warmup starts above zero.
        lr = learning_rate(self.cfg, self.state.consumed_tokens + global_batch * self.cfg.data.seq_len)
        set_learning_rate(engine, lr)
        engine.train()
        if hasattr(self.objective, "begin_step"):  # e.g. BERT's sequence-length phases
            self.objective.begin_step(self.state.step)
        losses, extras, grad_norm = [], [], None
        n_micro = global_batch // (self.cfg.train.micro_batch_size * self.topology.dp)
        for m, batch in enumerate(self.micro_batches(global_batch)):
            # The step ends at its last micro-batch. DeepSpeed would count micro-steps since the start of the
            # process modulo the current accumulation: while GPT-3's batch ramp changes that number, its
            # boundaries would drift into the middle of a step (and differ after a resume).
            engine.set_gradient_accumulation_boundary(m == n_micro - 1)
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.cfg.precision.dtype == "bf16"):
                loss, metrics = self.objective.loss(engine, batch)
            loss = _inject_fault(loss, self.sampler.consumed // global_batch)
            reason = self._agreed_bad_loss(loss)
            if reason:
                # Nothing of a bad first micro-batch reached the gradients: skip the whole step. Later
                # micro-batches already accumulated: only a rollback undoes that.
                return {"bad": reason, "accumulated": m > 0, "batch_size": global_batch}
            engine.backward(loss)
            if engine.is_gradient_accumulation_boundary() and self.cfg.parallel.zero_stage == 0:
                grad_norm = self._grad_norm_before_clipping()
            engine.step()
            losses.append(loss.detach().float())
            extras.append([float(v) for k, v in sorted(metrics.items()) if k not in COUNT_METRICS])
        names = [k for k in sorted(metrics) if k not in COUNT_METRICS]
        means = torch.stack(losses).mean().reshape(1)
        if names:  # objectives that report more (BERT) hand in Python floats
            means = torch.cat([means, torch.tensor(extras, dtype=torch.float32, device=self.device).mean(0)])
        means = self._dp_mean(means)  # (1 + len(names),) on the device; read in flush_metrics
        if grad_norm is None:  # ZeRO stages record the norm they clipped with
            grad_norm = engine.get_global_grad_norm()
        self.state.step += 1
        self.state.consumed_samples += global_batch
        self.state.consumed_tokens += global_batch * self.cfg.data.seq_len
        return {"means": means, "names": names, "lr": lr, "grad_norm": grad_norm, "batch_size": global_batch,
                "step": self.state.step, "consumed_tokens": self.state.consumed_tokens}

    def _agreed_bad_loss(self, loss: torch.Tensor) -> str | None:
        """Every rank learns whether any rank's micro-batch loss is bad (before any backward)."""
        if self.cfg.perf.loss_check == "off":
            return None
        reason = self.guard.reason(float(loss.detach()))  # the step's one deliberate host-device sync
        code = torch.tensor([0.0 if reason is None else (1.0 if reason == "loss_spike" else 2.0)])
        dist.all_reduce(code, op=dist.ReduceOp.MAX, group=self.control_group)
        return {0.0: None, 1.0: "loss_spike", 2.0: "non_finite_loss"}[code.item()]

    def handle_bad_step(self, result: dict) -> None:
        """Skip the step (its data is not seen again); roll back after repeated events."""
        self.faults_seen[result["bad"]] = self.faults_seen.get(result["bad"], 0) + 1
        self.bad_since_checkpoint += 1
        self.logger.event(self.state.step + 1, result["bad"], skipped_samples=result["batch_size"],
                          counts=dict(self.faults_seen))
        self.logger.scalars(self.state.step + 1, dict(self.faults_seen), prefix="faults")
        if result["accumulated"] or self.bad_since_checkpoint >= self.cfg.faults.rollback_after:
            self.rollback()

    def rollback(self) -> None:
        """Reload the newest valid checkpoint, keep the data position (skipping the window since)."""
        from parallel.manifest import newest_valid
        self.ckpt.wait()
        position = self.sampler.state_dict()
        box = [str(newest_valid(self.ckpt.root, skipped=self.ckpt.corrupt)) if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        if box[0] in (None, "None"):
            raise RuntimeError("repeated bad losses and no checkpoint to roll back to; stopping "
                               "(lower optim.lr or check the data)")
        client, _ = self.ckpt.load(self.engine, Path(box[0]))
        skipped = position["consumed_samples"] - client["sampler"]["consumed_samples"]
        self.state = TrainState(**client["trainer"])
        self.checkpointed_step = self.state.step
        self.sampler.load_state_dict(position)
        self.bad_since_checkpoint = 0
        self.faults_seen["rollbacks"] = self.faults_seen.get("rollbacks", 0) + 1
        self.logger.event(self.state.step, "rollback", checkpoint=box[0], skipped_samples=skipped)
        self.logger.scalars(self.state.step, dict(self.faults_seen), prefix="faults")

    @torch.no_grad()
    def _grad_norm_before_clipping(self) -> torch.Tensor:
        """Global L2 norm of the reduced gradients (DeepSpeed does not record it without ZeRO), as a
        float64 tensor on the device: summed there, read with the other metrics.

        TP-sharded parameters contribute their shard on every TP rank; replicated ones count once."""
        sharded = torch.zeros(1, dtype=torch.float64, device=self.device)
        replicated = torch.zeros(1, dtype=torch.float64, device=self.device)
        for p in self.engine.module.parameters():
            if p.grad is not None:
                sq = p.grad.detach().double().pow(2).sum()
                if getattr(p, "tensor_model_parallel", False):
                    sharded += sq
                else:
                    replicated += sq
        if self.topology.tp > 1:
            dist.all_reduce(sharded, group=self.topology.tp_group)
        return (sharded + replicated).sqrt()[0]

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        if self.valid_data is None or len(self.valid_data) == 0:
            return None
        self.engine.eval()
        if hasattr(self.objective, "begin_step"):
            self.objective.begin_step(max(0, self.state.step - 1))
        # The validation set is the first eval_batches x global_batch_size samples, whatever the layout: the
        # same weights give the same loss at any dp, tp or micro batch size. Its micro-batches, numbered in
        # sample order, go round-robin to the data-parallel ranks; every rank runs as many forwards (ZeRO-3
        # gathers parameters in each), a rank past the end one that counts for nothing.
        micro, dp = self.cfg.train.micro_batch_size, self.topology.dp
        n = min(len(self.valid_data), self.cfg.train.eval_batches * self.cfg.train.global_batch_size)
        rounds = math.ceil(math.ceil(n / micro) / dp)
        # Token-weighted sums of the loss and of every metric the objective reports (BERT: MLM/NSP accuracy).
        names: list[str] = []
        totals = None
        for j in range(rounds):
            start = (j * dp + self.topology.dp_rank) * micro
            rows = range(start, min(start + micro, n)) if start < n else range(min(micro, n))
            batch = self.objective.collate([self.valid_data[i] for i in rows], self.device)
            loss, metrics = self.objective.loss(self.engine, batch)
            names = [k for k in sorted(metrics) if k not in COUNT_METRICS]
            w = float(metrics["tokens"])
            row = torch.tensor([w, loss.item() * w] + [float(metrics[k]) * w for k in names], dtype=torch.float64,
                               device=self.device)  # NCCL reduces device tensors only
            if start >= n:
                row.zero_()
            totals = row if totals is None else totals + row
        if self.topology.dp > 1:
            dist.all_reduce(totals, group=self.topology.dp_group)
        loss = (totals[1] / totals[0]).item()
        values = {"loss": loss, **{k: (totals[2 + i] / totals[0]).item() for i, k in enumerate(names)}}
        if self.cfg.model.arch == "gpt":  # perplexity is a language-model quantity
            values["perplexity"] = math.exp(min(loss, 50.0))
        result = {"step": self.state.step, **values}
        self.history["valid"].append(result)
        self.logger.scalars(self.state.step, values, prefix="valid")
        if self.is_main:
            log.info("validation at step %d: %s", self.state.step,
                     ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        return result

    def stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self.stop.requested else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control_group)
        return bool(flag.item())

    def record_step(self, result: dict, started: float) -> None:
        """Queue a finished step's metrics; read them now, or at the log interval when asynchronous."""
        self.pending.append(dict(result, started=started, seconds=time.time() - started))
        step = result["step"]
        at_log = step % self.cfg.train.log_every_steps == 0 or step == self.cfg.train.max_steps
        if not self.async_metrics or at_log:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Read the queued steps' device metrics in one transfer, then log them in order."""
        if not self.pending:
            return
        # float64 holds every float32 mean and norm exactly: the logged values are those of a per-step read
        rows = [torch.cat([r["means"].double().reshape(-1),
                           torch.as_tensor(-1.0 if r["grad_norm"] is None else r["grad_norm"],
                                           dtype=torch.float64, device=self.device).reshape(1)])
                for r in self.pending]
        values = torch.stack(rows).cpu().tolist()  # the interval's one host-device sync
        # On the GPU a step's own wall time is only its launch time; the interval's time is real.
        interval = time.time() - self.pending[0]["started"]
        for r, row in zip(self.pending, values):
            seconds = interval / len(self.pending) if self.async_metrics else r["seconds"]
            norm = None if r["grad_norm"] is None else row[-1]
            self.guard.record(row[0])
            self.log_step({"loss": row[0], "lr": r["lr"], "grad_norm": norm, "batch_size": r["batch_size"],
                           **dict(zip(r["names"], row[1:-1]))}, seconds, r["step"], r["consumed_tokens"])
        self.pending = []

    def log_step(self, metrics: dict, seconds: float, step: int, consumed_tokens: int) -> None:
        tokens = metrics["batch_size"] * self.cfg.data.seq_len
        tps = tokens / max(seconds, 1e-9)
        metrics = dict(metrics, tokens_per_s=tps, consumed_tokens=consumed_tokens,
                       memory_gb=peak_memory_bytes(self.device) / 2**30)
        if self.device.type == "cuda":
            flops = model_flops_per_token(self.cfg, self.n_params) * tps
            metrics["mfu"] = flops / (PEAK_TFLOPS_BF16 * 1e12 * self.world)
        self.history["train_loss"].append([step, metrics["loss"]])
        self.logger.scalars(step, metrics)
        if step % self.cfg.train.log_every_steps == 0 or step == self.cfg.train.max_steps:
            self.logger.progress_line(step, {"loss": metrics["loss"], "lr": metrics["lr"], "tok/s": tps})

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self) -> str:
        """Train to max_steps. Returns 'finished' or 'preempted'."""
        self.stop.install()
        self.maybe_resume()
        cfg = self.cfg
        every_eval, every_save = cfg.train.eval_every_steps, cfg.checkpoint.every_steps
        self.data_budget = self.plan_data_budget()
        if self.state.step == 0:
            if self.is_main:
                b = self.data_budget
                log.info("train data: %d samples of %d tokens; %d steps read %d samples, %.2f epoch(s)%s",
                         b["train_samples"], cfg.data.seq_len, cfg.train.max_steps, b["samples_to_read"],
                         b["epochs"], " (the data repeats)" if b["epochs"] > 1 else "")
                if every_eval and (self.valid_data is None or len(self.valid_data) == 0):
                    why = ("data.valid is empty" if not cfg.data.valid else
                           f"data.valid holds no sample of {cfg.data.seq_len + 1} tokens")
                    log.warning("no validation: %s, so train.eval_every_steps=%d measures nothing (a blend's "
                                "--split gives validation documents)", why, every_eval)
            if every_eval:
                self.evaluate()
        self.logger.start(self.state.step)
        status = "finished"
        watchdog = Watchdog(cfg.faults.hang_minutes * 60, self.run_dir / "logs" / f"hang_rank{self.rank}.txt").start()
        while self.state.step < cfg.train.max_steps:
            t0 = time.time()
            metrics = self.train_step(global_batch_size(cfg, self.state.consumed_tokens, self.topology.dp))
            watchdog.beat()
            if "bad" in metrics:
                self.flush_metrics()
                self.handle_bad_step(metrics)
                continue
            self.record_step(metrics, t0)
            step = self.state.step
            if every_eval and step % every_eval == 0:
                self.flush_metrics()
                self.evaluate()
            if self.stop_requested():
                status = "preempted"
                self.flush_metrics()
                self.logger.event(step, "stop_signal", signal=self.stop.signal_name or "peer")
                self.save()
                break
            if every_save and step % every_save == 0 and step < cfg.train.max_steps:
                self.flush_metrics()
                self.save()
        watchdog.stop()
        self.flush_metrics()
        if status == "finished":
            if every_eval and self.state.step % every_eval != 0:
                self.evaluate()
            # Not when this step's checkpoint was just saved or resumed from. A directory of this step that
            # the resume skipped (corrupt, partial) does not count: the save replaces it.
            if cfg.checkpoint.save_at_end and self.checkpointed_step != self.state.step:
                self.save()
        self.ckpt.wait()  # an asynchronous finalize must complete before the run reports itself done
        self.write_summary(status)
        return status

    def write_summary(self, status: str) -> None:
        if not self.is_main:
            return
        # which signal stopped a preempted run: the Slurm script requeues after SIGUSR1, not after SIGTERM
        stop_signal = (self.stop.signal_name or None) if status == "preempted" else None
        summary = {"status": status, "stop_signal": stop_signal, **asdict(self.state), "parameters": self.n_params,
                   "world_size": self.world, "tp": self.topology.tp, "zero_stage": self.cfg.parallel.zero_stage,
                   "final_train_loss": self.history["train_loss"][-1][1] if self.history["train_loss"] else None,
                   "validation": self.history["valid"], "data": getattr(self, "data_budget", None)}
        if self.prefetcher is not None:  # steps that trained on prefetched batches / collated in the step
            summary["prefetch"] = {"hits": self.prefetcher.hits, "misses": self.prefetcher.misses}
        write_json_atomic(self.run_dir / "results" / "train_summary.json", summary)

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
            if self.is_main:
                log.info("perf.prefetch: %d steps used prefetched batches, %d collated them in step "
                         "(the first step, and steps after a resume, rollback or skipped data)",
                         self.prefetcher.hits, self.prefetcher.misses)
        self.logger.close()
