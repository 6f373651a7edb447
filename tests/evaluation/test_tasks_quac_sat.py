"""QuAC and SAT analogies: fixtures in each release's format load into the prompts of GPT-3's Figures G.25 and
G.12, an oracle scores 100% and a silent / uniform model 0 / chance, and QuAC's metrics follow the official
scorer's rules on hand-computed cases (the scorer ships no documented examples of its own)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from evaluation.adapters import DummyLM
from evaluation.api import run_eval
from evaluation.formats.quac import filtered_f1, heq, human_f1, quac_f1, quac_references
from evaluation.metrics import aggregate, token_f1
from evaluation.registry import get_task
from evaluation.task import TaskError

TASKS = ["quac", "sat_analogies"]
MAIN = {"quac": "quac_f1", "sat_analogies": "acc_norm_token"}

PERRY = ("In 1985, he was selected in the first round of the 1985 NFL Draft by the Chicago Bears. Teammates called "
         "him \"Biscuit,\" as in \"one biscuit shy of 350 pounds.\" He played in 138 games, retiring after the "
         "1994 season. Perry even had the opportunity to run the ball during Super Bowl XX.")
HELSINKI = "Helsinki is the capital and largest city of Finland. It has a metropolitan population of 1.4 million."


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _qa(dialogue: str, i: int, context: str, question: str, answers: list[str], orig: str | None = None,
        followup: str = "y", yesno: str = "x") -> dict:
    def span(text):
        return {"text": text, "answer_start": context.find(text)}
    return {"question": question, "id": f"{dialogue}_q#{i}", "answers": [span(a) for a in answers],
            "orig_answer": span(orig if orig is not None else answers[0]), "followup": followup, "yesno": yesno}


def _quac(title: str, section: str, context: str, dialogue: str, questions: list[tuple]) -> dict:
    context = context + " CANNOTANSWER"  # the release appends it to every paragraph
    return {"title": title, "section_title": section, "background": f"{title} is a subject.",
            "paragraphs": [{"context": context, "id": dialogue,
                            "qas": [_qa(dialogue, i, context, *q) for i, q in enumerate(questions)]}]}


SAT_HEADER = """# SAT-package-V3.txt
#
# 374 multiple-choice analogy questions; each question is a source line, a stem pair,
# five choice pairs and the letter of the right choice.
#
"""
SAT_QUESTIONS = [
    ("190 FROM REAL SATs", "lull trust v:n", ["balk fortitude v:n", "betray loyalty v:n", "cajole compliance v:n",
                                             "hinder destination v:n", "soothe passion v:n"], "c"),
    ("190 FROM REAL SATs", "audacious boldness a:n",
     ["sanctimonious hypocrisy a:n", "anonymous identity a:n", "remorseful misdeed a:n", "deleterious result a:n",
      "impressionable temptation a:n"], "a"),
    ("190 FROM REAL SATs", "arid dry a:a", ["glacial cold a:a", "coastal tidal a:a", "damp muddy a:a",
                                           "snowbound polar a:a", "shallow deep a:a"], "a"),
]


def sat_text(questions=SAT_QUESTIONS) -> str:
    return SAT_HEADER + "".join(f"\n{src}\n{stem}\n" + "".join(c + "\n" for c in choices) + f"{ans}\n"
                                for src, stem, choices, ans in questions)


def write_fixtures(root: Path) -> Path:
    dev = _quac("William Perry (American football)", "Professional career", PERRY, "C_perry_0", [
        ("what team did he play for?", ["the Chicago Bears", "Chicago Bears", "the Chicago Bears"]),
        # two of three annotators could not answer: the question is unanswerable
        ("did he win a super bowl?", ["CANNOTANSWER", "Super Bowl XX", "CANNOTANSWER"], "CANNOTANSWER", "n", "y"),
        ("how much did he weigh?", ["one biscuit shy of 350 pounds", "CANNOTANSWER", "one biscuit shy of 350 pounds."]),
        # the annotators disagree completely (human F1 0): the official F1 leaves the question out
        ("how long did he play?", ["He played in 138 games", "retiring after the 1994 season"])])
    _write(root / "quac/val_v0.2.json", json.dumps({"data": [dev]}))
    train = _quac("Helsinki", "Geography", HELSINKI, "C_hel_0", [
        ("what is the capital of Finland?", ["Helsinki"]),
        ("what is its population?", ["1.4 million"]),
        ("who founded it?", ["CANNOTANSWER"])])
    _write(root / "quac/train_v0.2.json", json.dumps({"data": [train]}))
    _write(root / "sat/SAT-package-V3.txt", sat_text())
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_fixtures(tmp_path_factory.mktemp("quacsat"))


# ---------------------------------------------------------------------- prompts
PERRY_PROMPT = ("TITLE: William Perry (American football) - Professional career\n"
                f"PARAGRAPH: {PERRY}\n\nQ: what team did he play for?\n\nA:")


def test_quac_prompts_carry_the_paragraph_and_the_earlier_turns(data):
    task = get_task("quac", data)
    docs = task.eval_docs()
    assert len(docs) == 4
    assert task.text(docs[0]) == PERRY_PROMPT  # Figure G.25, without the release's trailing CANNOTANSWER
    assert task.target(docs[0]) == "the Chicago Bears"
    assert task.answers(docs[0]) == ["the Chicago Bears", "Chicago Bears", "the Chicago Bears"]
    assert task.text(docs[2]) == ("TITLE: William Perry (American football) - Professional career\n"
                                  f"PARAGRAPH: {PERRY}\n\n"
                                  "Q: what team did he play for?\n\nA: the Chicago Bears\n\n"
                                  "Q: did he win a super bowl?\n\nA: CANNOTANSWER\n\n"
                                  "Q: how much did he weigh?\n\nA:")
    assert task.target(docs[1]) == "CANNOTANSWER" and docs[1]["yesno"] == "y" and docs[1]["followup"] == "n"
    assert docs[3]["id"] == "C_perry_0_q#3" and docs[3]["dialogue_id"] == "C_perry_0"
    assert "CANNOTANSWER" not in docs[0]["context"]


def test_sat_prompt_choices_and_gold(data):
    task = get_task("sat_analogies", data)
    docs = task.eval_docs()
    assert len(docs) == 3
    doc = docs[0]  # Figure G.12
    assert task.text(doc) == "lull is to trust as"
    assert task.choices(doc) == ["balk is to fortitude", "betray is to loyalty", "cajole is to compliance",
                                 "hinder is to destination", "soothe is to passion"]
    assert task.gold(doc) == 2 and task.target(doc) == "cajole is to compliance"
    assert task.demo(doc) == "lull is to trust as cajole is to compliance"
    assert doc["source"] == "190 FROM REAL SATs" and doc["stem_pos"] == "v:n" and doc["choice_pos"][0] == "v:n"
    assert task.text(docs[1]) == "audacious is to boldness as" and task.target(docs[1]) == "sanctimonious is to hypocrisy"
    assert [task.gold(d) for d in docs] == [2, 0, 0]


@pytest.mark.parametrize("k", [1, 2])
def test_quac_fewshot_demonstrations_are_training_turns(data, k):
    task = get_task("quac", data)
    doc = task.eval_docs()[0]
    demos = [task.demo(d) for d in task.fewshot_docs()]
    assert demos[2].endswith("Q: who founded it?\n\nA: CANNOTANSWER")  # an unanswerable demonstration
    assert demos[1] == ("TITLE: Helsinki - Geography\nPARAGRAPH: " + HELSINKI +
                        "\n\nQ: what is the capital of Finland?\n\nA: Helsinki\n\nQ: what is its population?\n\nA: 1.4 million")
    ctx = task.fewshot_context(0, doc, k, seed=1234)
    assert any(ctx == "\n\n".join(list(chosen) + [PERRY_PROMPT]) for chosen in itertools.permutations(demos, k))
    assert ctx == task.fewshot_context(0, doc, k, seed=1234)


@pytest.mark.parametrize("k", [1, 2])
def test_sat_demonstrations_are_other_questions_of_the_file(data, k):
    task = get_task("sat_analogies", data)
    docs = task.eval_docs()
    demos = [task.demo(d) for d in docs]
    assert demos[1] == "audacious is to boldness as sanctimonious is to hypocrisy"
    for i, doc in enumerate(docs):
        ctx = task.fewshot_context(i, doc, k, seed=1234)
        others = demos[:i] + demos[i + 1:]
        assert any(ctx == "\n\n".join(list(chosen) + [task.text(doc)])
                   for chosen in itertools.permutations(others, k)), (i, ctx)
        assert demos[i] not in ctx
    with pytest.raises(TaskError, match="only 2 usable"):
        task.fewshot_context(0, docs[0], 3, seed=1234)


# ---------------------------------------------------------------------- scoring end to end
def test_oracle_scores_100_and_silence_or_uniform_scores_0_or_chance(data, tmp_path):
    quac, sat = get_task("quac", data), get_task("sat_analogies", data)
    answers = {quac.text(d): quac.target(d) for d in quac.eval_docs()}
    answers.update({sat.text(d): " " + sat.target(d) for d in sat.eval_docs()})
    res = run_eval(DummyLM("oracle", answers=answers), TASKS, [0, 1, 2], tmp_path, data_dir=data,
                   bootstrap_iters=20)
    for name in TASKS:
        assert res["tasks"][name]["gpt3_metric"] == MAIN[name]
        for k in ("0", "1", "2"):
            assert res["results"][name][k][MAIN[name]] == pytest.approx(1.0), (name, k)
    entry = res["results"]["quac"]["0"]
    # the disputed question is scored leave-one-out only in the unfiltered F1: against the other answer 0,
    # against its own 1, so 0.5
    assert entry["quac_unfiltered_f1"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert entry["quac_heq"] == pytest.approx(1.0) and entry["n"] == 4
    assert res["results"]["sat_analogies"]["0"]["acc"] == pytest.approx(1.0)
    md = (tmp_path / "results.md").read_text()
    assert "QuAC" in md and "SAT Analogies" in md and "quac_f1" in md

    silent = run_eval(DummyLM("uniform"), TASKS, [0, 1], None, data_dir=data, bootstrap_iters=20)["results"]
    for k in ("0", "1"):
        q = silent["quac"][k]
        assert q["quac_f1"] == 0.0 and q["quac_unfiltered_f1"] == 0.0 and q["quac_heq"] == 0.0
        # every character (a DummyLM token) alike: per-token scores tie five ways, a tie counts 1/5
        assert silent["sat_analogies"][k]["acc_norm_token"] == pytest.approx(1 / 5)


def test_abstaining_is_right_only_on_the_unanswerable_question(data):
    quac = get_task("quac", data)
    for said, expected in (("CANNOTANSWER", 1 / 3), ("cannotanswer", 0.0), ("Super Bowl XX", 0.0)):
        lm = DummyLM("oracle", answers={quac.text(d): said for d in quac.eval_docs()})
        res = run_eval(lm, ["quac"], [0], None, data_dir=data, bootstrap_iters=20)["results"]["quac"]["0"]
        assert res["quac_f1"] == pytest.approx(expected), said


def test_sat_per_token_normalisation_decides(data):
    # log P = -(number of characters) for every choice but the gold one, which pays 1.5 (or 0.5) per
    # character: the per-token normalisation never (always) picks the gold one, whatever its length
    sat = get_task("sat_analogies", data)
    gold = {" " + sat.target(d) for d in sat.eval_docs()}
    for gold_cost, expected in ((1.5, 0.0), (0.5, 1.0)):
        lm = DummyLM(logprob_fn=lambda ctx, cont: -(gold_cost if cont in gold else 1.0) * len(cont))
        res = run_eval(lm, ["sat_analogies"], [0], None, data_dir=data, bootstrap_iters=20)["results"]
        assert res["sat_analogies"]["0"]["acc_norm_token"] == expected, gold_cost


def test_a_real_tiny_model_runs_both_tasks(data, tiny_lm, tmp_path):
    res = run_eval(tiny_lm, TASKS, [0, 1], tmp_path, data_dir=data, bootstrap_iters=20, limit=2)
    for name in TASKS:
        for k in ("0", "1"):
            entry = res["results"][name][k]
            assert entry["n"] == 2, (name, k, entry)
            value = entry[MAIN[name]]
            assert value != value or 0.0 <= value <= 1.0, (name, k, entry)  # nan only if no question counts


# ---------------------------------------------------------------------- QuAC's metrics by hand
def test_references_follow_the_cannotanswer_majority():
    assert quac_references(["CANNOTANSWER", "CANNOTANSWER", "Bears"]) == ["CANNOTANSWER"]
    assert quac_references(["CANNOTANSWER", "Bears"]) == ["CANNOTANSWER"]  # a tie is unanswerable
    assert quac_references(["CANNOTANSWER", "Bears", "the Bears"]) == ["Bears", "the Bears"]
    assert quac_references(["Bears"]) == ["Bears"]
    assert quac_references([]) == ["CANNOTANSWER"]


def test_f1_against_cannotanswer_is_an_exact_string_match():
    assert quac_f1("CANNOTANSWER", ["CANNOTANSWER"]) == 1.0
    assert quac_f1("cannotanswer", ["CANNOTANSWER"]) == 0.0
    assert quac_f1("CANNOTANSWER.", ["CANNOTANSWER"]) == 0.0
    assert quac_f1("Chicago Bears", ["CANNOTANSWER"]) == 0.0
    assert quac_f1("", ["CANNOTANSWER"]) == 0.0
    # abstaining on an answerable question is an ordinary wrong span
    assert quac_f1("CANNOTANSWER", ["Chicago Bears"]) == 0.0


def test_f1_against_spans_is_squad_f1_averaged_leave_one_out():
    # one reference: pred [1994, season] vs [retiring, after, 1994, season]: P 1, R 1/2, F1 2/3
    assert quac_f1("the 1994 season", ["retiring after the 1994 season"]) == pytest.approx(2 / 3)
    assert quac_f1("The Chicago Bears!", ["chicago bears"]) == 1.0
    # three references: leaving out "the Chicago Bears" the best of "Bears" / "Chicago" is 2/3 (P 1/2, R 1);
    # leaving out either other, "the Chicago Bears" remains (1)
    assert quac_f1("Chicago Bears", ["the Chicago Bears", "Bears", "Chicago"]) == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert quac_f1("Bears", ["Bears", "Bears"]) == 1.0
    # the official F1 of an empty prediction is 0, even against a reference that normalises to nothing
    # (SQuAD's token F1 shared by the other tasks calls that pair a match)
    assert quac_f1("", ["the"]) == 0.0 and token_f1("", ["the"]) == 1.0
    assert quac_f1("London Monarchs", ["the"]) == 0.0


def test_human_f1_and_the_agreement_filter():
    assert human_f1(["CANNOTANSWER"]) == 1.0 and human_f1(["anything"]) == 1.0
    assert human_f1(["the Chicago Bears", "Chicago Bears"]) == 1.0
    assert human_f1(["He played in 138 games", "retiring after the 1994 season"]) == 0.0
    # each reference's best F1 against the others: 2/3, 2/3 and 0
    assert human_f1(["Chicago Bears", "Bears", "London Monarchs"]) == pytest.approx(4 / 9)
    # (F1, human F1): a question counts when its human F1 is at least 0.4
    items = [(1.0, 1.0), (0.5, 0.3), (0.0, 0.4), (0.7, 0.6)]
    assert filtered_f1(items) == pytest.approx((1.0 + 0.0 + 0.7) / 3)
    assert heq(items) == pytest.approx(2 / 3)  # 1.0 >= 1.0 and 0.7 >= 0.6, not 0.0 >= 0.4
    value, stderr = aggregate("quac_f1", items, bootstrap_iters=50)
    assert value == pytest.approx(0.5667, abs=1e-4) and stderr > 0
    assert filtered_f1([(1.0, 0.1)]) != filtered_f1([(1.0, 0.1)])  # nothing counted: nan


# ---------------------------------------------------------------------- bad data
def test_bad_data_is_named(tmp_path):
    root = write_fixtures(tmp_path)
    with pytest.raises(TaskError, match=r"task quac: data file .*val_v0.2.json does not exist"):
        get_task("quac", tmp_path / "nowhere").eval_docs()
    bad = json.loads((root / "quac/val_v0.2.json").read_text())
    del bad["data"][0]["paragraphs"][0]["context"]
    _write(root / "quac/val_v0.2.json", json.dumps(bad))
    with pytest.raises(TaskError, match=r"task quac: .*val_v0.2.json: not QuAC's layout .*'context'"):
        get_task("quac", root).eval_docs()
    bad = json.loads((root / "quac/train_v0.2.json").read_text())
    qa = bad["data"][0]["paragraphs"][0]["qas"][1]
    qa["answers"], qa["orig_answer"] = [], {}
    _write(root / "quac/train_v0.2.json", json.dumps(bad))
    with pytest.raises(TaskError, match=r"task quac: .*train_v0.2.json: question C_hel_0_q#1 has neither"):
        get_task("quac", root).fewshot_docs()

    sat = root / "sat/SAT-package-V3.txt"
    src, stem, choices, ans = SAT_QUESTIONS[1]
    cases = [
        # a block with four choices, named by the line it starts on (5 header lines, a blank, the first
        # question's 8 lines, a blank)
        ((src, stem, choices[:4], ans), r"the block at line 16 has 7 lines"),
        ((src, stem, choices[:4] + ["impressionable temptation"], ans), r"line 22 'impressionable temptation' is "
                                                                        r"not a word pair"),
        ((src, stem, choices, "f"), r"line 23 'f' is not an answer letter a-e"),
    ]
    for question, message in cases:
        _write(sat, sat_text([SAT_QUESTIONS[0], question, SAT_QUESTIONS[2]]))
        with pytest.raises(TaskError, match=r"task sat_analogies: .*SAT-package-V3.txt: " + message):
            get_task("sat_analogies", root).eval_docs()
    _write(sat, SAT_HEADER)
    with pytest.raises(TaskError, match=r"task sat_analogies: .*SAT-package-V3.txt holds no questions"):
        get_task("sat_analogies", root).eval_docs()
    # Windows line endings read the same
    _write(sat, sat_text().replace("\n", "\r\n"))
    assert [d["gold"] for d in get_task("sat_analogies", root).eval_docs()] == [2, 0, 0]
