"""`mnemos train CONFIG [--set k=v ...] [--nproc N] [--launcher torchrun|deepspeed --hostfile FILE] [--dry-run]`:
validate, write RUN/config.yaml, run the ranks."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from launcher.config import ConfigError, RunConfig, load_config, note_unused_vocab


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (resumes from the newest valid checkpoint)")
    p.add_argument("config", help="YAML config file or a preset name from configs/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--nproc", type=int, default=None,
                   help="ranks to spawn on each host (default 1; with --launcher deepspeed: the hostfile's slots)")
    p.add_argument("--launcher", choices=["torchrun", "deepspeed"], default="torchrun",
                   help="torchrun (local ranks) or DeepSpeed's launcher (the hosts of --hostfile)")
    p.add_argument("--hostfile", default=None,
                   help="DeepSpeed hostfile: one 'HOSTNAME slots=N' line per host (# comments allowed)")
    p.add_argument("--master-addr", default=None,
                   help="DeepSpeed: address of the first host (default: its name, 127.0.0.1 for this machine)")
    p.add_argument("--master-port", type=int, default=None,
                   help="DeepSpeed: rendezvous port (default: a free port on this machine, else 29500)")
    p.add_argument("--dry-run", action="store_true",
                   help="make every check of the launch and print its command; start nothing")
    p.set_defaults(func=run)


def prepare_run(config: str | None, overrides: list[str], nproc: int, write: bool = True) -> tuple[RunConfig, Path]:
    """Resolve and validate the config for `nproc` ranks in all, then write RUN/config.yaml (atomically)."""
    cfg = load_config(config, overrides)
    cfg.check_cross_sections(nproc)
    check_local_device(cfg)
    check_resumable(cfg)
    check_no_job_uses(cfg.run_dir)
    note_unused_vocab(cfg)
    return cfg, write_run(cfg) if write else Path(cfg.run_dir) / "config.yaml"


def check_no_job_uses(run_dir: str) -> None:
    """A run directory that a submitted job (pending, running or requeued) trains in is refused, as `mnemos
    submit` refuses it: this run's config.yaml and checkpoints would be what that job resumes from. A command
    run inside that very job (its own allocation) is not refused."""
    from cluster.submit import check_run_dir_free
    check_run_dir_free(run_dir, this_job=os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"))



def check_local_device(cfg: RunConfig) -> None:
    """The ranks will run on this machine: refuse, before any starts (and before RUN/ is written), what its
    device cannot run (bf16 or a CUDA kernel without CUDA), with the message each rank would log."""
    from launcher.launch import _cuda_available
    cuda = cfg.device != "cpu" and _cuda_available()  # no GPU device node: no torch import, no CUDA
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("device='cuda' but no CUDA device is visible (rule: use device=cpu or auto)")
    cfg.check_device("cuda" if cuda else "cpu")


def check_resumable(cfg: RunConfig) -> None:
    """A run directory with checkpoints resumes from the newest: refuse, before any rank starts, a model of
    another shape or other training data (the sampler could not continue its order). The ranks check the
    same again against the checkpoint they load."""
    from launcher.config import SAMPLE_ORDER_FIELDS, check_same_architecture, check_same_data_files
    from parallel.manifest import list_checkpoints, read_manifest
    for ckpt in list_checkpoints(Path(cfg.run_dir) / "checkpoints"):
        try:
            manifest = read_manifest(ckpt)
        except (OSError, ValueError):
            continue  # no manifest yet: an unfinished save, which the ranks skip
        saved = manifest.get("config") or {}
        if "model" in saved:
            check_same_architecture(saved["model"], cfg.model, ckpt)
        now_data = cfg.data.model_dump(mode="json")
        for field in SAMPLE_ORDER_FIELDS if "data" in saved else ():
            if not _same(saved["data"].get(field), now_data.get(field)):
                raise ConfigError(f"data.{field}={now_data.get(field)!r} differs from the checkpoint {ckpt} (saved "
                                  f"{saved['data'].get(field)!r}); rule: a resumed run continues one sample order, "
                                  f"so data.train, data.weights, data.seq_len and data.seed stay — for other data use "
                                  f"a new run_dir, started from these weights by `mnemos ckpt import-run`")
        if "data_files" in manifest:
            check_same_data_files(manifest["data_files"], cfg.data, ckpt)
        return


def _same(saved, now) -> bool:
    """Equal, with shard prefixes compared as paths (runs/x and ./runs/x are one file)."""
    if isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        return all(_same(a, b) for a, b in zip(saved, now))
    if isinstance(saved, str) and isinstance(now, str):
        return os.path.normpath(saved) == os.path.normpath(now) or os.path.abspath(saved) == os.path.abspath(now)
    return saved == now


def write_run(cfg: RunConfig) -> Path:
    """The run directory's layout and RUN/config.yaml (atomically); returns the config's path."""
    run_dir = Path(cfg.run_dir)
    for sub in ("checkpoints", "tensorboard", "results", "logs"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    tmp = path.with_name(".config.yaml.tmp")
    tmp.write_text(cfg.to_yaml())
    os.replace(tmp, path)
    return path


def train(config: str | None, overrides: list[str], nproc: int | None = None, *, launcher: str = "torchrun",
          hostfile: str | None = None, master_addr: str | None = None, master_port: int | None = None,
          dry_run: bool = False) -> int:
    if launcher == "deepspeed":
        return train_deepspeed(config, overrides, nproc, hostfile, master_addr, master_port, dry_run)
    for option, value in (("--hostfile", hostfile), ("--master-addr", master_addr), ("--master-port", master_port)):
        if value is not None:
            raise ConfigError(f"{option} needs --launcher deepspeed (rule: torchrun runs local ranks only)")
    nproc = 1 if nproc is None else nproc
    if nproc < 1:
        raise ConfigError(f"--nproc={nproc} (rule: at least 1)")
    cfg, path = prepare_run(config, overrides, nproc, write=not dry_run)
    in_process = nproc == 1 and "RANK" not in os.environ
    if dry_run:
        from launcher.launch import torchrun_command
        cmd = [sys.executable, "-m", "launcher.worker", str(path)] if in_process else torchrun_command(path, nproc)
        print(shlex.join(cmd))
        return 0
    if in_process:
        from launcher.worker import main as worker_main
        return worker_main([str(path)])
    from launcher.launch import spawn_local
    return spawn_local(str(path), nproc=nproc, run_dir=cfg.run_dir)


def train_deepspeed(config: str | None, overrides: list[str], nproc: int | None, hostfile: str | None,
                    master_addr: str | None, master_port: int | None, dry_run: bool) -> int:
    """Check the hostfile and the config for hosts x ranks before anything starts, then run DeepSpeed's launcher."""
    from launcher.deepspeed_launch import (HostfileError, deepspeed_command, deepspeed_layout, require_pdsh,
                                          spawn_deepspeed)
    if hostfile is None:
        raise ConfigError("--launcher deepspeed needs --hostfile FILE (lines 'HOSTNAME slots=N')")
    cfg = load_config(config, overrides)
    try:
        layout = deepspeed_layout(hostfile, nproc, master_addr, gpus_here=_gpus_here(cfg))
        cfg.check_cross_sections(layout.world_size)
        if layout.local:  # other hosts' devices are theirs to check
            check_local_device(cfg)
        note_unused_vocab(cfg)
        path = Path(cfg.run_dir) / "config.yaml"
        cmd = deepspeed_command(path, layout, master_port, rank_log_dir=Path(cfg.run_dir) / "logs" / "ranks")
        # Also for --dry-run: the command is this machine's (its interpreter, its hostfile), and here it would
        # be refused; a dry run reports every check the real launch makes before anything starts.
        require_pdsh(layout)
        if dry_run:
            print(shlex.join(cmd))
            return 0
    except HostfileError as err:
        raise ConfigError(str(err)) from None
    write_run(cfg)
    return spawn_deepspeed(cmd, layout, cfg.run_dir)


def _gpus_here(cfg: RunConfig) -> int:
    """GPUs the ranks on this machine would use (0: a CPU run, where hostfile slots are just processes)."""
    if cfg.device == "cpu":
        return 0
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run(args) -> int:
    return train(args.config, args.overrides, args.nproc, launcher=args.launcher, hostfile=args.hostfile,
                 master_addr=args.master_addr, master_port=args.master_port, dry_run=args.dry_run)
