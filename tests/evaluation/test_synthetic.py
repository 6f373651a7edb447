"""GPT-3 synthetic tasks: generated instances have the released files' exact format and are right."""

from __future__ import annotations

import json
import re

import pytest

from evaluation import synthetic as s

CONTEXT = {
    "plus": re.compile(r"\n\nQ: What is (\d+) plus (\d+)\?\n\nA:"),
    "minus": re.compile(r"\n\nQ: What is (\d+) minus (\d+)\?\n\nA:"),
    "times": re.compile(r"\n\nQ: What is (\d+) times (\d+)\?\n\nA:"),
    "compound": re.compile(r"\n\nQ: What is \((\d) ([-+*]) (\d)\) ([-+*]) (\d)\?\n\nA:"),
}


def _check_arith(kind: str, lines: list[str]) -> None:
    digits, op = s.ARITHMETIC[kind]
    for line in lines:
        d = json.loads(line)
        assert json.dumps(d) + "\n" == line  # key order, separators and escaping identical
        m = CONTEXT[op].fullmatch(d["context"])
        assert m, d
        assert all(int(x) < 10 ** digits for x in m.groups() if x.isdigit())
        assert re.fullmatch(r" -?\d+", d["completion"])
        assert s.solve_arithmetic_prompt(d["context"]) == d["completion"]


@pytest.mark.parametrize("kind", sorted(s.ARITHMETIC))
def test_released_and_generated_arithmetic_share_the_format(kind, shared_data, tmp_path):
    released = (shared_data / "gpt3_arithmetic" / s.ARITHMETIC_FILES[kind]).read_text().splitlines(keepends=True)
    assert len(released) == 2000
    _check_arith(kind, released)
    path = s.write_jsonl(s.arithmetic_docs(kind), tmp_path / s.ARITHMETIC_FILES[kind])
    generated = path.read_text().splitlines(keepends=True)
    assert len(generated) == 2000
    _check_arith(kind, generated)
    assert s.load_gpt3_jsonl(path) == s.arithmetic_docs(kind)
    assert len(s.load_gpt3_jsonl(shared_data / "gpt3_arithmetic" / s.ARITHMETIC_FILES[kind])) == 2000


def test_generation_is_seeded():
    assert s.arithmetic_docs("3ds", n=50, seed=7) == s.arithmetic_docs("3ds", n=50, seed=7)
    assert s.arithmetic_docs("3ds", n=50, seed=7) != s.arithmetic_docs("3ds", n=50, seed=8)
    # subtraction goes negative, operands cover the full range
    docs = s.arithmetic_docs("2ds")
    assert any(d["completion"].startswith(" -") for d in docs)
    ops = [int(x) for d in docs for x in CONTEXT["minus"].fullmatch(d["context"]).groups()]
    assert min(ops) == 0 and max(ops) == 99


def test_word_scrambles(shared_data):
    text = (shared_data / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8")
    words = s.build_word_list(text.splitlines(), n=3000)
    assert len(words) == 3000 and all(5 <= len(w) <= 14 and w.isalpha() and w.islower() for w in words)
    for kind in s.SCRAMBLES:
        docs = s.scramble_docs(kind, words, n=2000, seed=3)
        assert len(docs) == 2000 and docs == s.scramble_docs(kind, words, n=2000, seed=3)
        for d in docs:
            assert json.dumps(d) == json.dumps({"context": d["context"], "completion": d["completion"]})
            m = re.fullmatch(r"\n(.+) =", d["context"], flags=re.S)
            assert m and d["completion"].startswith(" ")
            x, w = m.group(1), d["completion"][1:]
            if kind == "cl":
                assert x in w + w and len(x) == len(w)
            elif kind == "a1":
                assert x[0] == w[0] and x[-1] == w[-1] and sorted(x) == sorted(w)
            elif kind == "a2":
                assert x[:2] == w[:2] and x[-2:] == w[-2:] and sorted(x) == sorted(w)
            elif kind == "ri":
                assert x[::2] == w and len(x) == 2 * len(w) - 1
            else:
                assert x == w[::-1]
    # the paper's examples
    assert s.scramble("rw", "objects", None) == "stcejbo"


def test_an_interrupted_task_file_write_keeps_the_old_file(tmp_path):
    """Written in place, a run stopped half-way left a shorter task file that read as complete."""
    from evaluation.synthetic import write_jsonl
    path = tmp_path / "task.jsonl"
    write_jsonl([{"context": "Q: 1 + 1?", "completion": " 2"}] * 3, path)
    before = path.read_bytes()

    def docs():
        yield {"context": "Q: 2 + 2?", "completion": " 4"}
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_jsonl(docs(), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["task.jsonl"]
