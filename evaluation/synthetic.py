"""GPT-3's synthetic tasks (Brown et al. 2020, Section 3.9), generated as the paper describes.

Arithmetic (Section 3.9.1), 2,000 instances per task, operands drawn uniformly:
  2D+ 2D- 3D+ 3D- 4D+ 4D- 5D+ 5D-: two integers from [0, 10^n); subtraction answers may be negative.
  2Dx: two integers from [0, 100).  1DC: three integers from [0, 10) with two operators from {+, -, *},
  parenthesised around the first two operands as in the released file: "(9 + 8) * 2".
Format, byte-identical to the released files (openai/gpt-3 data/*.jsonl):
  {"context": "\\n\\nQ: What is 98 plus 45?\\n\\nA:", "completion": " 143"}

Word scrambling (Section 3.9.2), from a word list (the 10,000 most frequent words of 5-14 letters):
  CL cycle letters, A1 anagram all but first and last letter, A2 anagram all but first and last two,
  RI a random punctuation or space character inserted between letters, RW reversed word.
Format: {"context": "\\nasinoc =", "completion": " casino"}

Every generator is seeded: (task, seed, n) determines the output exactly.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import string
from pathlib import Path
from typing import Iterable

# kind -> (digits, operator word) ; names follow lm-evaluation-harness (arithmetic_2da ...)
ARITHMETIC = {
    "2da": (2, "plus"), "2ds": (2, "minus"), "3da": (3, "plus"), "3ds": (3, "minus"),
    "4da": (4, "plus"), "4ds": (4, "minus"), "5da": (5, "plus"), "5ds": (5, "minus"),
    "2dm": (2, "times"), "1dc": (1, "compound"),
}
# file names of the released GPT-3 data
ARITHMETIC_FILES = {
    "2da": "two_digit_addition.jsonl", "2ds": "two_digit_subtraction.jsonl",
    "3da": "three_digit_addition.jsonl", "3ds": "three_digit_subtraction.jsonl",
    "4da": "four_digit_addition.jsonl", "4ds": "four_digit_subtraction.jsonl",
    "5da": "five_digit_addition.jsonl", "5ds": "five_digit_subtraction.jsonl",
    "2dm": "two_digit_multiplication.jsonl", "1dc": "single_digit_three_ops.jsonl",
}
PAPER_NAMES = {"2da": "2D+", "2ds": "2D-", "3da": "3D+", "3ds": "3D-", "4da": "4D+", "4ds": "4D-",
               "5da": "5D+", "5ds": "5D-", "2dm": "2Dx", "1dc": "1DC"}
SCRAMBLES = {"cl": "cycle letters", "a1": "anagrams 1", "a2": "anagrams 2", "ri": "random insertion",
             "rw": "reversed words"}
_WORDS = {"plus": "+", "minus": "-", "times": "*"}
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _rng(task: str, seed: int) -> random.Random:
    return random.Random(f"mnemos/{task}/{seed}")  # str seeds hash deterministically (sha512)


def arithmetic_question(kind: str, rng: random.Random) -> tuple[str, int]:
    digits, op = ARITHMETIC[kind]
    if op == "compound":
        a, b, c = (rng.randrange(10) for _ in range(3))
        o1, o2 = rng.choice("+-*"), rng.choice("+-*")
        return f"({a} {o1} {b}) {o2} {c}", _OPS[o2](_OPS[o1](a, b), c)
    a, b = rng.randrange(10 ** digits), rng.randrange(10 ** digits)
    return f"{a} {op} {b}", _OPS[_WORDS[op]](a, b)


def arithmetic_docs(kind: str, n: int = 2000, seed: int = 1234) -> list[dict]:
    """n instances of arithmetic task `kind` (2da, 2ds, ..., 2dm, 1dc) in the released format."""
    if kind not in ARITHMETIC:
        raise KeyError(f"arithmetic task {kind!r}: expected one of {sorted(ARITHMETIC)}")
    rng = _rng(f"arithmetic_{kind}", seed)
    docs = []
    for _ in range(n):
        q, ans = arithmetic_question(kind, rng)
        docs.append({"context": f"\n\nQ: What is {q}?\n\nA:", "completion": f" {ans}"})
    return docs


_Q = re.compile(r"Q: What is (.+?)\?\n\nA:\s*$")


def solve_arithmetic_prompt(context: str) -> str | None:
    """The right completion (" 143") for a prompt ending in a GPT-3 arithmetic question, else None."""
    m = _Q.search(context)
    if not m:
        return None
    expr = m.group(1)
    m2 = re.fullmatch(r"\((-?\d+) ([-+*]) (-?\d+)\) ([-+*]) (-?\d+)", expr)
    if m2:
        a, o1, b, o2, c = m2.groups()
        return f" {_OPS[o2](_OPS[o1](int(a), int(b)), int(c))}"
    m3 = re.fullmatch(r"(-?\d+) (plus|minus|times) (-?\d+)", expr)
    if m3:
        a, op, b = m3.groups()
        return f" {_OPS[_WORDS[op]](int(a), int(b))}"
    return None


def scramble(kind: str, word: str, rng: random.Random) -> str:
    """One scrambled form of `word` (GPT-3 Section 3.9.2)."""
    if kind == "cl":  # cycle letters: "lyinevitab" = "inevitably"
        i = rng.randrange(1, len(word)) if len(word) > 1 else 0
        return word[i:] + word[:i]
    if kind in ("a1", "a2"):  # anagram of all but the first and last k letters
        k = 1 if kind == "a1" else 2
        mid = list(word[k:-k])
        for _ in range(10):  # prefer a shuffle that differs from the word
            rng.shuffle(mid)
            if "".join(mid) != word[k:-k]:
                break
        return word[:k] + "".join(mid) + word[-k:]
    if kind == "ri":  # random insertion: "s.u!c/c!e.s s i/o/n" = "succession"
        chars = string.punctuation + " "
        return "".join(c + rng.choice(chars) for c in word[:-1]) + word[-1]
    if kind == "rw":  # reversed word: "stcejbo" = "objects"
        return word[::-1]
    raise KeyError(f"word-scramble task {kind!r}: expected one of {sorted(SCRAMBLES)}")


def scramble_docs(kind: str, words: list[str], n: int = 2000, seed: int = 1234) -> list[dict]:
    """n instances of word-scramble task `kind` (cl, a1, a2, ri, rw) over `words`."""
    if not words:
        raise ValueError("word-scramble tasks need a non-empty word list")
    rng = _rng(f"scramble_{kind}", seed)
    chosen = rng.sample(words, n) if len(words) >= n else [rng.choice(words) for _ in range(n)]
    return [{"context": f"\n{scramble(kind, w, rng)} =", "completion": f" {w}"} for w in chosen]


def build_word_list(texts: Iterable[str], n: int = 10000, min_len: int = 5, max_len: int = 14) -> list[str]:
    """The n most frequent lowercase alphabetic words of min_len..max_len letters (ties: alphabetical)."""
    counts: collections.Counter = collections.Counter()
    for text in texts:
        counts.update(w for w in re.findall(r"[a-z]+", text.lower()) if min_len <= len(w) <= max_len)
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def read_word_list(path: str | Path) -> list[str]:
    return [w.strip() for w in Path(path).read_text(encoding="utf-8").splitlines() if w.strip()]


def load_gpt3_jsonl(path: str | Path) -> list[dict]:
    """A released GPT-3 task file: one {"context", "completion"} object per line."""
    docs = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                d = json.loads(line)
                if set(d) != {"context", "completion"}:
                    raise ValueError(f"{path}:{lineno}: expected keys context, completion; got {sorted(d)}")
                docs.append(d)
    return docs


def write_jsonl(docs: Iterable[dict], path: str | Path) -> Path:
    """Write docs in the released format (json.dumps defaults: ', ' and ': ' separators, ASCII)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # an interrupted write must not pass for a smaller task file
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps({"context": d["context"], "completion": d["completion"]}) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
