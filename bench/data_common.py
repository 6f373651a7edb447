"""Shared corpus helpers for the data benchmarks (reads ../shared/data; never copied into the repo)."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"


def corpus_documents(wikitext=("wikitext2_valid.txt", "wikitext2_test.txt")) -> list[str]:
    """Real documents: WikiText-2 paragraphs, GPT-3 175B samples (split on <|endoftext|>), Shakespeare scenes."""
    c = SHARED / "corpus"
    docs = []
    for name in wikitext:
        docs += [l.strip() for l in (c / name).read_text().splitlines() if len(l.split()) > 5]
    for line in (c / "gpt3_175b_samples.jsonl").read_text().splitlines():
        if line.strip():
            docs += [d.strip() for d in json.loads(line).split("<|endoftext|>") if d.strip()]
    docs += [d.strip() for d in (c / "tinyshakespeare.txt").read_text().split("\n\n") if d.strip()]
    return docs


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"results: {path}")
    return path
