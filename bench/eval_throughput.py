"""Log-likelihood requests per second: mnemos's MnemosLM vs lm-evaluation-harness's HF backend (HFLM)
on the same model and the same requests, measured in the same run.

The mnemos GPT is exported to a transformers GPT2LMHeadModel (weights copied; `evaluation.hf.to_hf`)
for the peer; both see the same tokens (byte-level tokenizer, the same ids on both sides). Workloads:

  arithmetic_4shot   GPT-3's released 2D+ file, 4 demonstrations per prompt (unique contexts)
  multiple_choice    4 choices per shared context (HellaSwag-like; contexts from WikiText-2)
  generate_greedy    generate_until on the arithmetic prompts: greedy, stop at newline, 8 tokens at most

The byte tokenizer decodes ids >= 256 to nothing, and a random model with GPT-2's vocabulary greedily
emits those almost always: every generation would be empty and `same_text` would compare empty strings.
So the model's (tied) embedding rows of every id but printable ASCII and newline are zeroed: their logits
are 0 while the ~96 text ids get random ones, so greedy decoding emits text (the output layer still
computes all 50304 logits, so the cost is unchanged; both sides get the same weights). `same_text`
compares the two sides' texts, `nonempty_text` and `mean_chars` say how much text there was to compare,
and `same_ids_as_unbatched` checks mnemos's token ids against its own reference path (one prompt at a
time, whole window recomputed every step).

`requests` (top level and per workload) records how many requests each workload really timed: the
log-likelihood workloads use --n examples, generate_greedy --gen-n (default: a quarter of --n).

Usage: python bench/eval_throughput.py [--device cpu|cuda] [--preset small|gpt3-small] [--n 200] [--gen-n 50]
(bench/results/eval_throughput_cpu.json: --n 96, the other flags at their defaults)
Writes bench/results/eval_throughput_<device>.json.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from launcher.argtypes import CommandParser  # noqa: E402

PRESETS = {
    "tiny": dict(n_layer=1, d_model=32, n_head=2, n_ctx=512, vocab_size=512),  # smoke test of the script
    # a small model with GPT-2's vocabulary size, so the output layer costs what it costs in practice
    "small": dict(n_layer=4, d_model=256, n_head=4, n_ctx=512, vocab_size=50304),
    "gpt3-small": dict(n_layer=12, d_model=768, n_head=12, n_ctx=2048, vocab_size=50304),
}


def workloads(data: Path, n: int) -> dict[str, list[tuple[str, str]]]:
    from evaluation.registry import get_task
    task = get_task("gpt3_arithmetic_2da", data)
    docs = task.eval_docs(limit=n)
    arith = [(task.fewshot_context(i, d, 4, seed=0), d["completion"]) for i, d in enumerate(docs)]
    lines = [x.strip() for x in (data / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()
             if len(x.strip()) > 400 and not x.strip().startswith("=")]
    mc = []
    for i in range(max(1, n // 4)):
        text = lines[i % len(lines)]
        ctx = text[:300]
        ends = [lines[(i + j * 7 + 1) % len(lines)][300:300 + 60 + 15 * j] for j in range(4)]
        mc += [(ctx, " " + e.strip()) for e in ends]
    return {"arithmetic_4shot": arith, "multiple_choice": mc}


TEXT_IDS = [10] + list(range(32, 127))  # newline (the stop sequence) and printable ASCII


def emit_text_only(model) -> None:
    """Zero the tied embedding rows of every id outside TEXT_IDS: a random model then greedily emits text
    the byte tokenizer decodes (ids >= 256 decode to nothing). The prompts hold only TEXT_IDS bytes, so
    their input embeddings are untouched."""
    with torch.no_grad():
        keep = torch.zeros(model.wte.weight.shape[0], dtype=torch.bool)
        keep[TEXT_IDS] = True
        model.wte.weight[~keep] = 0.0


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def same_ids_as_unbatched(lm, reqs) -> float:
    """Share of requests whose greedy token ids, decoded in batches of lm.batch_size as generate_until does,
    equal those of the reference path (one prompt at a time, the whole window recomputed every step)."""
    from evaluation.generation import GenerationConfig, RecomputeDecoder, greedy_tokens
    cfgs = [GenerationConfig.from_kwargs(kw) for _, kw in reqs]
    ctxs = [lm.tokenizer.encode(c)[-(lm.max_length - g.max_gen_toks):] for (c, _), g in zip(reqs, cfgs)]
    order = sorted(range(len(reqs)), key=lambda i: -len(ctxs[i]))  # generate_until's batches
    batched: dict[int, list[int]] = {}
    for s in range(0, len(order), lm.batch_size):
        rows = order[s: s + lm.batch_size]
        c, g = [ctxs[i] for i in rows], [cfgs[i] for i in rows]
        batched.update(zip(rows, greedy_tokens(lm._greedy_decoder(c, g), c, g, lm.tokenizer.decode, lm.eos_id)))
    alone = [greedy_tokens(RecomputeDecoder(lm._next_logprobs, lm.max_length), [c], [g], lm.tokenizer.decode,
                           lm.eos_id)[0] for c, g in zip(ctxs, cfgs)]
    return sum(batched[i] == alone[i] for i in range(len(reqs))) / len(reqs)


def main(argv=None) -> int:
    ap = CommandParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--n", type=int, default=200, help="examples per workload")
    ap.add_argument("--gen-n", type=int, default=None,
                    help="generate_greedy requests (default: --n // 4, at least 8; each decodes up to 8 tokens)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from evaluation.adapters import ByteTokenizer, MnemosLM
    from evaluation.hf import byte_hf_tokenizer, to_hf
    from launcher.config import ModelConfig
    from model.gpt import build_gpt

    cfg = ModelConfig(**PRESETS[args.preset])
    model = build_gpt(cfg, seed=0).eval()
    emit_text_only(model)  # before the export, so the peer gets the same weights
    hf = to_hf(model)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = model.to(args.device)
    hf = hf.to(device=args.device, dtype=dt)
    # in bf16 both sides round; an fp32 copy of the same weights says whose scores stay closer to exact
    ref = (MnemosLM(copy.deepcopy(model), ByteTokenizer(), batch_size=args.batch_size, device=args.device,
                    dtype="fp32", progress=False) if args.dtype != "fp32" else None)
    ours = MnemosLM(model, ByteTokenizer(), batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                    progress=False)
    peer = HFLM(pretrained=hf, tokenizer=byte_hf_tokenizer(), batch_size=args.batch_size, device=args.device)

    results = {}
    loads = workloads(Path(args.data), args.n)
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}
    gen_n = args.gen_n or max(8, args.n // 4)
    if gen_n > len(loads["arithmetic_4shot"]):
        ap.error(f"--gen-n={gen_n} (rule: at most the {len(loads['arithmetic_4shot'])} arithmetic prompts of --n)")
    gen_reqs = [(ctx, gen_kwargs) for ctx, _ in loads["arithmetic_4shot"][:gen_n]]
    for name, reqs in loads.items():
        inst = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=0) for r in reqs]
        ours.loglikelihood(reqs[: args.batch_size])  # warm-up
        peer.loglikelihood(inst[: args.batch_size])
        t_ours, a = timed(lambda: ours.loglikelihood(reqs), args.repeats)
        t_peer, b = timed(lambda: peer.loglikelihood(inst), args.repeats)
        diff = max(abs(x[0] - y[0]) for x, y in zip(a, b))
        agree = sum(x[1] == y[1] for x, y in zip(a, b)) / len(a)
        results[name] = {"requests": len(reqs), "mnemos_s": round(t_ours, 4), "lm_eval_hf_s": round(t_peer, 4),
                         "mnemos_requests_per_s": round(len(reqs) / t_ours, 2),
                         "lm_eval_hf_requests_per_s": round(len(reqs) / t_peer, 2),
                         "speedup": round(t_peer / t_ours, 3), "max_abs_loglikelihood_diff": diff,
                         "greedy_agreement": agree}
        if ref is not None:
            exact = ref.loglikelihood(reqs)
            results[name]["max_abs_diff_vs_fp32"] = {
                "mnemos": max(abs(x[0] - e[0]) for x, e in zip(a, exact)),
                "lm_eval_hf": max(abs(y[0] - e[0]) for y, e in zip(b, exact))}
            print(f"{name}: max |dLL| vs fp32: mnemos {results[name]['max_abs_diff_vs_fp32']['mnemos']:.2e}, "
                  f"lm_eval HF {results[name]['max_abs_diff_vs_fp32']['lm_eval_hf']:.2e}", flush=True)
        print(f"{name}: mnemos {len(reqs) / t_ours:.1f} req/s, lm_eval HF {len(reqs) / t_peer:.1f} req/s, "
              f"x{t_peer / t_ours:.2f}, max |dLL| {diff:.2e}", flush=True)

    inst = [Instance(request_type="generate_until", doc={}, arguments=r, idx=0) for r in gen_reqs]
    ours_reqs = [(c, {"until": ["\n"], "max_gen_toks": 8}) for c, _ in gen_reqs]
    ours.generate_until(ours_reqs[:2])
    peer.generate_until(inst[:2])
    t_ours, a = timed(lambda: ours.generate_until(ours_reqs), args.repeats)
    t_peer, b = timed(lambda: peer.generate_until(inst), args.repeats)
    same = sum(x == y for x, y in zip(a, b)) / len(a)
    same_ids = same_ids_as_unbatched(ours, ours_reqs)
    results["generate_greedy"] = {"requests": len(gen_reqs), "mnemos_s": round(t_ours, 4), "lm_eval_hf_s": round(t_peer, 4),
                                  "mnemos_requests_per_s": round(len(gen_reqs) / t_ours, 2),
                                  "lm_eval_hf_requests_per_s": round(len(gen_reqs) / t_peer, 2),
                                  "speedup": round(t_peer / t_ours, 3), "same_text": same,
                                  "same_ids_as_unbatched": same_ids,
                                  "nonempty_text": sum(bool(x) for x in a) / len(a),
                                  "mean_chars": round(sum(len(x) for x in a) / len(a), 2),
                                  "same_text_nonempty": sum(x == y for x, y in zip(a, b) if x) / max(1, sum(map(bool, a)))}
    print(f"generate_greedy: mnemos {len(gen_reqs) / t_ours:.1f} req/s, lm_eval HF {len(gen_reqs) / t_peer:.1f} req/s, "
          f"x{t_peer / t_ours:.2f}, same text {same:.2f}, same ids as unbatched {same_ids:.2f}, non-empty "
          f"{results['generate_greedy']['nonempty_text']:.2f} ({results['generate_greedy']['mean_chars']} chars)",
          flush=True)
    if not results["generate_greedy"]["nonempty_text"]:  # same_text would compare empty strings: no result
        print("generate_greedy: every generation is empty; its comparison is void", file=sys.stderr)
        return 1

    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    record = {
        "benchmark": "evaluation log-likelihood throughput, mnemos MnemosLM vs lm-evaluation-harness HFLM",
        "device": args.device, "device_name": dev_name, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "lm_eval": lm_eval.__version__,
        "model": {**PRESETS[args.preset], "preset": args.preset, "parameters": model.num_parameters()},
        "dtype": args.dtype, "batch_size": args.batch_size, "repeats_best_of": args.repeats,
        "requests": {name: w["requests"] for name, w in results.items()},
        "model_state": "random init (seed 0), embedding rows of ids outside newline + printable ASCII zeroed",
        "workloads": results,
        "note": "same model (GPT-2 export), same tokens, same batch size, measured in one process; "
                "timings on a shared machine vary between runs, the ratio is the figure to read",
    }
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"eval_throughput_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
