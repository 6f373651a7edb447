"""How did the last training attempt in a run directory end?  `python -m cluster.outcome RUN [--since EPOCH]`

Prints `finished`, `preempted` (stopped by SIGUSR1, the time-limit notice, after saving a checkpoint),
`terminated` (stopped by SIGTERM after saving: `scancel --signal=TERM`, a pod deleted) or `unknown` (no
summary, or one older than --since, i.e. from an earlier attempt). The batch script uses it to tell a run
that is done or was stopped on purpose from one that must be requeued, since the ranks exit 0 in each case.
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
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return "unknown"
    status = summary.get("status")
    if status == "preempted" and summary.get("stop_signal") == "SIGTERM":
        return "terminated"
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
