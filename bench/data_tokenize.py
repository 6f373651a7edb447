"""Tokenization throughput: `mnemos data tokenize` pipeline (datasets ingest -> batch encode -> .bin/.idx
shards) vs raw `sentencepiece` batch encoding of the same documents, same run, one thread each; then
the pipeline with 2 tasks on 2 processes (scaling). Writes bench/results/data_tokenize.json.

    python bench/data_tokenize.py [--repeat 3] [--copies 2]
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]
from data_common import corpus_documents, write_result  # noqa: E402
from launcher.argtypes import CommandParser  # noqa: E402


def main() -> None:
    ap = CommandParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--copies", type=int, default=2, help="corpus copies (more bytes, steadier timing)")
    ap.add_argument("--vocab-size", type=int, default=8000)
    a = ap.parse_args()
    import datasets  # noqa: F401  (one-time import, not a per-byte cost: excluded from both sides)
    import sentencepiece as spm
    from data.tokenize import tokenize_corpus
    from data.tokenizer import train_tokenizer

    docs = corpus_documents() * a.copies
    nbytes = sum(len(d.encode()) for d in docs)
    work = tempfile.mkdtemp(prefix="bench_tok_")
    try:
        with open(os.path.join(work, "train.txt"), "w") as f:
            f.write("\n".join(d.replace("\n", " ") for d in docs[: len(docs) // a.copies]))
        model = train_tokenizer([os.path.join(work, "train.txt")], os.path.join(work, "spm"), a.vocab_size,
                                input_sentence_size=200_000)
        half = (len(docs) + 1) // 2
        for k, part in enumerate((docs[:half], docs[half:])):
            with open(os.path.join(work, f"in{k}.jsonl"), "w") as f:
                for i, d in enumerate(part):
                    f.write(json.dumps({"id": f"{k}-{i}", "text": d}) + "\n")
        sp = spm.SentencePieceProcessor(model_file=model)
        raw_s, ours_s, par_s, raw_cpu, ours_cpu = [], [], [], [], []
        inputs = [os.path.join(work, "in0.jsonl"), os.path.join(work, "in1.jsonl")]
        tokenize_corpus(inputs, model, os.path.join(work, "warmup"), tasks=1, workers=1)  # one-time imports
        for r in range(a.repeat):
            t, c = time.perf_counter(), time.process_time()
            for s in range(0, len(docs), 256):
                sp.encode(docs[s:s + 256], num_threads=1)
            raw_s.append(time.perf_counter() - t)
            raw_cpu.append(time.process_time() - c)
            out = os.path.join(work, f"out{r}")
            t, c = time.perf_counter(), time.process_time()
            tokenize_corpus(inputs, model, out, tasks=1, workers=1)
            ours_s.append(time.perf_counter() - t)
            ours_cpu.append(time.process_time() - c)
            out = os.path.join(work, f"par{r}")
            t = time.perf_counter()
            tokenize_corpus(inputs, model, out, tasks=2, workers=2)
            par_s.append(time.perf_counter() - t)
        raw, ours, par = min(raw_s), min(ours_s), min(par_s)
        res = {"documents": len(docs), "bytes": nbytes, "vocab_size": a.vocab_size, "repeat": a.repeat,
               "raw_sentencepiece_batch_MBps": nbytes / raw / 1e6,
               "pipeline_1proc_MBps": nbytes / ours / 1e6,
               "pipeline_2proc_MBps": nbytes / par / 1e6,
               "ratio_pipeline_vs_raw_wall": raw / ours,
               "ratio_pipeline_vs_raw_per_core": min(raw_cpu) / min(ours_cpu),
               "raw_sentencepiece_batch_MBps_per_cpu_second": nbytes / min(raw_cpu) / 1e6,
               "pipeline_MBps_per_cpu_second": nbytes / min(ours_cpu) / 1e6,
               "scaling_2proc_vs_1proc": ours / par,
               "seconds": {"raw": raw_s, "pipeline_1proc": ours_s, "pipeline_2proc": par_s,
                           "raw_cpu": raw_cpu, "pipeline_1proc_cpu": ours_cpu},
               "notes": "best of `repeat`; raw = sp.encode(list, num_threads=1) on in-memory texts; pipeline = "
                        "jsonl read through datasets streaming + batch encode + .bin/.idx write, 1 task; "
                        "2proc = 2 tasks on 2 worker processes; per_core ratio uses CPU seconds of this process "
                        "(the 2-core machine is shared with other jobs, so wall-clock figures are noisy)"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| measure | value |\n| --- | --- |")
    for k in ("bytes", "raw_sentencepiece_batch_MBps", "pipeline_1proc_MBps", "pipeline_2proc_MBps",
              "raw_sentencepiece_batch_MBps_per_cpu_second", "pipeline_MBps_per_cpu_second",
              "ratio_pipeline_vs_raw_wall", "ratio_pipeline_vs_raw_per_core", "scaling_2proc_vs_1proc"):
        v = res[k]
        print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    write_result("data_tokenize", res)


if __name__ == "__main__":
    main()
