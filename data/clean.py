"""One call for small corpora (quickstart, notebooks): normalise, deduplicate and decontaminate files
with the same steps as `mnemos data dedup` / `decontaminate`, and say what was removed."""

from __future__ import annotations

import logging
import os
from typing import Sequence

from .contamination import ContaminationCounter, ContaminationIndex, DecontaminationFilter
from .dedup import DedupFilter, DedupSignatures, find_duplicates
from .filters import TextNormalizer
from .io import DocumentReader, JsonlWriter
from .pipeline import LocalExecutor, _write_json

log = logging.getLogger(__name__)


def clean_corpus(inputs: Sequence[str], out_dir: str, eval_texts: Sequence[str | tuple[str, str]] | None = None,
                 registry_tasks: Sequence[str] | None | bool = False, eval_files: Sequence[str] = (),
                 min_n: int | None = 8, bands: int = 16, rows: int = 8, text_field: str = "text",
                 txt_sample_by: str = "auto", tasks: int = 1, workers: int = 1) -> dict:
    """Dedup (exact + MinHash-LSH) then GPT-3 App. C decontamination of `inputs`; the clean corpus is
    `OUT_DIR/clean/*.jsonl.zst`. Benchmarks: `eval_texts` (strings or (source, text)), `eval_files`,
    and the harness registry when `registry_tasks` is None (all tasks) or a list of names (False: not
    used). Returns a summary (also `OUT_DIR/clean_report.json`) with what was removed and why."""

    def reader():
        return DocumentReader(inputs, text_field=text_field, txt_sample_by=txt_sample_by)

    work = os.path.join(out_dir, "work")
    dedup_dir = os.path.join(out_dir, "dedup")
    LocalExecutor([reader(), TextNormalizer(), DedupSignatures(os.path.join(work, "minhash"))],
                  os.path.join(work, "logs", "signatures"), tasks=tasks, workers=workers).run()
    dup = find_duplicates(os.path.join(work, "minhash"), tasks, bands, rows)
    dstats = LocalExecutor([reader(), TextNormalizer(), DedupFilter(os.path.join(work, "minhash"), dup["removal_digest"]),
                            JsonlWriter(dedup_dir)], os.path.join(work, "logs", "dedup"), tasks=tasks,
                           workers=workers).run()

    texts = list(eval_texts or [])
    if registry_tasks is not False:
        index = ContaminationIndex.from_registry(registry_tasks, eval_files, min_n=min_n)
        if texts:
            extra = ContaminationIndex.from_texts(texts, min_n=min_n)
            index = _union(index, extra)
    else:
        from .contamination import eval_texts_from_files
        index = ContaminationIndex.from_texts(texts + list(eval_texts_from_files(eval_files)), min_n=min_n)
    clean_dir = os.path.join(out_dir, "clean")
    LocalExecutor([DocumentReader([dedup_dir]), ContaminationCounter(index, os.path.join(work, "contamination"))],
                  os.path.join(work, "logs", "count"), tasks=tasks, workers=workers).run()
    ignored = index.ignore_frequent(ContaminationCounter.merge(os.path.join(work, "contamination"), tasks))
    filt = DecontaminationFilter(index)
    cstats = LocalExecutor([DocumentReader([dedup_dir]), filt, JsonlWriter(clean_dir)],
                           os.path.join(work, "logs", "decontaminate"), tasks=tasks, workers=workers).run()
    reader_stats = dstats[0]
    d = next(s for s in dstats if s["step"] == "dedup")
    c = next(s for s in cstats if s["step"] == "decontaminate")
    summary = {
        "documents_in": reader_stats.get("documents", 0),
        "malformed_skipped": reader_stats.get("skipped", 0),
        "exact_duplicates_removed": d.get("dropped:exact_duplicate", 0),
        "near_duplicates_removed": d.get("dropped:near_duplicate", 0),
        "contaminated_documents_cut": c.get("cut", 0),
        "contaminated_documents_dropped": c.get("dropped", 0),
        "contaminated_chars_removed": c.get("chars_removed", 0),
        "benchmark_sources_matched": {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("matched_in:")},
        "benchmark_ngrams": len(index), "ignored_frequent_ngrams": ignored,
        "documents_out": next(s for s in cstats if s["step"] == "writer").get("documents", 0),
        "clean_dir": clean_dir, "duplicate_clusters": os.path.join(work, "minhash", "clusters.json"),
        "dedup_steps": dstats, "decontaminate_steps": cstats,
        "largest_duplicate_cluster": dup.get("largest_fuzzy_cluster", 0),
    }
    _write_json(os.path.join(out_dir, "clean_report.json"), summary)
    log.info("clean_corpus: %d documents in; removed %d exact + %d near duplicates; %d contaminated documents "
             "cut, %d dropped (%d characters); %d documents out -> %s", summary["documents_in"],
             summary["exact_duplicates_removed"], summary["near_duplicates_removed"],
             summary["contaminated_documents_cut"], summary["contaminated_documents_dropped"],
             summary["contaminated_chars_removed"], summary["documents_out"], clean_dir)
    return summary


def _union(a: ContaminationIndex, b: ContaminationIndex) -> ContaminationIndex:
    import numpy as np
    names = a.source_names + b.source_names
    hashes, sources = {}, {}
    for n in sorted(set(a.ns) | set(b.ns)):
        h = np.concatenate([a.hashes.get(n, np.zeros(0, np.uint64)), b.hashes.get(n, np.zeros(0, np.uint64))])
        s = np.concatenate([a.sources.get(n, np.zeros(0, np.int32)),
                            b.sources.get(n, np.zeros(0, np.int32)) + len(a.source_names)])
        h, first = np.unique(h, return_index=True)
        hashes[n], sources[n] = h, s[first]
    return ContaminationIndex(hashes, sources, names)
