"""A `mnemos downstream slots` run directory: whether a rerun may resume it (the options its checkpoints were
trained with), the checkpoints, RUN/config.yaml and the results (RUN/results/slots_{dataset}_{task}.json / .md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
from pathlib import Path

import numpy as np
import torch

from evaluation.downstream import scenes as scenes_mod
from evaluation.downstream.slot_metrics import kmeans_fg_ari
from evaluation.downstream.slots_eval import EVAL_SEED
from evaluation.downstream.slots_model import PRESETS, build
from launcher.config import ConfigError

log = logging.getLogger("mnemos.slots")  # the command's logger: its file handler writes RUN/logs/slots.log

# What a run directory's checkpoints were trained with. The model's shape and computation and the stream of
# scenes (FIXED_OPTIONS) must stay: a rerun that changes one would load the weights into another model, or
# continue another run under this one's name, so it is refused (check_resumable). The optimisation recipe
# (RECIPE_OPTIONS) may change between sessions, as `mnemos train` lets optim and schedule fields change on a
# resume (say, a mask-entropy term switched on from a checkpoint): the session says so in its log. The rest
# may change freely: --steps (extend the run, or evaluate a checkpoint already past it), --seeds,
# --time-limit, --eval-*, --ckpt-every, --log-every, --no-baseline, and how it runs (--device, --threads,
# --prefetch, --compile, --bf16).
FIXED_OPTIONS = ("dataset", "task", "preset", "num_slots", "iters", "implicit_grad", "update_norm", "batch_size")
RECIPE_OPTIONS = ("lr", "warmup_steps", "decay_steps", "grad_clip", "mask_entropy", "mask_entropy_from")
RUN_OPTIONS = FIXED_OPTIONS + RECIPE_OPTIONS


# ---------------------------------------------------------------------------------- resuming a run
def run_options(args) -> dict:
    """The RUN_OPTIONS of `args` (parsed options, or a saved config as a Namespace), defaults resolved: the
    number of slots of the dataset, and the warmup of min(10000, steps // 10) steps."""
    opts = {k: getattr(args, k, None) for k in RUN_OPTIONS}
    if opts["num_slots"] is None and opts["dataset"] in scenes_mod.SPECS:
        opts["num_slots"] = scenes_mod.SPECS[opts["dataset"]].num_slots
    if opts["warmup_steps"] is None and getattr(args, "steps", None) is not None:
        opts["warmup_steps"] = default_warmup(args.steps)
    return opts


def default_warmup(steps: int) -> int:
    return min(10_000, max(steps // 10, 1))


def saved_options(run: Path, args) -> tuple[dict, str] | None:
    """What the checkpoints in `run` were trained with, and where that was read; None when it holds none.
    Each checkpoint records its options; for those of an older version, which did not, RUN/config.yaml - but
    that version rewrote it before it loaded a checkpoint, so it counts only where its options build a model
    that fits the checkpoint (and these options must build one too)."""
    ckpts = sorted((run / "checkpoints").glob("seed*/step*.pt"), key=lambda p: p.name, reverse=True)
    states = []
    for path in ckpts:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn file: load_latest skips it too
            continue
        if state.get("options"):
            return state["options"], str(path)
        states.append((path, state))
    if not states:
        return None
    path, state = states[0]
    if not _fits(args, state):
        raise ConfigError(f"checkpoint {path} does not fit the model these options build; rule: a run directory "
                          f"resumes only with the options its checkpoints were trained with - repeat them, or use "
                          f"another --out for a new run")
    import yaml
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or any(k not in cfg for k in ("dataset", "task", "preset")):
        return None
    saved = argparse.Namespace(**cfg)
    return (run_options(saved), str(run / "config.yaml")) if _fits(saved, state) else None


def _fits(args, state: dict) -> bool:
    """Whether the model `args` builds takes the checkpoint `state`'s weights."""
    try:
        build(args, scenes_mod.SPECS[args.dataset]).load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError):
        return False
    return True


def check_resumable(run: Path, args) -> str | None:
    """Rerunning a command resumes its run from the checkpoints in `run`: refuse, before anything is written,
    options that would train another model or another stream of scenes than the checkpoints were trained with
    (FIXED_OPTIONS). Returns a note of the recipe options that changed (RECIPE_OPTIONS), for the run's log,
    or None. A --warmup-steps left out takes the run's own, so that extending --steps keeps the schedule."""
    saved = saved_options(run, args)
    if saved is None:
        if args.warmup_steps is None:
            args.warmup_steps = default_warmup(args.steps)
        return None
    then, where = saved
    if args.warmup_steps is None and then.get("warmup_steps") is not None:
        args.warmup_steps = then["warmup_steps"]
    now = run_options(args)
    for key in FIXED_OPTIONS:
        if key in then and then[key] != now[key]:
            fix = f"leave out --{key.replace('_', '-')}" if then[key] is False else f"give {_flag(key, then[key])}"
            raise ConfigError(
                f"{_flag(key, now[key])} does not match the run in {run}, whose checkpoints were trained with "
                f"{_flag(key, then[key])} ({where}); rule: a run directory resumes only with the model and scenes "
                f"its checkpoints were trained with (the recipe, --steps, --seeds, --time-limit, --eval-*, "
                f"--ckpt-every, --log-every and the device options may change) - {fix}, or use another --out "
                f"for a new run")
    changed = [key for key in RECIPE_OPTIONS if key in then and then[key] != now[key]]
    if not changed:
        return None
    return (f"resuming {run} with another recipe than its checkpoints were trained with: "
            + ", ".join(f"{_flag(k, now[k])} (was {_flag(k, then[k])})" for k in changed))


def _flag(key: str, value) -> str:
    name = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return name if value else f"no {name}"
    return f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"


# ------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(ckpt_dir: Path, model, opt, step: int, keep: int = 2, **extra) -> Path:
    """`extra`: the run's options (RUN_OPTIONS), training seconds so far and the last training loss."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step{step:08d}.pt"
    tmp = ckpt_dir / f".{path.name}.tmp"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, **extra}, tmp)
    os.replace(tmp, path)  # atomic: a checkpoint is either complete or absent
    for old in sorted(ckpt_dir.glob("step*.pt"))[:-keep]:
        old.unlink()
    return path


def load_latest(ckpt_dir: Path, model, opt, device) -> int:
    """Load the newest checkpoint that reads back; returns its step (0 when there is none)."""
    return load_checkpoint(ckpt_dir, model, opt, device)["step"]


def load_checkpoint(ckpt_dir: Path, model, opt, device) -> dict:
    """Load the newest checkpoint that reads back into `model` and `opt`; returns its step, the training
    seconds before it and its last training loss (0, 0.0 and NaN when there is none, or an older checkpoint
    did not record them)."""
    for path in sorted(ckpt_dir.glob("step*.pt"), reverse=True):
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:  # a torn or foreign file: say so and try the previous one
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
            continue
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:  # check_resumable refuses this before anything is written
            first = str(err).splitlines()[-1].strip()
            raise ConfigError(f"checkpoint {path} does not fit the model these options build ({first}); rule: a "
                              f"run directory resumes only with the options its checkpoints were trained with - "
                              f"repeat them, or use another --out for a new run") from None
        opt.load_state_dict(state["optimizer"])
        return {"step": int(state["step"]), "train_seconds": float(state.get("train_seconds", 0.0)),
                "train_loss": float(state.get("train_loss", math.nan))}
    return {"step": 0, "train_seconds": 0.0, "train_loss": math.nan}


# ------------------------------------------------------------------------------------------- config
def write_config(path: Path, args, world: int, device) -> None:
    import yaml
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    cfg.update(run_options(args))  # defaults resolved: what check_resumable compares a rerun with
    cfg["world_size"] = world
    cfg["device"] = str(device)
    cfg["architecture"] = PRESETS[args.preset][args.dataset]
    _write_atomic(path, yaml.safe_dump(cfg, sort_keys=True))  # other ranks may be reading it


# ------------------------------------------------------------------------------------------ results
def summarise(args, results: list[dict], seeds: list[int]) -> dict:
    spec = scenes_mod.SPECS[args.dataset]
    keys = [k for k, v in results[0].items() if isinstance(v, float) and k not in ("final_train_loss",)]
    summary = {"dataset": args.dataset, "task": args.task, "steps": args.steps, "seeds": seeds,
               "preset": args.preset, "batch_size": args.batch_size, "num_slots": args.num_slots or spec.num_slots,
               "iters": args.iters, "eval_iters": args.eval_iters or args.iters,
               "implicit_grad": args.implicit_grad, "grad_clip": args.grad_clip, "eval_size": args.eval_size,
               "eval_seed": EVAL_SEED,
               "median": {k: statistics.median(r[k] for r in results) for k in keys}, "per_seed": results}
    if args.task == "discovery" and not args.no_baseline:
        ev = scenes_mod.render(args.dataset, args.eval_size, EVAL_SEED)
        k = args.num_slots or spec.num_slots
        summary["kmeans_baseline"] = {f: float(np.nanmean(kmeans_fg_ari(ev.images, ev.masks, k, f)))
                                      for f in ("rgb", "rgbxy")}
    return summary


def _finite(obj):
    """JSON has no NaN/inf: write them as null (AP at an infinite threshold is keyed "ap_inf")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # an earlier result stays whole until the new one is complete


def _option_text(args) -> str:
    """The non-paper training options that are on, for the results header."""
    parts = [f", update norm {args.update_norm}"] if args.update_norm != "mean" else []
    if args.mask_entropy:
        parts.append(f", mask entropy {args.mask_entropy:g} from step {args.mask_entropy_from}")
    return "".join(parts)


def _steps_text(target: int, per_seed: list[dict]) -> str:
    """How far training went: --steps, short of it (only --time-limit stops a session early), or past it (the
    checkpoint had more steps than this command's --steps, so it was evaluated and not trained)."""
    reached = [r["steps"] for r in per_seed]
    if all(n == target for n in reached):
        return f"{target} steps"
    short = [r for r in per_seed if r["steps"] < target]
    past = [r for r in per_seed if r["steps"] > target]
    done = [r for r in per_seed if r["steps"] == target]
    seeds = sum(map(bool, (short, past, done))) > 1  # name the seeds where they differ in this
    parts = []
    if short:
        parts.append(f"{'seed ' + '/'.join(str(r['seed']) for r in short) + ': ' if seeds else ''}"
                     f"{'/'.join(str(r['steps']) for r in short)} of {target} steps (stopped by --time-limit)")
    if past:
        parts.append(f"{'seed ' + '/'.join(str(r['seed']) for r in past) + ': ' if seeds else ''}already at step "
                     f"{'/'.join(str(r['steps']) for r in past)}, past --steps {target}: evaluated only")
    if done:
        parts.append(f"seed {'/'.join(str(r['seed']) for r in done)}: {target} steps")
    return "; ".join(parts)


def write_results(run: Path, args, summary: dict) -> list[Path]:
    stem = run / "results" / f"slots_{args.dataset}_{args.task.replace('-', '_')}"
    js = stem.with_suffix(".json")
    _write_atomic(js, json.dumps(_finite(summary), indent=2, default=str))
    lines = [f"# Slot Attention: {args.task} on {args.dataset}", "",
             f"{_steps_text(args.steps, summary['per_seed'])}, batch {args.batch_size}, preset {args.preset}, "
             f"seeds {summary['seeds']}, "
             f"{summary['num_slots']} slots, {args.iters} iterations"
             f"{' (gradient through the last only)' if args.implicit_grad else ''}"
             f"{f', grad-norm clip {args.grad_clip:g}' if args.grad_clip else ''}"
             f"{_option_text(args)}; evaluated with "
             f"{summary['eval_iters']} iterations on {args.eval_size} held-out "
             f"scenes (seed {EVAL_SEED}).", ""]
    metric_keys = list(summary["median"])
    lines += ["| seed | " + " | ".join(metric_keys) + " |", "|---" * (len(metric_keys) + 1) + "|"]
    for r in summary["per_seed"]:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r[k]:.4f}" for k in metric_keys) + " |")
    lines.append("| **median** | " + " | ".join(f"**{summary['median'][k]:.4f}**" for k in metric_keys) + " |")
    if "kmeans_baseline" in summary:
        lines += ["", "k-means-on-pixels baseline (FG-ARI, k = number of slots): " + ", ".join(
            f"{f}: {v:.4f}" for f, v in summary["kmeans_baseline"].items())]
    lines += ["", "## Inference-time flexibility (median over seeds)", ""]
    flex = [r["flexibility"] for r in summary["per_seed"]]
    fkeys = [k for k in flex[0][0] if k not in ("num_slots", "iters")]
    lines += ["| slots | iterations | " + " | ".join(fkeys) + " |", "|---" * (len(fkeys) + 2) + "|"]
    for j, row in enumerate(flex[0]):
        vals = [statistics.median(f[j][k] for f in flex) for k in fkeys]
        lines.append(f"| {row['num_slots']} | {row['iters']} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    pics = [r["picture"] for r in summary["per_seed"] if "picture" in r]
    if pics:
        lines += ["", "Pictures: " + ", ".join(pics)]
    md = stem.with_suffix(".md")
    _write_atomic(md, "\n".join(lines) + "\n")
    return [js, md]
