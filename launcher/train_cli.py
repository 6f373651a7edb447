"""`mnemos train CONFIG [--set k=v ...] [--nproc N]`: validate, write RUN/config.yaml, run the ranks."""

from __future__ import annotations

import os
from pathlib import Path

from launcher.config import RunConfig, load_config


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (resumes from the newest valid checkpoint)")
    p.add_argument("config", help="YAML config file or a preset name from configs/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--nproc", type=int, default=1, help="local ranks to spawn (torchrun); default 1")
    p.set_defaults(func=run)


def prepare_run(config: str | None, overrides: list[str], nproc: int) -> tuple[RunConfig, Path]:
    """Resolve and validate the config for `nproc` ranks, then write RUN/config.yaml (atomically)."""
    cfg = load_config(config, overrides)
    cfg.check_cross_sections(nproc)
    run_dir = Path(cfg.run_dir)
    for sub in ("checkpoints", "tensorboard", "results", "logs"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    tmp = path.with_name(".config.yaml.tmp")
    tmp.write_text(cfg.to_yaml())
    os.replace(tmp, path)
    return cfg, path


def train(config: str | None, overrides: list[str], nproc: int = 1) -> int:
    from launcher.config import ConfigError
    if nproc < 1:
        raise ConfigError(f"--nproc={nproc} (rule: at least 1)")
    cfg, path = prepare_run(config, overrides, nproc)
    if nproc == 1 and "RANK" not in os.environ:
        from launcher.worker import main as worker_main
        return worker_main([str(path)])
    from launcher.launch import spawn_local
    return spawn_local(str(path), nproc=nproc, run_dir=cfg.run_dir)


def run(args) -> int:
    return train(args.config, args.overrides, args.nproc)
