"""Acceptance run at full size: the whole `mnemos data` pipeline on all of ../shared/data/corpus plus a
corpus with planted duplicates and planted benchmark passages (GPT-3 arithmetic items from the
harness registry and long passages from an extra benchmark file). Checks that exactly the planted
items are removed, everything else kept, and that the stage reports add up; records timings.
Writes bench/results/data_pipeline.json.

    python bench/data_pipeline.py [--workers 2]
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]
from data_common import SHARED, write_result  # noqa: E402
from launcher.argtypes import CommandParser  # noqa: E402


def main() -> None:
    ap = CommandParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    import argparse as _ap
    from data import cli
    from data.contamination import eval_texts_from_files
    from data.io import DocumentReader

    def mnemos_data(*argv):
        p = _ap.ArgumentParser(prog="mnemos")
        cli.register(p.add_subparsers(dest="command"))
        args = p.parse_args(["data", *map(str, argv)])
        t = time.perf_counter()
        rc = args.func(args)
        timings[argv[0]] = round(time.perf_counter() - t, 2)
        assert rc == 0, argv
        return rc

    timings: dict = {}
    work = tempfile.mkdtemp(prefix="bench_pipeline_")
    rng = np.random.default_rng(0)
    corpus = SHARED / "corpus"
    try:
        # the planted corpus: duplicates of real documents, arithmetic items, long benchmark passages
        wiki = [l for l in (corpus / "wikitext2_valid.txt").read_text().splitlines() if len(l.split()) > 100]
        # arithmetic items from the harness registry's evaluation split (its first examples are few-shot
        # demonstrations, not evaluation texts); the raw file if the registry is unavailable
        try:
            from evaluation.registry import iter_eval_texts
            arith = [t for _, (_, t) in zip(range(5), iter_eval_texts(["arithmetic_4ds"]))]
        except Exception:  # noqa: BLE001
            arith = [t for _, t in eval_texts_from_files([str(SHARED / "gpt3_arithmetic" / "four_digit_subtraction.jsonl")])]
        test_paras = [l for l in (corpus / "wikitext2_test.txt").read_text().splitlines() if len(l.split()) > 120]
        passages = [" ".join(p.split()[:60]) for p in test_paras[:5]]
        planted = []
        for i in range(20):
            planted.append({"id": f"exactdup{i}", "text": wiki[i].upper()})
            w = wiki[20 + i].split()
            w[rng.integers(len(w))] = "zzyzx"
            planted.append({"id": f"neardup{i}", "text": " ".join(w)})
        hosts = {}
        for i in range(5):   # arithmetic items and benchmark passages planted inside long clean documents
            host = " ".join(wiki[100 + 3 * i:103 + 3 * i])
            mid = host.index(" ", len(host) // 2)
            hosts[f"arith_host{i}"] = arith[i].strip()
            planted.append({"id": f"arith_host{i}", "text": host[:mid] + "\n" + arith[i].strip() + "\n" + host[mid:]})
            host = " ".join(wiki[200 + 3 * i:203 + 3 * i])
            mid = host.index(" ", len(host) // 2)
            hosts[f"passage_host{i}"] = passages[i]
            planted.append({"id": f"passage_host{i}", "text": host[:mid] + " " + passages[i] + " " + host[mid:]})
        raw = os.path.join(work, "raw")
        os.makedirs(raw)
        for name in ("wikitext2_valid.txt", "tinyshakespeare.txt"):
            shutil.copy(corpus / name, os.path.join(raw, name))       # one document per line
        shutil.copy(corpus / "gpt3_175b_samples.jsonl", os.path.join(raw, "gpt3_samples.jsonl"))
        with open(os.path.join(raw, "zz_planted.jsonl"), "w") as f:  # after the originals: copies are dropped
            for r in planted:
                f.write(json.dumps(r) + "\n")
            f.write("{broken json\n")
        bench = os.path.join(work, "extra_benchmark.jsonl")
        with open(bench, "w") as f:
            for p in passages:
                f.write(json.dumps({"text": p}) + "\n")
        W = ["--tasks", a.tasks, "--workers", a.workers]
        # one document per line, as planted (auto would read WikiText by section and the play by speech)
        mnemos_data("dedup", "-i", raw, "-o", os.path.join(work, "dedup"), "--txt-sample-by", "line", *W)
        mnemos_data("decontaminate", "-i", os.path.join(work, "dedup"), "-o", os.path.join(work, "clean"),
                    "--eval-file", bench, "--write-index", os.path.join(work, "train_ngrams.npz"), *W)
        mnemos_data("train-tokenizer", "-i", os.path.join(work, "clean"), "--model-prefix",
                    os.path.join(work, "tok", "spm"), "--vocab-size", 8000, "--input-sentence-size", 300000)
        mnemos_data("tokenize", "-i", os.path.join(work, "clean"), "-o", os.path.join(work, "tokens"),
                    "--tokenizer", os.path.join(work, "tok", "spm.model"), *W)
        mnemos_data("blend", "--dataset", f"all=1.0:{os.path.join(work, 'tokens')}", "-o", os.path.join(work, "blend"),
                    "--seq-len", 2048, "--tokenizer", os.path.join(work, "tok", "spm.model"))

        ds = json.load(open(os.path.join(work, "dedup", "stats.json")))
        cs = json.load(open(os.path.join(work, "clean", "stats.json")))
        ts = json.load(open(os.path.join(work, "tokens", "stats.json")))
        d = next(s for s in ds["steps"] if s["step"] == "dedup")
        c = next(s for s in cs["steps"] if s["step"] == "decontaminate")
        dedup_rejects = {x.id for x in DocumentReader([os.path.join(work, "dedup", "rejects")]).run()}
        clean = {x.id: x.text for x in DocumentReader([os.path.join(work, "clean")]).run()}
        # the raw corpus has its own duplicates (one document per line: repeated headings and speaker
        # lines): each removed document must belong to a cluster whose first member was kept
        clusters = json.load(open(os.path.join(work, "dedup", "minhash", "clusters.json")))
        kept_ids = {x.id for x in DocumentReader([os.path.join(work, "dedup")]).run()}
        in_cluster = {m for c in clusters["exact_clusters"] + clusters["fuzzy_clusters"] for m in c[1:]}
        heads_kept = all(c[0] in kept_ids for c in clusters["exact_clusters"] + clusters["fuzzy_clusters"])
        removed_have_copies = heads_kept and dedup_rejects == in_cluster and \
            clusters["exact_duplicates"] + clusters["near_duplicates"] == len(dedup_rejects)
        cut_ids = sorted({k.rsplit("#p", 1)[0] for k in clean if "#p" in k})  # pieces are ID#pK (records split
        # at <|endoftext|> are ID#J)
        joined = "\n".join(clean.values())
        checks = {
            "dedup_in_equals_kept_plus_dropped": d["documents_in"] == d["kept"] + d["dropped"],
            "dedup_removed_all_planted_duplicates": {r["id"] for r in planted if "dup" in r["id"]} <= dedup_rejects,
            "every_removed_document_has_a_kept_duplicate": removed_have_copies,
            "decontaminate_in_equals_clean_plus_cut_plus_dropped":
                c["documents_in"] == c.get("clean", 0) + c.get("cut", 0) + c.get("dropped", 0),
            "exactly_the_planted_hosts_cut": set(cut_ids) == set(hosts) and not c.get("dropped", 0),
            "planted_items_gone": all(v not in joined for v in hosts.values()),
            "malformed_record_counted": ds["steps"][0].get("skipped:malformed_json", 0) == 1,
            "tokenized_all_clean_documents": ts["documents"] == len(clean),
        }
        res = {"documents_in": d["documents_in"], "planted_duplicates": 40, "planted_benchmark_items": 10,
               "dedup": {k: v for k, v in d.items() if k != "step"},
               "decontaminate": {k: v for k, v in c.items() if k != "step"},
               "documents_cut": cut_ids, "tokens": ts["tokens"], "bytes_in": ds["steps"][0].get("chars", 0),
               "seconds": timings, "tasks": a.tasks, "workers": a.workers, "checks": checks,
               "all_checks_pass": all(checks.values())}
        print("| check | ok |\n| --- | --- |")
        for k, v in checks.items():
            print(f"| {k} | {v} |")
        print(f"stage seconds: {timings}")
        write_result("data_pipeline", res)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")


if __name__ == "__main__":
    main()
