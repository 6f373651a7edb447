"""`mnemos data ...`: each stage reads and writes files, works shard by shard (`--tasks`, run locally
with `--workers` processes, or one task per Slurm array element with `--rank`), prints what it kept
and dropped, and writes JSON stats (`OUT/stats.json` plus per-task stats under `OUT/logs/`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from data.io import TXT_SAMPLE_BY
from launcher.argtypes import comma_list, integer, number, output_dir, output_file

log = logging.getLogger(__name__)


def doc_separator_option(q) -> None:
    from .io import DOC_SEPARATOR
    q.add_argument("--doc-separator", default=DOC_SEPARATOR,
                   help="a record's text is split into documents where this string occurs (GPT-2/3 style "
                        "dumps); '' keeps every record whole")


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="data pipeline: tokenizer, tokenize, dedup, decontaminate, blend, stats",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="data_command", metavar="STAGE")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    def common(q, out=True):
        q.add_argument("--input", "-i", nargs="+", required=True,
                       help="files, globs or directories (jsonl/parquet/txt, optionally .gz/.zst)")
        if out:
            q.add_argument("--out", "-o", type=output_dir, required=True, help="output directory")
        q.add_argument("--text-field", default="text", help="record field holding the text")
        q.add_argument("--txt-sample-by", default="auto", choices=list(TXT_SAMPLE_BY),
                       help="what one document is in plain-text inputs: a line, a paragraph (lines between blank "
                       "lines), or the whole file (cut at --doc-separator); auto: at the separator when the text has "
                       "it, else by paragraph when blank lines separate it, else by line (default)")
        doc_separator_option(q)
        q.add_argument("--max-chars", type=integer(1), default=100_000_000,
                       help="documents longer than this are counted as too_long and skipped")
        q.add_argument("--tasks", type=integer(1), default=1, help="number of shards/tasks the stage is split into")
        q.add_argument("--workers", type=integer(1), default=1, help="local processes running tasks")
        q.add_argument("--rank", type=integer(0), default=None,
                       help="run only this task (Slurm array element); default: all tasks locally")

    q = sub.add_parser("train-tokenizer", help="train a sentencepiece model")
    q.add_argument("--input", "-i", nargs="+", required=True,
                   help="text files, globs or directories to train on (jsonl/parquet/txt, optionally .gz/.zst)")
    q.add_argument("--text-field", default="text", help="record field holding the text")
    doc_separator_option(q)
    q.add_argument("--model-prefix", type=output_file, required=True, help="writes PREFIX.model, PREFIX.vocab, PREFIX.json")
    q.add_argument("--vocab-size", type=integer(1), required=True, help="pieces in the vocabulary (GPT-3: 50257)")
    q.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"], help="sentencepiece algorithm")
    q.add_argument("--no-byte-fallback", action="store_true",
                   help="map characters outside the vocabulary to <unk> instead of their UTF-8 bytes")
    q.add_argument("--no-split-digits", action="store_true",
                   help="let pieces hold several digits (by default each digit is its own piece)")
    q.add_argument("--input-sentence-size", type=integer(1), default=2_000_000, help="sentences sampled for training")
    q.add_argument("--user-defined-symbols", default="", help="comma-separated pieces kept whole")
    q.add_argument("--threads", type=integer(1), default=1, help="sentencepiece training threads")
    q.set_defaults(func=cmd_train_tokenizer)

    q = sub.add_parser("tokenize", help="tokenize into Megatron .bin/.idx shards (one per task)")
    common(q)
    q.add_argument("--tokenizer", required=True, help="sentencepiece .model")
    q.add_argument("--normalize", action="store_true", help="apply Unicode NFC + cleanup first")
    q.set_defaults(func=cmd_tokenize)

    q = sub.add_parser("filter", help="cleanup + heuristic quality filters (+ GPT-3 classifier)")
    common(q)
    q.add_argument("--min-words", type=integer(0), default=50, help="documents with fewer words are dropped")
    q.add_argument("--max-words", type=integer(0), default=100_000,
                   help="documents with more words are dropped (Gopher's bound for web text); 0: no bound, for books")
    q.add_argument("--no-heuristics", action="store_true",
                   help="skip the length, symbol and repetition filters (normalisation and a classifier still run)")
    q.add_argument("--classifier", help="quality_classifier.npz that an earlier run with --train-classifier-reference/raw "
                                        "wrote into its OUT")
    q.add_argument("--train-classifier-reference", nargs="*", default=[], help="reference (high quality) files")
    q.add_argument("--train-classifier-raw", nargs="*", default=[], help="raw crawl files")
    q.add_argument("--pareto-alpha", type=number(0, low_open=True), default=9.0,
                   help="GPT-3 resampling: keep a document when a Pareto(alpha) draw > 1 - its classifier score")
    q.add_argument("--seed", type=integer(0), default=0, help="seed of the classifier's resampling draws")
    q.set_defaults(func=cmd_filter)

    q = sub.add_parser("dedup", help="exact + MinHash-LSH deduplication")
    common(q)
    q.add_argument("--num-perm", type=integer(1), default=128,
                   help="MinHash permutations per document (must be >= bands x rows)")
    q.add_argument("--bands", type=integer(1), default=16,
                   help="LSH bands; two documents are candidates when one band matches")
    q.add_argument("--rows", type=integer(1), default=8, help="rows (hashes) per LSH band")
    q.add_argument("--shingle", type=integer(1), default=5, help="words per shingle")
    q.add_argument("--scheme", default="affine32", choices=["affine32", "legacy"],
                   help="MinHash hashing, as datasketch >= 2.0 (affine32) or < 2.0 (legacy)")
    q.add_argument("--no-exact", action="store_true", help="skip removing exact duplicates")
    q.add_argument("--no-fuzzy", action="store_true", help="skip MinHash near-duplicate removal")
    q.add_argument("--seed", type=integer(0), default=1, help="seed of the MinHash permutations")
    q.set_defaults(func=cmd_dedup)

    q = sub.add_parser("decontaminate", help="GPT-3 App. C 13-gram contamination filter")
    common(q)
    q.add_argument("--tasks-from-registry", default="all",
                   help="evaluation tasks whose texts are filtered: all, none, or T1,T2 (evaluation.registry)")
    q.add_argument("--eval-file", nargs="*", default=[], help="extra benchmark files (jsonl/json/txt)")
    q.add_argument("--data-dir", default=None,
                   help="root of the evaluation tasks' data files, as `mnemos eval --data-dir` (env MNEMOS_EVAL_DATA)")
    q.add_argument("--n", type=integer(1), default=13, help="n-gram length in words (GPT-3 App. C: 13)")
    q.add_argument("--min-n", type=integer(0), default=8,
                   help="benchmark texts shorter than N words are matched whole when they have >= MIN_N words "
                        "(0 = off, strict GPT-3: such texts are never matched)")
    q.add_argument("--max-train-docs", type=integer(1), default=10, help="ignore n-grams in more training docs")
    q.add_argument("--window", type=integer(0), default=200,
                   help="characters removed on either side of a matching n-gram")
    q.add_argument("--min-piece-chars", type=integer(0), default=200,
                   help="pieces of a cut document shorter than this are dropped")
    q.add_argument("--max-pieces", type=integer(0), default=10,
                   help="a document cut into more pieces than this is dropped whole")
    q.add_argument("--write-index", type=output_file,
                   help="also write the NgramIndex of the documents written to OUT, what training reads (for "
                        "`mnemos eval --contamination`)")
    q.add_argument("--index-ns", type=comma_list(integer(1), distinct=True), default=None,
                   help="n values of that index (default: every n the clean/dirty report of the registry's tasks "
                        "can ask for: 8-13, and each task's fixed contamination_ngram, 2 for the word scrambles)")
    q.set_defaults(func=cmd_decontaminate)

    q = sub.add_parser("blend", help="weighted blend + train/valid/test splits + cached indices")
    q.add_argument("--dataset", action="append", required=True, metavar="NAME=WEIGHT:PATH[,PATH]",
                   help="repeat per dataset (e.g. wiki=0.03:shards/wiki)")
    q.add_argument("--out", "-o", type=output_dir, required=True, help="output directory for the blend's index files")
    q.add_argument("--seq-len", type=integer(1), required=True, help="tokens per training sample")
    q.add_argument("--eos-id", type=integer(0), default=None,
                   help="end-of-document token id, for shards without a shards.json (default: their tokenizer's)")
    q.add_argument("--tokenizer", help="the tokenizer that made the shards (default: the one their shards.json names)")
    q.add_argument("--num-samples", type=integer(1), default=None, help="train samples (default: one pass worth)")
    q.add_argument("--split", type=comma_list(number(0)), default="98,1,1", help="train,valid,test document fractions")
    q.add_argument("--seed", type=integer(0), default=1234, help="seed of the shuffle and the split")
    q.set_defaults(func=cmd_blend)

    q = sub.add_parser("stats", help="documents, tokens, bytes of shards or jsonl/text files")
    q.add_argument("paths", nargs="*", help="shard prefixes, directories of shards, or jsonl/text files")
    q.add_argument("--input", "-i", nargs="+", default=[], help="the same, as the other stages take them")
    q.add_argument("--text-field", default="text", help="record field holding the text (jsonl/parquet documents)")
    q.add_argument("--json-out", type=output_file, help="write the stats JSON here")
    q.set_defaults(func=cmd_stats)


# ------------------------------------------------------------------------------------------- helpers
def _fail(stage: str, problem) -> int:
    print(f"mnemos data {stage}: {problem}", file=sys.stderr)
    return 2


def _first_lines(path: str, limit: int = 1000):
    """Up to `limit` lines of a text file: enough to tell an empty input from a real one."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if i >= limit:
                return
            yield line


