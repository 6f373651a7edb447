"""Learning curves of `mnemos downstream slots` runs, read back from their logs, to compare recipes per step.

Every `--eval-every` steps a run logs a quick evaluation on the first 64 held-out scenes; this collects
those lines of each run directory (several seeds may share one), tabulates FG-ARI at the steps asked for,
and says when each seed first reached each threshold. Runs that came back from a GPU session compare the
same way as CPU runs.

    python bench/slots_curves.py runs/slots-a runs/slots-b --at 5000,10000,20000 --out curves.json

Writes JSON: for each run its preset, dataset, batch size and learning rate, and for each seed the rows
{step, fg_ari, fg_ari_attention, mse, ...} in step order (a resumed run's repeated steps keep the last).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import yaml

QUICK_EVAL = re.compile(r"seed (\d+) step (\d+) quick eval \(\d+ scenes\): (.*)$")
RECIPE_KEYS = ("dataset", "preset", "batch_size", "lr", "warmup_steps", "decay_steps", "implicit_grad",
               "update_norm")


def read_curves(run_dir: Path) -> dict[int, list[dict]]:
    """seed -> quick-evaluation rows of one run directory, in step order."""
    log = Path(run_dir) / "logs" / "slots.log"
    by_seed: dict[int, dict[int, dict]] = {}
    for line in log.read_text().splitlines():
        m = QUICK_EVAL.search(line)
        if not m:
            continue
        seed, step, pairs = int(m.group(1)), int(m.group(2)), m.group(3)
        row = {"step": step}
        for item in pairs.split(", "):
            key, value = item.rsplit(" ", 1)
            row[key] = float(value)
        by_seed.setdefault(seed, {})[step] = row  # a resumed run logs its steps again: the last wins
    return {seed: [rows[s] for s in sorted(rows)] for seed, rows in sorted(by_seed.items())}


def recipe(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.exists() else {}
    return {k: cfg.get(k) for k in RECIPE_KEYS}


def value_at(rows: list[dict], step: int, key: str = "fg_ari") -> float | None:
    """The metric at the last quick evaluation at or before `step` (None before the first evaluation or
    after the last: the run has not got there)."""
    before = [r for r in rows if r["step"] <= step]
    return before[-1][key] if before and step <= rows[-1]["step"] else None


def first_reached(rows: list[dict], threshold: float, key: str = "fg_ari") -> int | None:
    return next((r["step"] for r in rows if r[key] >= threshold), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (their --out)")
    p.add_argument("--at", default="5000,10000,20000,40000", help="steps to tabulate, comma-separated")
    p.add_argument("--reach", default="0.9,0.95", help="FG-ARI thresholds: the first step at or above each")
    p.add_argument("--out", type=Path, help="JSON file to write")
    args = p.parse_args(argv)
    try:
        at = [int(s) for s in args.at.split(",")]
        reach = [float(t) for t in args.reach.split(",")]
    except ValueError:
        p.error(f"--at {args.at!r} / --reach {args.reach!r}: comma-separated steps (integers) and FG-ARI values")
    for run in args.runs:
        if not (run / "logs" / "slots.log").exists():
            p.error(f"{run}: no logs/slots.log (rule: each argument is the --out of a `mnemos downstream slots` run)")

    result = {"runs": []}
    header = ["run", "seed", "last step"] + [f"@{s}" for s in at] + [f"first >= {t}" for t in reach]
    print(" | ".join(header))
    for run in args.runs:
        curves = read_curves(run)
        result["runs"].append({"run": str(run), "recipe": recipe(run),
                               "seeds": {str(seed): rows for seed, rows in curves.items()}})
        for seed, rows in curves.items():
            cells = [str(run), str(seed), str(rows[-1]["step"] if rows else "-")]
            cells += ["-" if (v := value_at(rows, s)) is None else f"{v:.3f}" for s in at]
            cells += [str(first_reached(rows, t) or "-") for t in reach]
            print(" | ".join(cells))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
