"""Per-rank entry point: `python -m launcher.worker RUN/config.yaml` (what torchrun starts)."""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m launcher.worker RESOLVED_CONFIG.yaml", file=sys.stderr)
        return 2
    from launcher.faults import StopFlag
    # First, before torch: a stop notice during start-up is kept (SIGTERM would otherwise kill the rank).
    # Ctrl-C counts as one only in the `mnemos train` process itself: torchrun's ranks get SIGTERM instead.
    stop = StopFlag(interrupt="RANK" not in os.environ).install()
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from launcher.config import ConfigError, load_config
    from launcher.train import Trainer

    cfg = load_config(argv[0])
    trainer = None
    try:
        trainer = Trainer(cfg, stop=stop)
        status = trainer.run()
    except ConfigError as err:
        logging.getLogger("mnemos.train").error("%s", err)
        return 2
    finally:
        if trainer is not None:
            trainer.close()
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    logging.getLogger("mnemos.train").info("training %s", status)
    return 0


def exit_now(code: int) -> None:
    """Leave without running C++ static destructors: with gloo/DeepSpeed threads still winding down they
    can abort ("terminate called without an active exception") after a run that already finished and
    saved, which would turn a good exit into a failed job. Everything of ours is flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
