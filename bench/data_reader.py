"""How fast `DocumentReader` reads local files, against `datasets` streaming the same files (the peer it
replaced; it was the reader until 2026-12-06), in the same run. Three workloads on ../shared/data:

  many_small_txt  200 small text files (a corpus of one short file per document)
  large_txt       WikiText-2 (valid + test) and Tiny Shakespeare, one document per line
  jsonl           the GPT-3 175B samples file, one JSON string per line

Both sides yield the same lines (checked), best of --repeat. Writes bench/results/data_reader.json (or --out);
the small files live in a temporary directory that is removed at the end.

    python bench/data_reader.py                                   # all three workloads, about 2 minutes
    python bench/data_reader.py --workloads many_small_txt --files 20 --out /tmp/reader.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]
from data_common import RESULTS, SHARED, machine  # noqa: E402
from launcher.argtypes import CommandParser, integer, output_file  # noqa: E402

WORKLOADS = ("many_small_txt", "large_txt", "jsonl")


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


def workload_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in WORKLOADS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"must be comma-separated names of {', '.join(WORKLOADS)}, got {text!r}")
    return names


def main(argv=None) -> int:
    ap = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", type=workload_list, default=list(WORKLOADS),
                    help=f"comma-separated, of {', '.join(WORKLOADS)} (default: all)")
    ap.add_argument("--files", type=integer(1), default=200, help="files of many_small_txt (default: 200)")
    ap.add_argument("--repeat", type=integer(1), default=3, help="timings per reader, the best is kept (default: 3)")
    ap.add_argument("--out", type=output_file, default=str(RESULTS / "data_reader.json"),
                    help="results JSON (default: bench/results/data_reader.json)")
    args = ap.parse_args(argv)
    corpus = SHARED / "corpus"
    scenes = (corpus / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    if args.files > len(scenes):
        ap.error(f"--files {args.files} (rule: at most {len(scenes)}, one Tiny Shakespeare scene per file)")
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as work:
        small = []
        for i in range(args.files if "many_small_txt" in args.workloads else 0):
            path = os.path.join(work, f"doc{i:04d}.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write(scenes[i] + "\n")
            small.append(path)
        workloads = {"many_small_txt": small,
                     "large_txt": [str(corpus / n) for n in ("wikitext2_valid.txt", "wikitext2_test.txt",
                                                              "tinyshakespeare.txt")],
                     "jsonl": [str(corpus / "gpt3_175b_samples.jsonl")]}
        results = {}
        for name in args.workloads:
            paths = workloads[name]
            t_peer, a = best_of(peer_lines, paths, args.repeat)
            t_ours, b = best_of(ours_lines, paths, args.repeat)
            assert a == b, f"{name}: the readers disagree"
            mb = sum(os.path.getsize(p) for p in paths) / 1e6
            results[name] = {"files": len(paths), "lines": len(b), "megabytes": round(mb, 2),
                             "mnemos_s": round(t_ours, 4), "datasets_s": round(t_peer, 4),
                             "ratio_datasets_over_mnemos": round(t_peer / t_ours, 2)}
            print(f"| {name} | {len(paths)} files | mnemos {t_ours:.3f} s | datasets {t_peer:.3f} s | "
                  f"{t_peer / t_ours:.1f}x |", flush=True)
    import datasets
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"machine": machine(), "peer": f"datasets {datasets.__version__} streaming text builder",
                               "repeat": args.repeat, "workloads": results}, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
