"""SAT analogies (Turney et al. 2003; GPT-3 Section 3.9.3): 374 five-way word-analogy questions.

Published format read here:
  sat_analogies  Turney's `SAT-package-V3.txt`: comment lines starting with '#', then one block per question,
                 blocks separated by blank lines. A block is eight lines: where the question comes from
                 ("190 FROM REAL SATs", "KS ...", "ML:..."), the stem pair, five choice pairs, and the letter
                 (a-e) of the right choice; a pair is "word1 word2 pos:pos" ("lull trust v:n").
Documents are {source, stem: [w1, w2], stem_pos, choices: [[w1, w2] x 5], choice_pos, gold}. The harness
scores them as multiple choice; GPT-3 reports the accuracy of the per-token normalised likelihood.
"""

from __future__ import annotations

import re
from pathlib import Path

from evaluation.formats.files import single_file
from evaluation.task import TaskError, loader

ANSWER_LETTERS = "abcde"
_PAIR = re.compile(r"(\S+)\s+(\S+)\s+([a-z]+:[a-z]+)")  # "lull trust v:n"


def _read_text(files, task: str) -> tuple[Path, str]:
    path = single_file(files, task, "SAT-package file")
    return path, path.read_text(encoding="utf-8", errors="replace")


def _blocks(text: str):
    """(first line number, [(line number, line), ...]) of each block of non-comment, non-blank lines."""
    block: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line:
            if block:
                yield block
            block = []
            continue
        block.append((number, line))
    if block:
        yield block


@loader("sat_analogies")
def load_sat_analogies(files, spec, task: str) -> list[dict]:
    path, text = _read_text(files, task)
    docs = []
    for block in _blocks(text):
        first = block[0][0]
        if len(block) != 8:
            raise TaskError(f"task {task}: {path}: the block at line {first} has {len(block)} lines; a question "
                            f"is a source line, the stem pair, five choice pairs and the answer letter (8 lines)")
        pairs = []
        for number, line in block[1:7]:
            m = _PAIR.fullmatch(line)
            if not m:
                raise TaskError(f"task {task}: {path}: line {number} {line!r} is not a word pair "
                                f"'word1 word2 pos:pos'")
            pairs.append(m.groups())
        number, letter = block[7]
        if letter not in ANSWER_LETTERS or len(letter) != 1:
            raise TaskError(f"task {task}: {path}: line {number} {letter!r} is not an answer letter a-e")
        docs.append({"source": block[0][1], "stem": list(pairs[0][:2]), "stem_pos": pairs[0][2],
                     "choices": [list(p[:2]) for p in pairs[1:]], "choice_pos": [p[2] for p in pairs[1:]],
                     "gold": ANSWER_LETTERS.index(letter), "line": first})
    if not docs:
        raise TaskError(f"task {task}: {path} holds no questions")
    return docs
