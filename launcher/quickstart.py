"""`mnemos quickstart`: the whole system end to end on a CPU laptop in a few minutes.

It runs the same commands a user types, in order: build a corpus (or take --corpus files), dedup,
decontaminate against the arithmetic tasks it evaluates on, train a tokenizer, tokenize (with --corpus,
blend with 5% of your documents held out for validation), train a tiny GPT on 2 local ranks with ZeRO-2
(stopping half-way with a checkpoint, then resuming), and evaluate zero/one/few-shot arithmetic with a
clean/dirty report.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import yaml

from data.io import TXT_SAMPLE_BY
from launcher.argtypes import existing_path, integer, output_dir

log = logging.getLogger("mnemos.quickstart")

EVAL_TASKS = ["arithmetic_2da", "arithmetic_2ds"]
SHOTS = [0, 1, 4]


def register(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="the embedded default: data -> tokenizer -> 2-rank ZeRO-2 "
                                                 "training with resume -> few-shot evaluation, on CPU")
    p.add_argument("--out", type=output_dir, default="runs/quickstart", help="where everything goes (default runs/quickstart)")
    p.add_argument("--corpus", nargs="+", type=existing_path,
                   help="text/jsonl files to use instead of the generated corpus")
    p.add_argument("--steps", type=integer(2), default=300, help="training steps (default 300; resumes at half)")
    p.add_argument("--nproc", type=integer(1), default=2, help="local ranks (default 2)")
    p.add_argument("--eval-limit", type=integer(1), default=200, help="examples per evaluation task (default 200)")
    p.add_argument("--vocab-size", type=integer(1), help="tokenizer pieces (default 512 generated, 4096 --corpus)")
    p.add_argument("--txt-sample-by", default="auto", choices=list(TXT_SAMPLE_BY),
                   help="what one document of a --corpus .txt file is, as for `mnemos data` (default auto)")
    p.add_argument("--fresh", action="store_true", help="delete OUT first")
    p.set_defaults(func=run)


def _mnemos(*argv: str) -> None:
    """Run one `mnemos ...` command in this process; stop the quickstart if it fails."""
    from launcher.cli import main
    print(f"\n$ mnemos {' '.join(argv)}", flush=True)
    rc = main(list(argv))
    if rc != 0:
        raise SystemExit(f"mnemos quickstart: `mnemos {' '.join(argv)}` failed with exit code {rc}")


def _eval_examples(tasks: list[str]) -> list[str]:
    from evaluation.registry import iter_eval_texts
    return [text for _, text in iter_eval_texts(tasks)]


SEQ_LEN = 128


def _train_config(out: Path, vocab_size: int, data: dict, steps: int) -> dict:
    seq, batch = SEQ_LEN, 16
    return {
        "run_dir": str(out / "run"), "seed": 1234,
        "model": {"n_layer": 4, "d_model": 128, "n_head": 4, "n_ctx": 256,
                  "vocab_size": -(-vocab_size // 128) * 128, "attn_pattern": "alternating",
                  "local_window": 64},
        "data": {**data, "seq_len": seq},
        "optim": {"lr": 2e-3},
        "schedule": {"warmup_tokens": 20 * batch * seq, "decay_tokens": steps * batch * seq},
        "train": {"max_steps": steps, "global_batch_size": batch, "micro_batch_size": 8,
                  "eval_every_steps": steps // 2, "eval_batches": 8, "log_every_steps": 25},
        "parallel": {"zero_stage": 2},
        "checkpoint": {"every_steps": 0, "keep_last": 2, "save_at_end": True},
    }


def run(args) -> int:
    t0 = time.time()
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = out / "data"
    planted: dict = {}

    # 1. corpus
    if args.corpus:
        train_input = [str(Path(c).resolve()) for c in args.corpus]
        print(f"using your corpus: {train_input}")
    else:
        from launcher.quickstart_corpus import build_corpus
        planted = build_corpus(out / "corpus", _eval_examples(EVAL_TASKS))
        train_input = [str(out / "corpus" / "train.jsonl")]
        print(f"generated corpus: {planted['documents']} documents with {len(planted['planted_eval_examples'])} "
              f"planted evaluation examples and {planted['planted_exact_duplicates']} exact + "
              f"{planted['planted_near_duplicates']} near duplicates -> {out / 'corpus'}")

    # 2. data pipeline
    _mnemos("data", "dedup", "-i", *train_input, "-o", str(stages / "dedup"), "--txt-sample-by", args.txt_sample_by)
    _mnemos("data", "decontaminate", "-i", str(stages / "dedup"), "-o", str(stages / "decontaminated"),
            "--tasks-from-registry", ",".join(EVAL_TASKS), "--write-index", str(stages / "train_ngrams"))
    _mnemos("data", "train-tokenizer", "-i", str(stages / "decontaminated"), "--model-prefix",
            str(out / "tokenizer" / "spm"), "--vocab-size",
            str(args.vocab_size or (4096 if args.corpus else 512)))
    tok = str(out / "tokenizer" / "spm.model")
    _mnemos("data", "tokenize", "-i", str(stages / "decontaminated"), "-o", str(stages / "shards_train"),
            "--tokenizer", tok)
    shards = json.loads((stages / "shards_train" / "shards.json").read_text())
    if args.corpus:  # held-out documents of your corpus validate; trained-on ones would flatter the curve
        _mnemos("data", "blend", "--dataset", f"corpus=1:{stages / 'shards_train'}", "-o", str(stages / "blend"),
                "--seq-len", str(SEQ_LEN), "--split", "95,5,0")
        blend = json.loads((stages / "blend" / "blend.json").read_text())
        if not blend["config"]["data.valid"]:
            raise SystemExit(f"quickstart: the corpus is too small to hold out validation documents (5% of "
                             f"{shards['documents']} documents hold no sample of {SEQ_LEN + 1} tokens)")
        data = {"blend": str(stages / "blend")}
    else:  # the generated corpus comes with its own validation documents
        _mnemos("data", "tokenize", "-i", str(out / "corpus" / "valid.jsonl"), "-o", str(stages / "shards_valid"),
                "--tokenizer", tok)
        valid = json.loads((stages / "shards_valid" / "shards.json").read_text())
        data = {"tokenizer": shards["tokenizer"], "train": shards["prefixes"], "valid": valid["prefixes"]}

    # 3. train half-way, then resume to the end (the second call finds the checkpoint by itself)
    cfg_path = out / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(_train_config(out, shards["vocab_size"], data, args.steps), sort_keys=False))
    half = args.steps // 2
    _mnemos("train", str(cfg_path), "--nproc", str(args.nproc), "--set", f"train.max_steps={half}")
    _mnemos("train", str(cfg_path), "--nproc", str(args.nproc))
    run_dir = out / "run"
    summary = json.loads((run_dir / "results" / "train_summary.json").read_text())
    valid_curve = summary["validation"]

    # 4. few-shot evaluation with the clean/dirty split
    eval_dir = run_dir / "results" / "eval"
    _mnemos("eval", "--checkpoint", str(run_dir), "--tasks", ",".join(EVAL_TASKS),
            "--shots", ",".join(map(str, SHOTS)), "--limit", str(args.eval_limit),
            "--contamination", str(stages / "train_ngrams"), "--out", str(eval_dir), "--device", "cpu")

    decon = json.loads((stages / "decontaminated" / "stats.json").read_text())
    dedup = json.loads((stages / "dedup" / "stats.json").read_text())
    report = {
        "seconds": round(time.time() - t0, 1),
        "planted": planted,
        "dedup": {k: dedup.get(k) for k in ("documents_in", "exact_duplicates", "near_duplicates")},
        "decontaminate": next((s for s in decon["steps"] if s["step"] == "decontaminate"), {}),
        "validation_perplexity_before": valid_curve[0]["perplexity"],
        "validation_perplexity_after": valid_curve[-1]["perplexity"],
        "validation": valid_curve,
        "eval_results": str(eval_dir),
    }
    (run_dir / "results").mkdir(parents=True, exist_ok=True)
    (run_dir / "results" / "quickstart.json").write_text(json.dumps(report, indent=2))
    d = report["decontaminate"]
    print("\n" + "=" * 78)
    print(f"mnemos quickstart finished in {report['seconds']:.0f} s")
    print(f"  dedup: removed {report['dedup']['exact_duplicates']} exact and {report['dedup']['near_duplicates']} "
          f"near duplicates of {report['dedup']['documents_in']} documents")
    print(f"  decontaminate: {d.get('cut', 0)} documents cut, {d.get('dropped', 0)} dropped, "
          f"{d.get('chars_removed', 0)} characters removed (planted: {len(planted.get('planted_eval_examples', []))})")
    print(f"  validation perplexity: {report['validation_perplexity_before']:.1f} before training -> "
          f"{report['validation_perplexity_after']:.1f} after {summary['step']} steps (resumed at step {half})")
    print(f"  run directory:   {run_dir}")
    print(f"  checkpoints:     {run_dir / 'checkpoints'}")
    print(f"  TensorBoard:     tensorboard --logdir {run_dir / 'tensorboard'}")
    print(f"  evaluation:      {eval_dir}/results.md (JSON and PNG plots beside it)")
    print(f"  summary:         {run_dir / 'results' / 'quickstart.json'}")
    return 0
