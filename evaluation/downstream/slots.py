"""`mnemos downstream slots`: Slot Attention object discovery and set prediction on rendered scenes.

    mnemos downstream slots --dataset tetrominoes|sprites --task discovery|set-prediction \
        --steps N --seeds 0,1,2 --out RUN

Data parallel with `--nproc N` (N local ranks started with torchrun; or under a torchrun of your own:
torch.distributed DDP, gloo on CPU, nccl on CUDA): every rank renders its own scenes (seed, rank, step)
and the global batch is split across ranks; rank 0 logs, checkpoints and evaluates. Each seed trains in
turn and resumes from its newest valid checkpoint.

Run directory:
  RUN/config.yaml                        resolved options
  RUN/checkpoints/seed{S}/step{N}.pt     model + optimiser + step (written to a temp name, then renamed)
  RUN/tensorboard/seed{S}/               scalars (loss, lr, eval metrics) and mask images
  RUN/results/slots_{dataset}_{task}.json / .md   per-seed metrics, medians, k-means baseline,
                                         inference-time flexibility grid (more slots / iterations)
  RUN/results/reconstructions_{dataset}_seed{S}.png   (discovery) inputs, reconstructions, per-slot masks
  RUN/logs/slots.log

Training follows the paper (App. E): Adam, lr 4e-4 with linear warmup and decay 0.5^(step / decay_steps),
T = 3 iterations, K = objects + 1 slots; `--preset paper` uses the paper's widths, `cpu` and `tiny` are
narrower variants that fit a CPU (smaller kernels, strided encoder, low-resolution broadcast); `pixel` is
`cpu`'s encoder with a per-pixel MLP decoder (1x1 convolutions on the full-resolution broadcast).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from evaluation.downstream import scenes as scenes_mod
from evaluation.downstream.slots_eval import (EVAL_SEED, add_mask_images, evaluate, first_scenes, flexibility,
                                              save_picture)
from evaluation.downstream.slots_model import PRESETS, batch_seed, build, compute_loss, training_batch
from evaluation.downstream.slots_run import (check_resumable, default_warmup, load_checkpoint, run_options,
                                             save_checkpoint, summarise, write_config, write_results)
from launcher.argtypes import CommandParser, comma_list, integer, number, output_dir
from launcher.config import ConfigError
from launcher.prefetch import StepPrefetcher
from model.slot_attention import UPDATE_NORMS

log = logging.getLogger("mnemos.slots")


# ----------------------------------------------------------------------------------------------- CLI
def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("slots", help="Slot Attention: object discovery / set prediction on rendered scenes",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(scenes_mod.SPECS), default="tetrominoes",
                   help="scene family, rendered on the fly")
    p.add_argument("--task", choices=["discovery", "set-prediction"], default="discovery",
                   help="unsupervised object discovery (autoencoder) or supervised set prediction")
    p.add_argument("--steps", type=integer(1), default=1000, help="optimiser steps per seed")
    p.add_argument("--seeds", type=comma_list(integer(0), distinct=True), default="0",
                   help="comma-separated training seeds, e.g. 0,1,2")
    p.add_argument("--out", type=output_dir, default="runs/slots", help="run directory (default runs/slots)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="architecture widths")
    p.add_argument("--batch-size", type=integer(1), default=64, help="global batch (split across ranks)")
    p.add_argument("--lr", type=number(0, low_open=True), default=4e-4, help="peak Adam learning rate (the paper's)")
    p.add_argument("--warmup-steps", type=integer(0), default=None, help="default: min(10000, steps // 10)")
    p.add_argument("--decay-steps", type=integer(1), default=100_000, help="lr halves every this many steps")
    p.add_argument("--num-slots", type=integer(1), default=None, help="default: max objects + 1")
    p.add_argument("--iters", type=integer(1), default=3, help="slot attention iterations T in training")
    p.add_argument("--eval-iters", type=integer(1), default=None,
                   help="iterations for the reported evaluation (default: --iters); the flexibility grid "
                        "reports 1x, 2x and 3x --iters regardless")
    p.add_argument("--implicit-grad", action="store_true",
                   help="backpropagate through the last slot-attention iteration only (Chang et al. 2022, "
                        "implicit differentiation); the slot initialisation is then not learnt")
    p.add_argument("--update-norm", choices=UPDATE_NORMS, default="mean",
                   help="how a slot aggregates its inputs: 'mean' (the paper's Eq. 2) or 'sum' (weighted sum times "
                        "slots / inputs, after Krimmel et al. 2024), which leaves slots without an object small")
    p.add_argument("--grad-clip", type=number(0), default=0.0, help="clip the gradient norm to this (0: off)")
    p.add_argument("--mask-entropy", type=number(0), default=0.0, metavar="WEIGHT",
                   help="discovery: add WEIGHT x the mean per-pixel entropy of the decoder masks to the loss, so "
                        "that each pixel is drawn by one slot rather than shared by copies of it (0: off, the "
                        "paper's loss). From the first step it drives all pixels into one slot; start it once "
                        "the slots have formed groups (--mask-entropy-from)")
    p.add_argument("--mask-entropy-from", type=integer(0), default=0, metavar="STEP",
                   help="the step from which --mask-entropy applies")
    p.add_argument("--eval-size", type=integer(1), default=256, help="held-out scenes for the final evaluation")
    p.add_argument("--eval-every", type=integer(1), default=1000, help="steps between quick evaluations (TensorBoard)")
    p.add_argument("--ckpt-every", type=integer(1), default=1000, help="steps between checkpoints")
    p.add_argument("--log-every", type=integer(1), default=50, help="steps between progress lines")
    p.add_argument("--time-limit", type=number(0), default=None, metavar="MINUTES",
                   help="per seed: stop training after this many minutes, checkpoint, and evaluate the model "
                        "reached; run the same command again to resume towards --steps")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (cuda when available), cpu or cuda")
    p.add_argument("--threads", type=integer(1), default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--nproc", type=integer(1), default=1,
                   help="data parallel over this many local ranks, started with torchrun (one GPU each with "
                        "CUDA); --batch-size is the global batch, split evenly over them")
    p.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                   help="render the next step's scenes in a background thread while this step computes (the "
                        "batches are the same either way; default: on with CUDA, off on CPU, where it measured "
                        "no faster, bench/slots_render.py)")
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile (inductor); a part that fails to compile runs eagerly, "
                        "with the error in the log")
    p.add_argument("--bf16", action="store_true",
                   help="run the forward pass under bfloat16 autocast (the loss and the optimiser stay fp32)")
    p.add_argument("--no-baseline", action="store_true", help="skip the k-means baseline")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    spec = scenes_mod.SPECS[args.dataset]
    if args.task == "set-prediction" and args.num_slots is not None and args.num_slots < spec.max_objects:
        raise SystemExit(f"mnemos downstream slots: --num-slots {args.num_slots} (rule: set prediction needs a slot "
                         f"for each of the up to {spec.max_objects} objects of {args.dataset})")
    run = Path(args.out)
    # before anything is written: RUN/config.yaml keeps describing its checkpoints
    recipe_change = check_resumable(run, args)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_ranks(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = DistContext.from_env(args.device)
    if args.batch_size % ctx.world:
        raise ConfigError(f"--batch-size {args.batch_size} over {ctx.world} ranks (rule: the global batch splits "
                          f"evenly over the ranks)")
    # Sharp masks drive softmax outputs below 1e-38, and a CPU computes on such denormals up to 10x slower:
    # late training steps ran 2.8x slower. The flag is per thread; it covers the main thread, which does all
    # the work with --threads 1. Reset on the way out, as the caller may be a test process.
    flush = ctx.device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        seeds = [int(s) for s in str(args.seeds).split(",") if s.strip() != ""]
        if ctx.rank == 0:
            for sub in ("checkpoints", "tensorboard", "results", "logs"):
                (run / sub).mkdir(parents=True, exist_ok=True)
            _add_file_log(run / "logs" / "slots.log")
            if recipe_change:  # in the run's own log, where a reader of its curves looks for it
                log.warning(recipe_change)
            write_config(run / "config.yaml", args, ctx.world, ctx.device)
        ctx.barrier()
        # with --compile, a graph that fails to compile runs eagerly: it costs speed, not the run
        with torch._dynamo.config.patch(suppress_errors=True) if args.compile else contextlib.nullcontext():
            results = [train_and_evaluate(args, seed, ctx) for seed in seeds]
        if ctx.rank == 0:
            summary = summarise(args, results, seeds)
            paths = write_results(run, args, summary)
            log.info("results: %s", ", ".join(str(p) for p in paths))
            log.info("tensorboard: %s", run / "tensorboard")
        return 0
    finally:
        if flush:
            torch.set_flush_denormal(False)
        ctx.close()


# ------------------------------------------------------------------------------------ data parallel
def launch_ranks(args: argparse.Namespace) -> int:
    """`--nproc N`: the same command in N local ranks under torchrun, once the options are checked here
    (nothing is spawned for a batch that does not split, or for more ranks than GPUs); torchrun's exit code."""
    if args.batch_size % args.nproc:
        raise ConfigError(f"--batch-size {args.batch_size} with --nproc {args.nproc} (rule: the global batch "
                          f"splits evenly over the ranks)")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and args.nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {args.nproc} with {torch.cuda.device_count()} GPU(s) (rule: one GPU per rank)")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           "-m", "evaluation.downstream.slots", *rank_argv(args)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads or 1))  # torchrun would set 1 and warn
    log.info("data parallel over %d ranks: %s", args.nproc, " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env)

    # Not launcher.launch.supervise_ranks: it hands a stop notice only to ranks that catch it (to save a
    # checkpoint), and these ranks catch nothing. torchrun passes the signal on and ends them.
    def forward(signum, _frame):
        proc.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # a terminal's Ctrl-C reached torchrun and the ranks too: wait for them
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rank_argv(args: argparse.Namespace) -> list[str]:
    """The options of `args` as a command line for the ranks (all but --nproc)."""
    slots_parser = register(CommandParser(prog="slots").add_subparsers())
    argv: list[str] = []
    for action in slots_parser._actions:
        if not action.option_strings or action.dest in ("help", "nproc"):
            continue
        value = getattr(args, action.dest)
        if isinstance(action, argparse.BooleanOptionalAction):
            if value is not None:
                argv.append(action.option_strings[0] if value else action.option_strings[1])
        elif action.nargs == 0:  # store_true
            if value:
                argv.append(action.option_strings[0])
        elif value is not None:
            argv += [action.option_strings[0], str(value)]
    return argv


class DistContext:
    """Rank/world/device of this process; initialises torch.distributed when launched by torchrun."""

    def __init__(self, rank: int, world: int, device: torch.device, initialised: bool):
        self.rank, self.world, self.device, self.initialised = rank, world, device, initialised

    @classmethod
    def from_env(cls, device: str) -> "DistContext":
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("mnemos downstream slots: --device cuda asked for, but CUDA is not available here")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        initialised = False
        if world > 1:
            import torch.distributed as dist
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if device.startswith("cuda"):
                torch.cuda.set_device(local)
                device = f"cuda:{local}"
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            initialised = True
        return cls(rank, world, torch.device(device), initialised)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.initialised:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def agree(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (rank 0's clock decides a time limit for all)."""
        if not self.initialised:
            return flag
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.initialised:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.initialised:
            import torch.distributed as dist
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ training
def train_and_evaluate(args, seed: int, ctx: DistContext) -> dict:
    spec = scenes_mod.SPECS[args.dataset]
    run = Path(args.out)
    torch.manual_seed(seed)
    model = build(args, spec).to(ctx.device)
    # on a GPU one fused kernel updates every parameter (a tiny model's step is bound by kernel launches)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, fused=ctx.device.type == "cuda")
    ckpt_dir = run / "checkpoints" / f"seed{seed}"
    resumed = load_checkpoint(ckpt_dir, model, opt, ctx.device)
    start = resumed["step"]
    ddp = ctx.wrap(model)
    if args.compile:
        torch._dynamo.reset()  # a fresh cache per seed: each seed's model would otherwise count as a recompile
        ddp = torch.compile(ddp, dynamic=False)  # one batch shape per run; never symbolic shapes
    writer = None
    if ctx.rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run / "tensorboard" / f"seed{seed}"))
    per_rank = args.batch_size // ctx.world
    if start:
        log.info("seed %d: resumed from step %d", seed, start)
    eval_scenes = scenes_mod.render(args.dataset, args.eval_size, EVAL_SEED) if ctx.rank == 0 else None
    make_batch = functools.partial(training_batch, args, spec, seed, ctx.rank, per_rank, ctx.device)
    use_prefetch = args.prefetch if args.prefetch is not None else ctx.device.type == "cuda"
    # scenes and slot noise are functions of (seed, rank, step), so a resumed run repeats the same stream
    stream = step_batches(make_batch, start, args.steps, ctx.device, use_prefetch)
    t0, last_t, last_step = time.time(), time.time(), start
    loss_val = resumed["train_loss"]  # an evaluation-only session reports the checkpoint's last loss
    done = start
    unread: list[tuple[int, torch.Tensor]] = []  # (step, loss) still on the device

    def read_losses() -> float:
        """The unread losses copied to the host in one go (one device sync per log line, not per step)."""
        values = torch.stack([loss for _, loss in unread]).tolist()
        if writer is not None:
            for (at, _), value in zip(unread, values):
                writer.add_scalar("train/loss", value, at)
        unread.clear()
        return values[-1]

    for step in range(start, args.steps):
        lr = lr_at(step, args)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = next(stream)
        gen = torch.Generator(device=ctx.device).manual_seed(batch_seed(seed, ctx.rank, step))
        # the slots' noise is drawn here, outside the (compiled) model: a generator inside breaks its graph
        noise = model.slot_attention.sample_noise(per_rank, generator=gen)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = compute_loss(ddp, args, batch, step=step, noise=noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        done = step + 1
        unread.append((done, loss.detach()))
        out_of_time = args.time_limit is not None and ctx.agree(time.time() - t0 > 60 * args.time_limit)
        checkpoint_now = ctx.rank == 0 and (done % args.ckpt_every == 0 or done == args.steps or out_of_time)
        if done % args.log_every == 0 or done == args.steps or checkpoint_now or out_of_time:
            loss_val = read_losses()
        if ctx.rank == 0:
            writer.add_scalar("train/lr", lr, done)
            if done % args.log_every == 0 or done == args.steps:
                now = time.time()
                rate = (done - last_step) / max(now - last_t, 1e-9)
                eta = (args.steps - done) / max(rate, 1e-9)
                log.info("seed %d step %d/%d loss %.5f lr %.2e %.2f step/s eta %s", seed, done, args.steps,
                         loss_val, lr, rate, _fmt_secs(eta))
                last_t, last_step = now, done
            if done % args.eval_every == 0 and done != args.steps:
                quick = evaluate(model, args, spec, first_scenes(eval_scenes, 64), ctx.device, seed)
                for key, v in quick.items():
                    writer.add_scalar(f"eval/{key}", v, done)
                log.info("seed %d step %d quick eval (64 scenes): %s", seed, done,
                         ", ".join(f"{k} {v:.4f}" for k, v in quick.items()))
                if args.task == "discovery":
                    add_mask_images(writer, model, eval_scenes, ctx.device, done, args.eval_iters)
        if checkpoint_now:
            save_checkpoint(ckpt_dir, model, opt, done, options=run_options(args), train_loss=loss_val,
                            train_seconds=resumed["train_seconds"] + time.time() - t0)
        if out_of_time:
            log.info("seed %d: --time-limit %g min reached at step %d of %d; the checkpoint is saved, the same "
                     "command resumes from it", seed, args.time_limit, done, args.steps)
            break
    stream.close()  # stops the prefetch thread when the time limit ended the loop early
    # train_seconds: all sessions of this seed's training (the checkpoint carries the earlier ones)
    result = {"seed": seed, "steps": done, "final_train_loss": loss_val,
              "train_seconds": round(resumed["train_seconds"] + time.time() - t0, 1)}
    if ctx.rank == 0:
        result.update(evaluate(model, args, spec, eval_scenes, ctx.device, seed, by_count=True))
        result["flexibility"] = flexibility(model, args, spec, eval_scenes, ctx.device, seed)
        if args.task == "discovery":
            add_mask_images(writer, model, eval_scenes, ctx.device, done, args.eval_iters)
            result["picture"] = str(save_picture(model, eval_scenes, ctx.device,
                                                 run / "results" / f"reconstructions_{args.dataset}_seed{seed}.png",
                                                 iters=args.eval_iters))
        for key, v in result.items():
            if isinstance(v, float):
                writer.add_scalar(f"final/{key}", v, done)
        writer.close()
        log.info("seed %d: %s", seed, {k: v for k, v in result.items() if k != "flexibility"})
    ctx.barrier()
    return result


def step_batches(make, start: int, stop: int, device, prefetch: bool):
    """`make(step)` for each step in [start, stop); with `prefetch`, step + 1 is made in a background thread
    while the caller computes on step."""
    if not prefetch:
        for step in range(start, stop):
            yield make(step)
        return
    ahead = StepPrefetcher(lambda step: [make(step)], device)
    try:
        if start < stop:
            ahead.submit(start, start)
        for step in range(start, stop):
            batch = ahead.take(step, step)[0]
            if step + 1 < stop:
                ahead.submit(step + 1, step + 1)
            yield batch
    finally:
        ahead.close()


def lr_at(step: int, args) -> float:
    warm = args.warmup_steps if args.warmup_steps is not None else default_warmup(args.steps)
    factor = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
    return args.lr * factor * 0.5 ** (step / args.decay_steps)


# --------------------------------------------------------------------------------------------- logs
def _fmt_secs(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _add_file_log(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)


if __name__ == "__main__":  # `torchrun -m evaluation.downstream.slots ...` (what `--nproc N` runs)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    _parser = CommandParser(prog="python -m evaluation.downstream.slots")
    register(_parser.add_subparsers(dest="task_name"))
    _args = _parser.parse_args(["slots", *sys.argv[1:]])
    try:
        sys.exit(_args.func(_args))
    except ConfigError as _err:  # one line and exit code 2, as `mnemos` reports it
        print(f"mnemos: {_err}", file=sys.stderr)
        sys.exit(2)
