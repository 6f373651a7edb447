"""How fast `DocumentReader` reads local files, against `datasets` streaming the same files (the peer it
replaced; it was the reader until 2026-12-06), in the same run. Three workloads on ../shared/data:

  many_small_txt  200 small text files (a corpus of one short file per document)
  large_txt       WikiText-2 (valid + test) and Tiny Shakespeare, one document per line
  jsonl           the GPT-3 175B samples file, one JSON string per line

Both sides yield the same lines (checked), best of 3. Writes bench/results/data_reader.json.

    python bench/data_reader.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]
from data_common import SHARED, write_result  # noqa: E402


def peer_lines(paths: list[str]) -> list[str]:
    """What the reader did before: one `datasets` text builder per file, streamed."""
    import datasets
    datasets.disable_progress_bars()
    out = []
    for p in paths:
        ds = datasets.load_dataset("text", data_files=[p], split="train", streaming=True)
        out += [x for batch in ds.iter(batch_size=1024) for x in batch["text"]]
    return out


def ours_lines(paths: list[str]) -> list[str]:
    from data.io import DocumentReader
    reader = DocumentReader(paths, txt_sample_by="line", doc_separator=None)
    return [line for p in paths for line in reader._text_lines(p)]


def best_of(fn, paths, repeat=3) -> tuple[float, list[str]]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(paths)
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    corpus = SHARED / "corpus"
    work = tempfile.mkdtemp(prefix="bench_reader_")
    lines = (corpus / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    small = []
    for i in range(200):
        path = os.path.join(work, f"doc{i:04d}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(lines[i] + "\n")
        small.append(path)
    workloads = {"many_small_txt": small,
                 "large_txt": [str(corpus / n) for n in ("wikitext2_valid.txt", "wikitext2_test.txt",
                                                          "tinyshakespeare.txt")],
                 "jsonl": [str(corpus / "gpt3_175b_samples.jsonl")]}
    results = {}
    for name, paths in workloads.items():
        t_peer, a = best_of(peer_lines, paths)
        t_ours, b = best_of(ours_lines, paths)
        assert a == b, f"{name}: the readers disagree"
        mb = sum(os.path.getsize(p) for p in paths) / 1e6
        results[name] = {"files": len(paths), "lines": len(b), "megabytes": round(mb, 2),
                         "mnemos_s": round(t_ours, 4), "datasets_s": round(t_peer, 4),
                         "ratio_datasets_over_mnemos": round(t_peer / t_ours, 2)}
        print(f"| {name} | {len(paths)} files | mnemos {t_ours:.3f} s | datasets {t_peer:.3f} s | "
              f"{t_peer / t_ours:.1f}x |")
    write_result("data_reader", {"peer": f"datasets {__import__('datasets').__version__} streaming text builder",
                                 "workloads": results})


if __name__ == "__main__":
    main()
