"""Training throughput: the mnemos GPT vs the Hugging Face GPT2LMHeadModel peer, same shapes, same weights,
same token batches, measured in one process run (issue #11).

Each variant trains `--steps` optimizer steps from the same initial weights on the same batches:

  mnemos-eager     model/gpt.py as is, plain LM head + cross-entropy
  mnemos-compile   torch.compile(model)
  mnemos-fast      torch.compile(model) + chunked LM head/cross-entropy (parallel/loss.py) + FlexAttention band (CUDA)
  mnemos-fast-cudnn  mnemos-fast with the dense attention forced onto cuDNN's fused kernel (perf.sdpa_backend)
  mnemos-fast-sac  mnemos-fast with selective activation checkpointing (parallel.checkpoint_policy=selective)
  hf-eager         transformers GPT2LMHeadModel (SDPA attention), weights copied from mnemos
  hf-compile       torch.compile(hf)

On a GPU: bf16 autocast over fp32 master weights, fused AdamW (GPT-3's betas 0.9/0.95, weight decay
0.1), grad-norm clipping at 1.0, no activation checkpointing, no DeepSpeed (one device). Reported per
variant: tokens/s over the timed steps (after `--warmup` steps, which include compilation), MFU
(6 N + 12 L d s FLOPs per token against 989 TFLOP/s dense bf16), peak allocated memory, the loss of
every step and its largest difference from mnemos-eager (the fast paths must give the same curve).
Ratios mnemos / HF per pairing. Results of other sizes already in the output file are kept, so sizes
can be measured one command at a time.

Both peers compute the loss the same way: cross-entropy of fp32 logits against the next tokens (HF's
`labels=` would shift inside the model; the targets are given explicitly instead). Activation: mnemos
uses torch's fused tanh GELU, HF GPT-2 its "gelu_new" (the same tanh formula as separate ops).

Usage:
  python bench/train_throughput.py --smoke                       # CPU, tiny shape, a minute or two
  python bench/train_throughput.py --sizes gpt3-small gpt3-medium  # GPU
  python bench/train_throughput.py --sizes gpt3-2.7b --variants mnemos-fast hf-compile --steps 30
Writes bench/results/train_throughput_cpu_smoke.json (smoke) or train_throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from launcher.argtypes import CommandParser  # noqa: E402

PEAK_TFLOPS_BF16 = 989.0  # H100/H200 SXM dense bf16 without sparsity (NVIDIA data sheet); README "Performance"
VARIANTS = ("mnemos-eager", "mnemos-compile", "mnemos-fast", "mnemos-fast-cudnn", "mnemos-fast-sac", "hf-eager",
            "hf-compile")
PAIRS = (("mnemos-eager", "hf-eager"), ("mnemos-compile", "hf-compile"), ("mnemos-fast", "hf-compile"),
         ("mnemos-fast-cudnn", "hf-compile"), ("mnemos-fast-sac", "hf-compile"))
# micro-batch (sequences of 2048) per size on one 141 GB H200 without activation checkpointing
MICRO_BATCH = {"gpt3-small": 16, "gpt3-medium": 8, "gpt3-large": 8, "gpt3-xl": 8, "gpt3-2.7b": 4}
SMOKE_SHAPE = dict(arch="gpt", n_layer=2, d_model=64, n_head=4, n_ctx=128, vocab_size=2048)


def model_config(size: str, attn_pattern: str):
    from launcher.config import ModelConfig
    from model.presets import preset_shape
    shape = dict(SMOKE_SHAPE, preset="smoke") if size == "smoke" else preset_shape(size)
    return ModelConfig(**{**shape, "attn_pattern": attn_pattern, "dropout": 0.0})


def build(variant: str, cfg, device, chunk_tokens: int):
    """(model, loss_fn(model, inp, tgt) -> scalar) for one variant, weights from seed 0 every time."""
    from model.gpt import build_gpt
    from parallel.loss import lm_cross_entropy, use_chunked_loss
    from parallel.topology import Topology

    model = build_gpt(cfg, seed=0, device=device)
    if variant.startswith("hf"):
        model = hf_copy(model, device)

        def loss_fn(m, inp, tgt):
            logits = m(input_ids=inp).logits  # (B, T, V)
            return F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten())
    else:
        if variant.startswith("mnemos-fast"):
            use_chunked_loss(model, chunk_tokens)
            if device.type == "cuda":  # banded layers through FlexAttention (no CPU backward in torch)
                from model.gpt import use_band_kernel
                use_band_kernel(model, "flex")
            if variant.endswith("cudnn"):
                from model.gpt import use_sdpa_backend
                use_sdpa_backend(model, "cudnn")
            if variant.endswith("sac"):
                from parallel.activation_checkpointing import apply_activation_checkpointing
                apply_activation_checkpointing(model, "selective")
        topo = Topology(1, 0, tp=1)

        def loss_fn(m, inp, tgt):
            return lm_cross_entropy(m(inp), tgt, topo)
    if variant.endswith("compile") or variant.startswith("mnemos-fast"):
        model = torch.compile(model)
    return model, loss_fn


def hf_copy(model, device):
    """GPT2LMHeadModel with the mnemos model's weights (dense attention: banded layers have no peer)."""
    from transformers import GPT2LMHeadModel

    from evaluation.hf import hf_config, hf_state_dict
    dense = model.cfg.model_copy(update={"attn_pattern": "dense"})
    config = hf_config(dense)
    config._attn_implementation = "sdpa"  # the flash / memory-efficient kernels, like mnemos
    with torch.device(device):
        hf = GPT2LMHeadModel(config)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    if unexpected or [k for k in missing if not k.endswith((".attn.bias", "masked_bias"))]:
        raise RuntimeError(f"HF copy mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.train()


def run_variant(variant, cfg, batches, device, args) -> dict:
    torch.manual_seed(0)
    model, loss_fn = build(variant, cfg, device, args.loss_chunk_tokens)
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                            fused=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    losses = []

    def step(inp, tgt):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(model, inp, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # read once at the end: no host-device sync inside the loop

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for inp, tgt in batches[: args.warmup]:
        step(inp, tgt)
    sync()
    t1 = time.perf_counter()
    for inp, tgt in batches[args.warmup:]:
        step(inp, tgt)
    sync()
    t2 = time.perf_counter()
    timed = len(batches) - args.warmup
    tokens = timed * batches[0][0].numel()
    out = {"warmup_s": round(t1 - t0, 3), "timed_steps": timed, "step_s": round((t2 - t1) / timed, 5),
           "tokens_per_s": round(tokens / (t2 - t1), 1),
           "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
           "losses": torch.stack(losses).float().cpu().tolist()}
    del model, opt, loss_fn
    gc.collect()
    torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()
    return out


def make_batches(n, micro, seq, vocab, device, pool=4):
    """The token batches every variant trains on: (input, target) pairs on the device, copied from
    pinned host memory before any timing. `pool` random batches repeat, so the models can memorise
    them and the loss curve falls (uniform random tokens alone would leave it flat at ln V)."""
    g = torch.Generator().manual_seed(1234)
    distinct = []
    for _ in range(min(n, pool)):
        tokens = torch.randint(0, vocab, (micro, seq + 1), generator=g)
        if device.type == "cuda":
            tokens = tokens.pin_memory().to(device, non_blocking=True)
        distinct.append((tokens[:, :-1], tokens[:, 1:]))
    return [distinct[i % len(distinct)] for i in range(n)]


def bench_size(size, args, device, save=lambda record: None) -> dict:
    """Every variant of one size; `save(record)` after each, so a run cut short keeps what it measured."""
    from model.gpt import GPT
    cfg = model_config(size, args.attn_pattern)
    seq = args.seq_len or cfg.n_ctx
    micro = args.micro_batch or (4 if size == "smoke" else MICRO_BATCH.get(size, 4))
    with torch.device("meta"):
        n_params = GPT(cfg).num_parameters()
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.d_model * seq
    batches = make_batches(args.warmup + args.steps, micro, seq, cfg.vocab_size, device)
    record = {"size": size, "shape": {k: getattr(cfg, k) for k in ("n_layer", "d_model", "n_head", "n_ctx", "vocab_size",
                                                     "attn_pattern", "local_window")},
              "parameters": n_params, "steps": {"warmup": args.warmup, "timed": args.steps}, "micro_batch": micro, "seq_len": seq, "tokens_per_step": micro * seq,
              "flops_per_token": flops_per_token, "variants": {}}
    for variant in args.variants:
        print(f"[{size}] {variant} ...", flush=True)
        try:
            res = run_variant(variant, cfg, batches, device, args)
        except Exception as err:  # a variant that does not fit or does not compile is a result, not a crash
            kind = "out of memory" if isinstance(err, torch.OutOfMemoryError) else type(err).__name__
            res = {"error": f"{kind}: {(str(err).splitlines() or [''])[0][:300]}"}
            print(f"[{size}] {variant}: failed: {res['error']}", flush=True)
            gc.collect()
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if "tokens_per_s" in res:
            res["mfu"] = (round(res["tokens_per_s"] * flops_per_token / (PEAK_TFLOPS_BF16 * 1e12), 4)
                          if device.type == "cuda" else None)
            mem = res["peak_memory_bytes"]
            print(f"[{size}] {variant}: {res['tokens_per_s']:.0f} tok/s, MFU {res['mfu']}, peak "
                  f"{'n/a' if mem is None else f'{mem / 2**30:.1f} GiB'}, warm-up {res['warmup_s']:.1f} s, "
                  f"loss {res['losses'][0]:.4f} -> {res['losses'][-1]:.4f}", flush=True)
        record["variants"][variant] = res
        summarise(record)
        save(record)
    return record


def summarise(record: dict) -> None:
    """Loss-curve differences against mnemos-eager and the mnemos / HF tokens/s ratios, in place."""
    variants = record["variants"]
    ref = variants.get("mnemos-eager", {}).get("losses")
    for res in variants.values():
        if ref and "losses" in res:
            res["max_abs_loss_diff_vs_mnemos_eager"] = max(abs(a - b) for a, b in zip(res["losses"], ref))
    record["ratios_tokens_per_s"] = {
        f"{a} / {b}": round(variants[a]["tokens_per_s"] / variants[b]["tokens_per_s"], 3)
        for a, b in PAIRS if "tokens_per_s" in variants.get(a, {}) and "tokens_per_s" in variants.get(b, {})}


CUDA_ONLY_VARIANTS = ("mnemos-fast-cudnn",)  # cuDNN's fused attention kernel exists only on a CUDA device


def device_type(text: str) -> str:
    """--device: cpu or cuda (cuda:N picks a card)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"must be cpu or cuda[:N], got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be cpu or cuda[:N], got {text!r}")
    return text


def main(argv=None) -> int:
    from launcher.argtypes import integer, number, output_file
    ap = CommandParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shape on the CPU: checks that the script works")
    ap.add_argument("--device", type=device_type, default=None, help="cpu or cuda (default: cuda when present, else cpu)")
    from model.presets import PRESETS
    ap.add_argument("--sizes", nargs="+", default=["gpt3-small", "gpt3-medium", "gpt3-xl", "gpt3-2.7b"],
                    choices=[name for name, shape in PRESETS.items() if shape["arch"] == "gpt"],
                    help="GPT presets to measure on a GPU (--smoke uses a tiny shape instead)")
    ap.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                    help="default: all; on a CPU all but mnemos-fast-cudnn (cuDNN attention needs CUDA)")
    ap.add_argument("--steps", type=integer(1), default=None, help="timed steps (GPU 45, smoke 10)")
    ap.add_argument("--warmup", type=integer(0), default=None,
                    help="untimed first steps, compilation included (GPU 5, smoke 2)")
    ap.add_argument("--micro-batch", type=integer(1), default=None, help="sequences per step (default per size)")
    ap.add_argument("--seq-len", type=integer(1), default=None, help="default: the model's n_ctx")
    ap.add_argument("--attn-pattern", default="dense", choices=["dense", "alternating"],
                    help="mnemos attention; the HF peer is always dense (GPT-2 has no banded layers)")
    ap.add_argument("--loss-chunk-tokens", type=integer(1), default=None,
                    help="mnemos-fast chunk (GPU 8192, smoke 96)")
    ap.add_argument("--lr", type=number(0, low_open=True), default=None, help="GPU 1e-4, smoke 3e-3")
    ap.add_argument("--out", type=output_file, default=None)
    args = ap.parse_args(argv)

    # everything that cannot run here is refused before a model is built or the output file is touched
    if args.device is not None and torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device} (rule: needs a CUDA GPU and a CUDA build of torch; this torch "
                 f"{torch.__version__} sees none; on a CPU use --smoke without --device)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.smoke:
        args.sizes = ["smoke"]
        if args.device is None:
            device = torch.device("cpu")
    elif device.type != "cuda":
        ap.error("the GPT-3 sizes are for a GPU; on a CPU use --smoke")
    if device.type != "cuda":
        cuda_only = [v for v in args.variants or () if v in CUDA_ONLY_VARIANTS]
        if cuda_only:
            ap.error(f"--variants {' '.join(cuda_only)} (rule: needs a CUDA device, cuDNN's fused attention; "
                     f"this run is on {device.type})")
    if args.variants is None:
        args.variants = [v for v in VARIANTS if device.type == "cuda" or v not in CUDA_ONLY_VARIANTS]
    if args.steps is None:
        args.steps = 10 if args.smoke else 45
    if args.warmup is None:
        args.warmup = 2 if args.smoke else 5
    if args.loss_chunk_tokens is None:
        args.loss_chunk_tokens = 96 if args.smoke else 8192
    if args.lr is None:
        args.lr = 3e-3 if args.smoke else 1e-4
    if "mnemos-eager" not in args.variants:
        print("note: without mnemos-eager there is no reference loss curve to compare with", flush=True)

    import transformers
    name = "train_throughput_cpu_smoke.json" if args.smoke else f"train_throughput_{device.type}.json"
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / name
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update({
        "benchmark": "training tokens/s, mnemos GPT vs transformers GPT2LMHeadModel, same weights and batches",
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),  # other jobs on a shared machine
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "precision": "bf16 autocast, fp32 master weights" if device.type == "cuda" else "fp32",
        "optimizer": "AdamW fused=True, betas (0.9, 0.95), weight decay 0.1, clip 1.0",
        "mfu_formula": f"tokens/s x (6 N + 12 L d s) / {PEAK_TFLOPS_BF16} TFLOP/s (GPU only)",
        "lr": args.lr,
        "loss_chunk_tokens": args.loss_chunk_tokens,
        "notes": ["peak_memory_bytes and mfu are null on a CPU (no allocator statistics; the peak FLOP/s is a GPU's)",
                  "HF GPT-2 uses gelu_new (tanh GELU as separate ops); mnemos uses F.gelu(approximate='tanh')",
                  "timings on a shared machine vary between runs; the ratio in one run is the figure to read"]
        + (["CPU smoke: a tiny shape on shared cores; timings swing several-fold between runs and say nothing "
            "about GPU speed; the run shows the script works and the curves agree"] if args.smoke else []),
    })
    sizes = result.setdefault("sizes", {})
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(record):  # after every variant: a run stopped by a time limit or an OOM keeps the rest
        sizes[record["size"]] = record
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)

    for size in args.sizes:
        bench_size(size, args, device, save)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
