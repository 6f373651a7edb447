"""One GPT-3 175B layer as one GPU of a tensor-parallel group runs it: measured time, fed to `mnemos plan`
(issue #11, item 3).

The block is model/gpt.py's `Block` with the gpt3-175b width (d_model 12288, 96 heads of 128, d_ff 49152)
and the local shapes of TP rank 0 of `--tp` ranks, as `parallel/plan.py` gives them: qkv 12288 -> 3 x
12288 / tp (this rank's heads), attention output 12288 / tp -> 12288, MLP 12288 -> 49152 / tp -> 12288.
Weights and activations are bf16 (DeepSpeed's bf16 mode computes in bf16 weights; fp32 masters live in
the optimizer), micro-batch and sequence as a real run uses them (default 1 x 2048). The TP all-reduces are
not run (one GPU): `mnemos plan` adds their time from the stated link bandwidth.

Measured, each the median of `--iters` CUDA-event timings after warm-up:
  fwd                  forward only
  fwd_bwd              forward + backward, activations kept
  fwd_bwd_recompute    full activation checkpointing: forward without graph, then forward + backward
                       (torch.utils.checkpoint), what a run with `parallel.activation_checkpointing` does
  *_compiled           the same with torch.compile(block)
  head_fwd_bwd         this rank's vocabulary-parallel LM head (vocab / tp rows) + fp32 cross-entropy
Model FLOPs of one layer per token (forward + backward, no recompute counted, as in 6 N + 12 L d s):
(72 d^2 + 12 d s) / tp; achieved TFLOP/s = that x tokens / time.

Usage:
  python bench/layer_175b.py                      # GPU: writes bench/results/layer_175b_cuda.json
  python bench/layer_175b.py --smoke              # CPU, tiny width: checks that the script works
  mnemos plan --model gpt3-175b ... --measured-layer bench/results/layer_175b_cuda.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402
from launcher.argtypes import CommandParser  # noqa: E402

SMOKE_PRESET = "gpt-mini"  # --smoke: a tiny preset, so `mnemos plan --model gpt-mini` can read the result


def block_config(shape: dict):
    from launcher.config import ModelConfig
    return ModelConfig(**{k: v for k, v in shape.items() if k in ModelConfig.model_fields}, dropout=0.0)


def tp_local_block(shape: dict, tp: int, device, dtype):
    """model.gpt.Block at `shape`'s width with TP rank 0's local linear shapes (what parallelize swaps in)."""
    from model.gpt import Block
    cfg = block_config(shape)
    d, f = cfg.d_model, cfg.ff_width
    if cfg.n_head % tp or f % tp:
        raise ValueError(f"--tp {tp} (rule: must divide n_head {cfg.n_head} and d_ff {f}; each rank holds whole "
                         f"heads and an equal share of the MLP)")
    with torch.device("meta"):
        block = Block(cfg, local=False)
    block.attn.qkv = nn.Linear(d, 3 * d // tp, device="meta")  # column-parallel: this rank's q, k, v heads
    block.attn.proj = nn.Linear(d // tp, d, device="meta")     # row-parallel (bias added once after all-reduce)
    block.mlp.fc = nn.Linear(d, f // tp, device="meta")        # column-parallel
    block.mlp.proj = nn.Linear(f // tp, d, device="meta")      # row-parallel
    block = block.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "ln" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return block.to(dtype), cfg


def sig(x: float, digits: int = 3) -> float:
    """x to `digits` significant digits (a CPU smoke run's 0.04 TFLOP/s must not round to 0.0)."""
    return float(f"{x:.{digits}g}")


def json_rate(tflops: float) -> float:
    """A FLOP rate for the JSON: one decimal in TFLOP/s, 3 significant digits below 1 TFLOP/s."""
    return round(tflops, 1) if tflops >= 1 else sig(tflops)


def rate_text(tflops: float) -> str:
    """A FLOP rate for people: TFLOP/s on a GPU, GFLOP/s below 1 TFLOP/s (the CPU smoke run)."""
    return f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{sig(tflops * 1e3)} GFLOP/s"


def time_ms(fn, iters: int, warmup: int, cuda: bool) -> float:
    """Median milliseconds of `fn()` (CUDA events on a GPU, perf_counter on a CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def matmul_ceiling_tflops(device, cuda: bool, n: int) -> float:
    """bf16 (fp32 on CPU) n x n x n matrix product rate on random data: the card's practical ceiling."""
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = time_ms(lambda: a @ b, iters=10, warmup=3, cuda=cuda)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def measure(args) -> dict:
    from model.presets import preset_shape
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = preset_shape(SMOKE_PRESET if args.smoke else args.model)
    tp, b, s = args.tp, args.micro_batch, args.seq_len or shape["n_ctx"]
    block, cfg = tp_local_block(shape, tp, device, dtype)
    d = cfg.d_model
    x = torch.randn(b, s, d, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(b, s, d, device=device, dtype=dtype)
    it, wu = args.iters, args.warmup

    def run_fwd(m):
        with torch.no_grad():
            m(x)

    def run_fwd_bwd(m):
        m(x).backward(grad_out)

    def run_recompute(m):
        checkpoint(m, x, use_reentrant=False).backward(grad_out)

    layer_flops = (72 * d * d + 12 * d * s) / tp * b * s  # model FLOPs, forward + backward, one layer
    timings = {}
    variants = [("", block)]
    if args.compile:
        variants.append(("_compiled", torch.compile(block)))
    for suffix, m in variants:
        for name, fn in (("fwd", run_fwd), ("fwd_bwd", run_fwd_bwd), ("fwd_bwd_recompute", run_recompute)):
            key = name + suffix
            t0 = time.perf_counter()
            try:
                ms = time_ms(lambda: fn(m), it, wu, cuda)
            except Exception as err:  # a variant that fails (e.g. compile) is a result, not a crash
                timings[key] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
                print(f"{key}: failed: {timings[key]['error']}", flush=True)
                continue
            flops = layer_flops / 3 if name == "fwd" else layer_flops
            tflops = flops / (ms * 1e-3) / 1e12
            timings[key] = {"ms": round(ms, 4), "model_tflops": json_rate(tflops),
                            "first_call_s": round(time.perf_counter() - t0, 1)}
            print(f"{key}: {ms:.3f} ms, {rate_text(tflops)} (model FLOPs)", flush=True)
            x.grad = None
            block.zero_grad(set_to_none=True)

    # this rank's vocabulary-parallel LM head + fp32 cross-entropy (the TP reductions are not run here)
    v_local = shape["vocab_size"] // tp
    w = torch.randn(v_local, d, device=device, dtype=dtype, requires_grad=True)
    h = torch.randn(b * s, d, device=device, dtype=dtype, requires_grad=True)
    tgt = torch.randint(0, v_local, (b * s,), device=device)

    def head():
        F.cross_entropy(F.linear(h, w).float(), tgt).backward()

    ms = time_ms(head, it, wu, cuda)
    tflops = 6 * d * v_local * b * s / (ms * 1e-3) / 1e12
    timings["head_fwd_bwd"] = {"ms": round(ms, 4), "model_tflops": json_rate(tflops)}
    print(f"head_fwd_bwd: {ms:.3f} ms, {rate_text(tflops)} (model FLOPs)", flush=True)
    ceiling = matmul_ceiling_tflops(device, cuda, 256 if args.smoke else 8192)
    print(f"matmul ceiling: {rate_text(ceiling)}", flush=True)
    return {
        "benchmark": "one GPT-3 layer at TP-local shapes, forward + backward, one GPU",
        "model": SMOKE_PRESET if args.smoke else args.model,
        "shape": {"d_model": d, "n_head": cfg.n_head, "d_head": cfg.d_head, "d_ff": cfg.ff_width,
                  "n_layer": shape["n_layer"], "vocab_size": shape["vocab_size"]},
        "tp": tp, "micro_batch": b, "seq_len": s,
        "local_shapes": {"qkv": [d, 3 * d // tp], "attn_proj": [d // tp, d], "mlp_fc": [d, cfg.ff_width // tp],
                         "mlp_proj": [cfg.ff_width // tp, d], "heads": cfg.n_head // tp},
        "dtype": str(dtype).replace("torch.", ""), "device": device.type,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "layer_model_flops_fwd_bwd": layer_flops,
        "matmul_ceiling_tflops": json_rate(ceiling),
        "iters_median_of": it, "timings": timings,
        "note": "TP communication not included (one GPU); mnemos plan --measured-layer adds it from link "
                "bandwidth. model_tflops counts no recompute (as MFU does).",
    }


def main(argv=None) -> int:
    from launcher.argtypes import integer, output_file
    from model.presets import PRESETS, preset_shape
    ap = CommandParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt3-175b", choices=[n for n, v in PRESETS.items() if v["arch"] == "gpt"])
    ap.add_argument("--tp", type=integer(1), default=8)
    ap.add_argument("--micro-batch", type=integer(1), default=1)
    ap.add_argument("--seq-len", type=integer(1), default=None, help="default: the model's n_ctx (2048)")
    ap.add_argument("--iters", type=integer(1), default=20)
    ap.add_argument("--warmup", type=integer(0), default=3)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time torch.compile(block) (default: on a GPU)")
    ap.add_argument("--smoke", action="store_true", help="tiny width on the CPU: checks the script works")
    ap.add_argument("--out", type=output_file, default=None)
    args = ap.parse_args(argv)
    cfg = block_config(preset_shape(SMOKE_PRESET if args.smoke else args.model))
    tp = 2 if args.smoke else args.tp
    if cfg.n_head % tp or cfg.ff_width % tp:
        ap.error(f"--tp {tp} (rule: must divide n_head {cfg.n_head} and d_ff {cfg.ff_width} of "
                 f"{SMOKE_PRESET if args.smoke else args.model}; each rank holds whole heads and an equal share "
                 f"of the MLP)")
    if not args.smoke and not torch.cuda.is_available():
        ap.error("the 175B layer needs a GPU; on a CPU use --smoke")
    if args.compile is None:
        args.compile = torch.cuda.is_available() and not args.smoke
    if args.smoke:
        args.tp, args.iters = 2, min(args.iters, 3)
    record = measure(args)
    name = "layer_175b_cpu_smoke.json" if args.smoke else f"layer_175b_{record['device']}.json"
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
