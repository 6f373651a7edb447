"""Benchmark: scenes rendered per second (numpy renderer) and Slot Attention training steps per second:
the step alone on a fixed batch, and the training loop rendering fresh scenes every step, in the training
thread (the peer) and one step ahead in the prefetch thread (`mnemos downstream slots`' default).

    python bench/slots_render.py [--n 256] [--repeat 3] [--threads 1] [--out bench/results/slots_render.json]

Timing lives here, never in test asserts. The JSON records the machine's CPU count and the
torch thread count so figures can be compared between runs on one machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from evaluation.downstream import scenes  # noqa: E402
from evaluation.downstream import slots, slots_model  # noqa: E402
from evaluation.downstream.slots_model import PRESETS  # noqa: E402
from model.slot_attention import SlotAttentionAutoEncoder  # noqa: E402
from launcher.argtypes import CommandParser  # noqa: E402


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="scenes per rendered batch")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16, help="training batch for the step timing")
    ap.add_argument("--loop-steps", type=int, default=10, help="steps per timed training loop")
    ap.add_argument("--compile", action="store_true", help="also time the step through torch.compile")
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
            make = functools.partial(slots_model.training_batch, argparse.Namespace(dataset=name, task="discovery"),
                                     spec, 0, 0, args.batch_size, torch.device("cpu"))
            fixed = make(0)

            def step(batch):
                loss = slots_model.compute_loss(model, argparse.Namespace(task="discovery", mask_entropy=0.0), batch)
                opt.zero_grad()
                loss.backward()
                opt.step()

            step(fixed)
            row[f"train_steps_per_s_{preset}"] = round(1.0 / best_of(lambda: step(fixed), args.repeat), 3)
            # the training loop as `mnemos downstream slots` runs it: fresh scenes every step, rendered in
            # this thread (the peer) or one step ahead in the prefetch thread
            for key, ahead in (("loop", False), ("loop_prefetch", True)):
                row[f"{key}_steps_per_s_{preset}"] = round(args.loop_steps / best_of(
                    lambda: [step(b) for b in slots.step_batches(make, 0, args.loop_steps, torch.device("cpu"), ahead)],
                    args.repeat), 3)
            row[f"prefetch_speedup_{preset}"] = round(row[f"loop_prefetch_steps_per_s_{preset}"]
                                                      / row[f"loop_steps_per_s_{preset}"], 3)
            if args.compile:  # `--compile`: the same step through torch.compile, against the eager step above
                torch._dynamo.reset()  # each preset compiles afresh, not as a recompile of the last one
                model = torch.compile(model, dynamic=False)  # step() looks `model` up when called
                t = time.perf_counter()
                step(fixed)
                row[f"compile_s_{preset}"] = round(time.perf_counter() - t, 1)
                row[f"compiled_train_steps_per_s_{preset}"] = round(1.0 / best_of(lambda: step(fixed), args.repeat), 3)
                row[f"compile_speedup_{preset}"] = round(row[f"compiled_train_steps_per_s_{preset}"]
                                                         / row[f"train_steps_per_s_{preset}"], 3)
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
