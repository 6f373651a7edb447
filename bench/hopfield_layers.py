"""Benchmark: Hopfield layer vs nn.MultiheadAttention (same shapes, same device), forward + backward.

Reports times and the ratio to the peer measured in the same run (no absolute targets):
    python bench/hopfield_layers.py --out bench/results/hopfield_layers.json [--device cuda]
A bad value or a device this machine lacks is refused in one line (exit 2) before anything is timed or written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from launcher.argtypes import CommandParser, comma_list, integer, output_file  # noqa: E402
from model.hopfield import Hopfield  # noqa: E402

DEVICES = ("cpu", "cuda")


def device_problem(device: str) -> str | None:
    """Why `--device` cannot run here, or None."""
    if device == "cuda" and not torch.cuda.is_available():
        return ("--device cuda (rule: needs a CUDA GPU and a CUDA build of torch; this torch "
                f"{torch.__version__} sees none; use --device cpu)")
    return None


def _time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def run(batch: int, seq: int, d: int, heads: int, steps: list[int], repeats: int, device: str) -> list[dict]:
    x = torch.randn(batch, seq, d, device=device)
    mha = nn.MultiheadAttention(d, heads, batch_first=True).to(device)

    def mha_step():
        mha(x, x, x, need_weights=False)[0].sum().backward()

    base = _time(mha_step, repeats, device)
    rows = [dict(layer="nn.MultiheadAttention", update_steps_max=0, seconds=base, ratio=1.0)]  # one softmax
    for s in steps:
        hop = Hopfield(input_size=d, num_heads=heads, scaling=1 / math.sqrt(d // heads), update_steps_max=s,
                       normalize_stored_pattern=False, normalize_state_pattern=False,
                       normalize_pattern_projection=False).to(device)

        def hop_step():
            hop(x).sum().backward()

        t = _time(hop_step, repeats, device)
        rows.append(dict(layer="Hopfield", update_steps_max=s, seconds=t, ratio=t / base))
    return rows


def main(argv=None) -> int:
    p = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=integer(1), default=8)
    p.add_argument("--seq", type=integer(1), default=256)
    p.add_argument("--d", type=integer(1), default=256)
    p.add_argument("--heads", type=integer(1), default=8)
    p.add_argument("--steps", type=comma_list(integer(0), distinct=True), default="0,2",
                   help="comma-separated update_steps_max values to time (hflayers' meaning: N updates, then "
                        "the retrieval; 0 is one softmax, as attention), e.g. 0,2")
    p.add_argument("--repeats", type=integer(1), default=10)
    p.add_argument("--device", choices=DEVICES, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=integer(1), default=1)
    p.add_argument("--out", type=output_file, default="bench/results/hopfield_layers.json")
    args = p.parse_args(argv)
    problem = device_problem(args.device)
    if problem:
        p.error(problem)
    if args.d % args.heads:
        p.error(f"--heads {args.heads} (rule: must divide --d {args.d}; each head gets d / heads features)")
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    rows = run(args.batch, args.seq, args.d, args.heads, steps, args.repeats, args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(config=vars(args), results=rows), indent=2))
    for r in rows:
        print(f"{r['layer']:>22} steps={r['update_steps_max']}: {1e3 * r['seconds']:.2f} ms  x{r['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