def _refused(a) -> bool:
    """Rules between options, and input formats, checked before a stage reads or writes anything; prints each
    broken one."""
    from .io import detect_format, expand_paths
    paths = expand_paths(a.input)  # a missing input is a FileNotFoundError: one line from `mnemos`
    problems = [] if paths else [f"no input files in {a.input}"]
    for path in paths:
        if path.startswith("hf://"):
            continue
        try:
            detect_format(path)
        except ValueError as err:
            problems.append(str(err))
    if paths and getattr(a, "text_field", None):
        problems += _missing_text_field(paths, a)
    problems += _earlier_task_count(a)
    if getattr(a, "rank", None) is not None and a.rank >= a.tasks:
        problems.append(f"--rank={a.rank} (rule: a task number below --tasks={a.tasks})")
    if getattr(a, "num_perm", None) is not None and a.bands * a.rows > a.num_perm:
        problems.append(f"--bands={a.bands} x --rows={a.rows} = {a.bands * a.rows} "
                        f"(rule: at most --num-perm={a.num_perm} signature values)")
    for problem in problems:
        print(f"mnemos data {a.data_command}: {problem}", file=sys.stderr)
    return bool(problems)


def _earlier_task_count(a) -> list[str]:
    """OUT written by a run with other --tasks: its files of tasks this run does not have would stay beside
    the new ones and be read by the next stage as part of this output (documents twice)."""
    import glob
    import json
    out, tasks = getattr(a, "out", None), getattr(a, "tasks", None)
    if not out or tasks is None:
        return []
    earlier = set()
    stats = glob.glob(os.path.join(out, "logs", "stats", "*.json"))  # one-step stages (tokenize)
    for path in stats + glob.glob(os.path.join(out, "logs", "*", "stats", "*.json")):
        try:
            with open(path) as f:
                earlier.add(int(json.load(f)["tasks"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    earlier.discard(tasks)
    if not earlier:
        return []
    return [f"--tasks={tasks} but {out} holds the output of a run with --tasks={max(earlier)} (rule: re-run a stage "
            f"into its OUT with the same --tasks, or give a new --out; its other tasks' files would be read as "
            f"part of this output)"]


def _missing_text_field(paths: list[str], a) -> list[str]:
    """A --text-field the records do not have would skip every record and write empty output; the first
    record of the first file tells it cheaply (records missing it further on are counted and skipped)."""
    from .io import DocumentReader
    local = [p for p in paths if not p.startswith("hf://")]  # the hub is not read for a check
    if not local:
        return []
    reader = DocumentReader(local[:1], text_field=a.text_field, txt_sample_by=getattr(a, "txt_sample_by", "auto"))
    try:
        _, record, _ = next(iter(reader._records(local[0])), (0, None, ""))
    except Exception:  # noqa: BLE001  an unreadable file is counted by the stage itself
        return []
    if isinstance(record, dict) and a.text_field not in record:
        fields = ", ".join(map(str, list(record)[:12]))
        return [f"--text-field={a.text_field!r} is not a field of {local[0]} (rule: the field holding the text; "
                f"its first record has: {fields})"]
    return []


def _reader(a):
    from .io import DocumentReader
    return DocumentReader(a.input, text_field=a.text_field, txt_sample_by=a.txt_sample_by, max_chars=a.max_chars,
                          doc_separator=a.doc_separator)


def _execute(pipeline, logging_dir: str, a):
    from .pipeline import LocalExecutor
    ex = LocalExecutor(pipeline, logging_dir, tasks=a.tasks, workers=a.workers)
    if a.rank is not None:
        ex.run_task(a.rank)
        if not all(ex.is_done(r) for r in range(a.tasks)):
            return None
        return ex.merged_stats()
    return ex.run()


def _report(title: str, steps: list[dict], out_dir: str, extra: dict | None = None) -> dict:
    from .pipeline import _write_json, format_stats
    reader = next((s for s in steps if s["step"] == "reader"), {})
    summary = {"stage": title, "steps": steps, **(extra or {})}
    n_in = reader.get("documents", 0)
    summary["documents_in"] = n_in
    print(f"== mnemos data {title} ==")
    skipped = {k: v for k, v in reader.items() if k.startswith("skipped")}
    print(f"read {n_in} documents from {reader.get('files', 0)} files"
          + (f"; skipped malformed records: {skipped}" if skipped else "")
          + (f"; unreadable files: {reader['unreadable_files']}" if reader.get("unreadable_files") else ""))
    print(format_stats(steps))
    if not n_in and reader.get("records"):  # every record was malformed: an empty output would pass for a result
        summary["error"] = (f"none of the {reader['records']} records read became a document ({skipped}); rule: "
                            f"jsonl holds one JSON object per line, .json one array of records (or an object "
                            f"holding one), each with the text in --text-field={summary.get('text_field', 'text')!r}")
        print(f"mnemos data {title}: {summary['error']}", file=sys.stderr)
    path = os.path.join(out_dir, "stats.json")
    _write_json(path, summary)
    print(f"stats: {path}")
    return summary


def _pending(a) -> int:
    print(f"task {a.rank} done; run the remaining tasks, then re-run without --rank to finish the stage")
    return 0


# ------------------------------------------------------------------------------------------- commands
def cmd_train_tokenizer(a) -> int:
    import tempfile
    from .io import DocumentReader, detect_format
    from .pipeline import _write_json
    from .tokenizer import Tokenizer, check_vocab_size, train_tokenizer
    if _refused(a):
        return 2
    symbols = [s for s in a.user_defined_symbols.split(",") if s]
    try:
        check_vocab_size(a.vocab_size, not a.no_byte_fallback, symbols)
    except ValueError as err:
        return _fail("train-tokenizer", err)
    files = []
    tmp = None
    from .io import expand_paths
    paths = expand_paths(a.input)
    if all(detect_format(p) == "text" and not p.endswith(".gz") and not p.endswith(".zst") for p in paths):
        files = paths
    else:  # jsonl/parquet/compressed: extract the text once
        tmp = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8")
        for doc in DocumentReader(paths, text_field=a.text_field, doc_separator=a.doc_separator).run():
            tmp.write(doc.text.replace("\r", "") + "\n")
        tmp.close()
        files = [tmp.name]
    try:
        if not any(line.strip() for f in files for line in _first_lines(f)):
            return _fail("train-tokenizer", f"no text in {paths} (field {a.text_field!r} for jsonl/parquet)")
        path = train_tokenizer(files, a.model_prefix, a.vocab_size, model_type=a.model_type,
                               byte_fallback=not a.no_byte_fallback, split_digits=not a.no_split_digits,
                               input_sentence_size=a.input_sentence_size, num_threads=a.threads,
                               user_defined_symbols=symbols)
    except RuntimeError as err:  # sentencepiece's own refusals, e.g. fewer pieces than required characters
        return _fail("train-tokenizer", f"sentencepiece refused the input: {str(err).split('] ')[-1].strip()}")
    finally:
        if tmp is not None:
            os.remove(tmp.name)
    tok = Tokenizer(path)
    info = {"model": path, "vocab_size": tok.vocab_size, "padded_vocab_size_128": tok.padded_vocab_size(128),
            "eos_id": tok.eos_id, "pad_id": tok.pad_id, "model_type": a.model_type, "inputs": paths}
    _write_json(a.model_prefix + ".json", info)
    print(f"tokenizer: {path} (vocab {tok.vocab_size}, padded to {tok.padded_vocab_size(128)} for TP; "
          f"end-of-text id {tok.eos_id}); info: {a.model_prefix}.json")
    return 0


def cmd_tokenize(a) -> int:
    if _refused(a):
        return 2
    from .filters import TextNormalizer
    from .tokenize import TokenizeStep, shard_stats
    from .pipeline import _write_json
    step = TokenizeStep(a.tokenizer, a.out)
    pipeline = [_reader(a)] + ([TextNormalizer()] if a.normalize else []) + [step]
    steps = _execute(pipeline, os.path.join(a.out, "logs"), a)
    if steps is None:
        return _pending(a)
    shards = [shard_stats(step.shard_prefix(r)) for r in range(a.tasks)]
    tot = {k: sum(s[k] for s in shards) for k in ("documents", "tokens", "bytes")}
    summary = _report("tokenize", steps, a.out, {"shards": shards, **tot, "text_field": a.text_field})
    from .tokenizer import Tokenizer
    tok = Tokenizer(a.tokenizer)
    _write_json(os.path.join(a.out, "shards.json"), {"tokenizer": os.path.abspath(a.tokenizer),
                                                     "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                                                     "prefixes": [s["prefix"] for s in shards], **tot})
    print(f"wrote {a.tasks} shard(s) to {a.out}: {tot['documents']} documents, {tot['tokens']} tokens, "
          f"{tot['bytes']} bytes")
    ours = {os.path.basename(s["prefix"]) for s in shards}
    stale = sorted(f[:-4] for f in os.listdir(a.out) if f.endswith(".idx") and f[:-4] not in ours)
    if stale:  # from an earlier run with more --tasks: not in shards.json, so blend/stats/train skip them
        print(f"note: {a.out} also holds {', '.join(stale)} from an earlier run; shards.json does not list "
              f"them and the later stages read only the listed shards")
    reader = next((st for st in steps if st["step"] == "reader"), {})
    cut = [m for m in ("line", "paragraph") if reader.get(f"text_files_by_{m}")]
    if cut and tot["documents"] and tot["tokens"] / tot["documents"] < 64:
        # a book cut into lines (or short speeches): an end-of-text id between pieces of one text
        print(f"note: plain text was read one document per {' or '.join(cut)} (--txt-sample-by {a.txt_sample_by}), "
              f"{tot['tokens'] // tot['documents']} tokens per document on average: training puts an end-of-text id "
              f"between them and never sees the text run on. For a book or an article per file use --txt-sample-by "
              f"document.")
    return _exit(summary)


def _exit(summary: dict) -> int:
    return 1 if summary.get("error") else 0


def cmd_filter(a) -> int:
    if _refused(a):
        return 2
    from .filters import (ClassifierFilter, LengthFilter, QualityClassifier, RepetitionFilter, SymbolRatioFilter,
                          TextNormalizer)
    from .io import DocumentReader, JsonlWriter
    steps = [_reader(a), TextNormalizer()]
    if not a.no_heuristics:
        steps += [LengthFilter(a.min_words, a.max_words or None,
                               rejects_writer=JsonlWriter(os.path.join(a.out, "rejects"), prefix="length_")),
                  SymbolRatioFilter(rejects_writer=JsonlWriter(os.path.join(a.out, "rejects"), prefix="symbols_")),
                  RepetitionFilter(rejects_writer=JsonlWriter(os.path.join(a.out, "rejects"), prefix="repetition_"))]
    clf = None
    if a.train_classifier_reference or a.train_classifier_raw:
        if not (a.train_classifier_reference and a.train_classifier_raw):
            print("mnemos data filter: training the classifier needs both --train-classifier-reference and "
                  "--train-classifier-raw", file=sys.stderr)
            return 2
        ref = [d.text for d in DocumentReader(a.train_classifier_reference, text_field=a.text_field).run()]
        raw = [d.text for d in DocumentReader(a.train_classifier_raw, text_field=a.text_field).run()]
        clf = QualityClassifier().fit(ref, raw, seed=a.seed)
        os.makedirs(a.out, exist_ok=True)
        clf.save(os.path.join(a.out, "quality_classifier.npz"))
        print(f"trained quality classifier on {len(ref)} reference / {len(raw)} raw documents -> "
              f"{os.path.join(a.out, 'quality_classifier.npz')} (give it to --classifier)")
    elif a.classifier:
        try:
            clf = QualityClassifier.load(a.classifier)
        except (OSError, ValueError) as err:
            return _fail("filter", f"--classifier={a.classifier}: {getattr(err, 'strerror', None) or err}")
    if clf is not None:
        steps.append(ClassifierFilter(clf, alpha=a.pareto_alpha, seed=a.seed, rejects_writer=JsonlWriter(
            os.path.join(a.out, "rejects"), prefix="classifier_")))
    steps.append(JsonlWriter(a.out))
    res = _execute(steps, os.path.join(a.out, "logs"), a)
    if res is None:
        return _pending(a)
    return _exit(_report("filter", res, a.out, {"kept": res[-1].get("documents", 0), "text_field": a.text_field}))


def cmd_dedup(a) -> int:
    if _refused(a):
        return 2
    from .dedup import DedupFilter, DedupSignatures, find_duplicates, format_s_curve, plot_s_curve
    from .io import JsonlWriter
    print(format_s_curve(a.bands, a.rows))
    os.makedirs(a.out, exist_ok=True)
    print(f"S-curve plot: {plot_s_curve(a.bands, a.rows, os.path.join(a.out, 's_curve.png'))}")
    work = os.path.join(a.out, "minhash")
    sigs = DedupSignatures(work, num_perm=a.num_perm, shingle=a.shingle, seed=a.seed, scheme=a.scheme)
    r1 = _execute([_reader(a), sigs], os.path.join(a.out, "logs", "signatures"), a)
    if r1 is None:
        return _pending(a)
    report = find_duplicates(work, a.tasks, a.bands, a.rows, exact=not a.no_exact, fuzzy=not a.no_fuzzy)
    a2 = argparse.Namespace(**{**vars(a), "rank": None})
    dedup = DedupFilter(work, report["removal_digest"], rejects_writer=JsonlWriter(os.path.join(a.out, "rejects")))
    res = _execute([_reader(a), dedup, JsonlWriter(a.out)], os.path.join(a.out, "logs", "filter"), a2)
    extra = {k: v for k, v in report.items() if not k.endswith("_clusters") and k != "removal_digest"}
    extra["clusters_file"] = os.path.join(work, "clusters.json")
    summary = _report("dedup", res, a.out, {**extra, "text_field": a.text_field})
    print(f"exact duplicates removed: {report['exact_duplicates']} ({report['num_exact_clusters']} clusters); "
          f"near duplicates removed: {report['near_duplicates']} ({report['num_fuzzy_clusters']} clusters, "
          f"largest {report['largest_fuzzy_cluster']}); clusters: {extra['clusters_file']}")
    return _exit(summary)


def cmd_decontaminate(a) -> int:
    if _refused(a):
        return 2
    from evaluation.task import TaskError
    from .contamination import (ContaminationCounter, ContaminationIndex, DecontaminationFilter, NgramIndexStep,
                                report_index_ns)
    from .io import JsonlWriter
    reg = a.tasks_from_registry
    tasks = None if reg == "all" else ([] if reg == "none" else reg.split(","))
    try:
        index = ContaminationIndex.from_registry(tasks, a.eval_file, n=a.n, min_n=a.min_n or None,
                                                 data_dir=a.data_dir)
        index_ns = [int(x) for x in a.index_ns.split(",")] if a.index_ns else report_index_ns()
    except (RuntimeError, TaskError) as err:
        print(f"mnemos data decontaminate: {err}", file=sys.stderr)
        return 2
    print(f"benchmark n-grams: {len(index)} (n={index.ns}) from {len(index.source_names)} sources")
    if index.missing_tasks:  # the training text is not filtered against these: say so where it is read
        print(f"note: not filtered against {len(index.missing_tasks)} registry task(s) without data here (give "
              f"--data-dir or MNEMOS_EVAL_DATA): {', '.join(index.missing_tasks)}")
    work = os.path.join(a.out, "contamination")
    r1 = _execute([_reader(a), ContaminationCounter(index, work)], os.path.join(a.out, "logs", "count"), a)
    if r1 is None:
        return _pending(a)
    counts = ContaminationCounter.merge(work, a.tasks)
    ignored = index.ignore_frequent(counts, a.max_train_docs)
    print(f"ignoring {ignored} benchmark n-grams found in more than {a.max_train_docs} training documents")
    filt = DecontaminationFilter(index, window=a.window, min_piece_chars=a.min_piece_chars, max_pieces=a.max_pieces)
    pass2 = [_reader(a), filt, JsonlWriter(a.out)]
    if a.write_index:  # after the writer: the index holds what the model trains on, not the input
        pass2.append(NgramIndexStep(index_ns, work))
    a2 = argparse.Namespace(**{**vars(a), "rank": None})
    res = _execute(pass2, os.path.join(a.out, "logs", "filter"), a2)
    if a.write_index:
        idx = NgramIndexStep.merge(work, a.tasks, a.write_index)
        print(f"training n-gram index of the written documents: {a.write_index} ({idx})")
    f = next(s for s in res if s["step"] == "decontaminate")
    summary = _report("decontaminate", res, a.out, {"ignored_frequent_ngrams": ignored, "benchmark_ngrams": len(index),
                                                    "sources": index.source_names, "text_field": a.text_field,
                                                    "tasks_without_data": index.missing_tasks})
    print(f"documents in {f.get('documents_in', 0)}: clean {f.get('clean', 0)}, cut {f.get('cut', 0)} "
          f"(-> {f.get('pieces_out', 0)} pieces), dropped {f.get('dropped', 0)}; "
          f"characters removed {f.get('chars_removed', 0)}")
    return _exit(summary)


def cmd_blend(a) -> int:
    from .blend import DatasetSpec, build_blend, check_one_tokenizer, format_blend
    from .tokenizer import Tokenizer
    try:
        specs = [DatasetSpec.parse(d) for d in a.dataset]
        split = [float(x) for x in a.split.split(",")]
        tokenizer = check_one_tokenizer(specs, a.tokenizer)  # the shards' shards.json name theirs
        eos = a.eos_id
        if tokenizer is not None:
            made = Tokenizer(tokenizer).eos_id
            if eos is not None and eos != made:
                raise ValueError(f"--eos-id {eos} but the shards' tokenizer {tokenizer} ends documents with id "
                                 f"{made} (rule: the end-of-text id of the tokenizer that made the shards)")
            eos = made
        elif eos is None:
            raise ValueError("give --eos-id or --tokenizer (the shards have no shards.json naming their tokenizer)")
        summary = build_blend(specs, a.seq_len, eos, a.out, num_samples=a.num_samples, split=split, seed=a.seed,
                              tokenizer=tokenizer)
    except (ValueError, FileNotFoundError) as err:
        print(f"mnemos data blend: {err}", file=sys.stderr)
        return 2
    print(format_blend(summary))
    print(f"blend: {os.path.join(a.out, 'blend.json')}; train on it with `data: {{blend: {a.out}, "
          f"seq_len: {a.seq_len}}}` (it fills data.train, data.weights, data.valid and data.tokenizer)")
    return 0


def _stage_of(path: str) -> str | None:
    """The `mnemos data` stage that wrote a directory (its stats.json), if any."""
    import json
    try:
        with open(os.path.join(path, "stats.json")) as f:
            return json.load(f).get("stage")
    except (OSError, ValueError, AttributeError):
        return None


def _why_no_total(inputs: list[dict]) -> str | None:
    """Why the inputs' counts must not be added (None: they are like datasets, e.g. tokens/web tokens/wiki):
    token shards and documents files differ in what a byte is, and two stages of one pipeline (dedup/ and
    clean/, or clean/ and its tokens) hold the same corpus twice."""
    kinds = {i["kind"] for i in inputs}
    if len(kinds) > 1:
        return ("the inputs are of different kinds (" + ", ".join(f"{i['path']}: {i['kind']}" for i in inputs)
                + "): likely stages of one corpus, and shard bytes are token data while file bytes are (compressed) "
                "files")
    # documents: None is not a stage's output (raw files); token shards all come from tokenize
    stages = {i.get("stage") for i in inputs} if inputs[0]["kind"] == "documents" else set()
    if len(stages) > 1:
        return ("the inputs were written by different stages (" + ", ".join(
            f"{i['path']}: {i.get('stage') or 'no mnemos stage'}" for i in inputs) + "): likely the same corpus twice")
    paths = [r for i in inputs for r in i["files"]]
    if len(set(paths)) < len(paths):
        return "some files are named by more than one input: they would be counted twice"
    return None


def cmd_stats(a) -> int:
    from .io import DocumentReader, expand_paths
    from .pipeline import _write_json
    from .tokenize import find_prefixes, shard_stats
    paths = list(a.paths) + list(a.input)
    if not paths:
        return _fail("stats", "give the shards or files to count (paths, or --input)")
    rows, empty, inputs = [], [], []
    for p in paths:
        before = len(rows)
        is_shards = (os.path.isdir(p) and any(f.endswith(".idx") for f in os.listdir(p))) or \
            os.path.exists(p + ".idx") or p.endswith((".idx", ".bin"))
        if is_shards:
            rows.extend({**shard_stats(x), "kind": "token shards"} for x in find_prefixes([p]))
        else:
            files = expand_paths([p])
            missing = _missing_text_field(files, a) if files else []
            if missing:
                return _fail("stats", missing[0])
            for f in files:
                r = DocumentReader([f], text_field=a.text_field)
                docs = chars = 0
                for d in r.run():
                    docs += 1
                    chars += len(d.text)
                rows.append({"path": f, "kind": "documents", "documents": docs, "chars": chars,
                             "bytes": os.path.getsize(f), "skipped": int(r.stats.get("skipped", 0))})
        if len(rows) == before:
            empty.append(p)
            continue
        mine = rows[before:]
        inputs.append({"path": p, "kind": mine[0]["kind"], "stage": _stage_of(p) if os.path.isdir(p) else None,
                       "rows": (before, len(rows)),
                       "files": [os.path.realpath(r.get("prefix", r.get("path"))) for r in mine],
                       **{k: sum(r.get(k, 0) for r in mine) for k in ("documents", "tokens", "chars", "bytes")}})
    if empty:  # e.g. a blend directory: a table of zeros would read as "no data"
        print(f"mnemos data stats: no .bin/.idx shards and no jsonl/parquet/txt documents in {', '.join(empty)}"
              + ("; a blend's sample counts are in its blend.json" if any(
                  os.path.exists(os.path.join(p, "blend.json")) for p in empty) else ""), file=sys.stderr)
        return 2
    print("| path | kind | documents | tokens | bytes |")
    print("| --- | --- | --- | --- | --- |")
    for i in inputs:
        mine = rows[i["rows"][0]:i["rows"][1]]
        for r in mine:
            print(f"| {r.get('prefix', r.get('path'))} | {r['kind']} | {r['documents']} | {r.get('tokens', '-')} | "
                  f"{r['bytes']} |")
        if len(inputs) > 1 and len(mine) > 1:  # each input is one dataset: its files add up
            print(f"| total of {i['path']} | {i['kind']} | {i['documents']} | "
                  f"{i['tokens'] if i['kind'] == 'token shards' else '-'} | {i['bytes']} |")
    why = _why_no_total(inputs) if len(inputs) > 1 else None
    total = None
    if why is None:
        kind = inputs[0]["kind"]
        total = {"kind": kind, **{k: sum(i[k] for i in inputs) for k in ("documents", "bytes")}}
        total["tokens" if kind == "token shards" else "chars"] = sum(
            i["tokens" if kind == "token shards" else "chars"] for i in inputs)
        print(f"| total | {kind} | {total['documents']} | {total.get('tokens', '-')} | {total['bytes']} |")
    else:
        print(f"no total over the inputs: {why}; each input is totalled on its own")
    print("bytes: token data (.bin) for token shards, the file size on disk (compressed or not) for documents")
    if a.json_out:
        _write_json(a.json_out, {"rows": rows, "inputs": [{k: v for k, v in i.items() if k not in ("files", "rows")}
                                                           for i in inputs],
                                 "total": total, **({"no_total": why} if why else {})})
    return 0
