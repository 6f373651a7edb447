"""Benchmark: scenes rendered per second (numpy renderer) and Slot Attention training steps per second.

    python bench/slots_render.py [--n 256] [--repeat 3] [--threads 1] [--out bench/results/slots_render.json]

Timing lives here, never in test asserts (DESIGN.md). The JSON records the machine's CPU count and the
torch thread count so figures can be compared between runs on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from evaluation.downstream import scenes  # noqa: E402
from evaluation.downstream.slots import PRESETS  # noqa: E402
from model.slot_attention import SlotAttentionAutoEncoder  # noqa: E402


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="scenes per rendered batch")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16, help="training batch for the step timing")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated architecture presets to time")
    ap.add_argument("--out", type=Path, default=Path("bench/results/slots_render.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, spec in scenes.SPECS.items():
        scenes.render(name, 8, 0)  # warm-up
        t = best_of(lambda: scenes.render(name, args.n, 1), args.repeat)
        row = {"dataset": name, "image_size": list(spec.image_size), "render_scenes_per_s": round(args.n / t, 1)}
        for preset in args.presets.split(","):
            torch.manual_seed(0)
            model = SlotAttentionAutoEncoder(image_size=spec.image_size, num_slots=spec.num_slots,
                                             **PRESETS[preset][name])
            opt = torch.optim.Adam(model.parameters(), 1e-4)
            batch = scenes.render(name, args.batch_size, 2)
            x = torch.from_numpy(batch.images).permute(0, 3, 1, 2) * 2 - 1

            def step():
                loss = F.mse_loss(model(x)["recon"], x)
                opt.zero_grad()
                loss.backward()
                opt.step()

            step()
            row[f"train_steps_per_s_{preset}"] = round(1.0 / best_of(step, args.repeat), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version(),
                          "torch": torch.__version__, "load_avg_1m": os.getloadavg()[0]},
              "batch_size": args.batch_size, "render_batch": args.n, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    md = args.out.with_suffix(".md")
    keys = list(rows[0])
    md.write_text("| " + " | ".join(keys) + " |\n" + "|---" * len(keys) + "|\n" +
                  "\n".join("| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows) + "\n")
    print(f"wrote {args.out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
