"""The quickstart's self-made corpus: templated prose plus GPT-3-format arithmetic practice.

It plants, on purpose, what the data pipeline must catch: a few exact and near duplicate documents,
and a few evaluation examples of the arithmetic tasks the quickstart later evaluates on (the
decontamination stage must cut them out). Arithmetic practice never uses an evaluation pair otherwise.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ada", "Boris", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena",
         "Mateo", "Nia", "Oskar", "Priya", "Quinn", "Rosa", "Sami", "Tove"]
PLACES = ["the harbour", "the old mill", "the market", "the library", "the station", "the orchard",
          "the museum", "the river bank", "the lighthouse", "the bakery"]
THINGS = ["a lantern", "a map", "a violin", "a basket of apples", "a red kite", "a telescope", "a notebook",
          "a wooden boat", "a clock", "a pair of boots"]
VERBS = ["found", "repaired", "painted", "sold", "borrowed", "carried", "lost", "described", "built", "studied"]
WEATHER = ["rain", "fog", "snow", "wind", "sunshine"]
TEMPLATES = [
    "{a} walked to {p} in the {w} and {v} {t}.",
    "At {p}, {a} met {b}, who had {v} {t} the day before.",
    "{a} told {b} that {t} was waiting at {p}.",
    "When the {w} stopped, {a} and {b} {v} {t} near {p}.",
    "Nobody at {p} knew why {a} had {v} {t}.",
    "{b} asked {a} to bring {t} to {p} before the {w} came.",
]


def _sentence(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    return rng.choice(TEMPLATES).format(a=a, b=b, p=rng.choice(PLACES), t=rng.choice(THINGS),
                                        v=rng.choice(VERBS), w=rng.choice(WEATHER))


def _story(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(6, 14)))


def _arithmetic(rng: random.Random, forbidden: set[str]) -> str:
    """GPT-3 released format, several problems in a row, none of them an evaluation example."""
    lines = []
    while len(lines) < rng.randint(6, 12):
        x, y = rng.randint(0, 99), rng.randint(0, 99)
        if rng.random() < 0.5:
            q, ans = f"Q: What is {x} plus {y}?", x + y
        else:
            q, ans = f"Q: What is {x} minus {y}?", x - y
        if q in forbidden:
            continue
        lines.append(f"{q}\n\nA: {ans}")
    return "\n\n".join(lines)


def build_corpus(out_dir: Path, eval_examples: list[str], n_docs: int = 3000, n_valid: int = 200,
                 n_planted: int = 8, seed: int = 0) -> dict:
    """Write train.jsonl and valid.jsonl under out_dir; returns what was planted where."""
    rng = random.Random(seed)
    forbidden = {e.strip().split("\n")[0] for e in eval_examples}
    docs = [_story(rng) if rng.random() < 0.7 else _arithmetic(rng, forbidden) for _ in range(n_docs)]
    # Planted evaluation examples: each in the middle of an otherwise ordinary story.
    planted_ids = rng.sample(range(n_docs), n_planted)
    planted = rng.sample(eval_examples, n_planted)
    for i, example in zip(planted_ids, planted):
        docs[i] = _story(rng) + "\n\n" + example.strip() + "\n\n" + _story(rng)
    # Planted duplicates: exact copies and copies with one sentence changed at the end.
    exact = rng.sample(range(n_docs), 10)
    near = rng.sample(range(n_docs), 10)
    docs += [docs[i] for i in exact]
    docs += [docs[i] + " " + _sentence(rng) for i in near if len(docs[i]) > 600]
    rng.shuffle(docs)
    valid = [_story(rng) if rng.random() < 0.7 else _arithmetic(rng, forbidden) for _ in range(n_valid)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", docs), ("valid.jsonl", valid)):
        with open(out_dir / name, "w", encoding="utf-8") as f:
            for i, text in enumerate(rows):
                f.write(json.dumps({"id": f"{name.split('.')[0]}-{i}", "text": text}) + "\n")
    return {"documents": len(docs), "valid_documents": len(valid), "planted_eval_examples": planted,
            "planted_exact_duplicates": len(exact), "planted_near_duplicates": len(docs) - n_docs - len(exact)}
