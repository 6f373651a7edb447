"""How did the last training attempt in a run directory end?  `python -m cluster.outcome RUN [--since EPOCH]`

Prints `finished`, `preempted` (stopped by a signal after saving a checkpoint) or `unknown` (no summary,
or one older than --since, i.e. from an earlier attempt). The batch script uses it to tell a run that
is done from one that must be requeued, since the ranks exit 0 in both cases.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from launcher.argtypes import CommandParser

SUMMARY = Path("results") / "train_summary.json"


def run_outcome(run_dir: str | Path, since: float | None = None) -> str:
    path = Path(run_dir) / SUMMARY
    try:
        if since is not None and path.stat().st_mtime < since:
            return "unknown"
        status = json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return "unknown"
    return status if status in ("finished", "preempted") else "unknown"


def main(argv: list[str] | None = None) -> int:
    p = CommandParser(prog="python -m cluster.outcome", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--since", type=float, default=None, help="ignore a summary older than this epoch time")
    args = p.parse_args(argv)
    print(run_outcome(args.run_dir, args.since))
    return 0


if __name__ == "__main__":
    sys.exit(main())
