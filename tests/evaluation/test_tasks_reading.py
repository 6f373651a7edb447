"""Closed-book QA (Natural Questions, WebQuestions) and reading comprehension (SQuAD 2.0, DROP, CoQA):
fixtures in each release's format load into the prompts of GPT-3's Appendix G, an oracle scores 100% and
a model that says nothing scores 0 (SQuAD 2.0: the unanswerable share), and each official metric matches
hand-computed values and the examples its own script documents."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from evaluation.adapters import DummyLM
from evaluation.api import run_eval
from evaluation.formats.qa import parse_target_value
from evaluation.formats.reading import coqa_scores, drop_answer_spans, drop_best, drop_metrics, normalize_drop, \
    squad_v2_scores
from evaluation.registry import get_task
from evaluation.task import TaskError

TASKS = ["nq_open", "webqs", "squadv2", "drop", "coqa"]

BLITZ = ("From the German point of view, March 1941 saw an improvement. The Luftwaffe flew 4,000 sorties that "
         "month. The Luftwaffe flew major inland missions only on moonlit nights.")
HELSINKI = "Helsinki is the capital and largest city of Finland. It has a metropolitan population of 1.4 million."


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _jsonl(path: Path, rows) -> None:
    _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_reading_fixtures(root: Path) -> Path:
    # NQ-open: one {"question", "answer": [...]} per line, questions lower case without "?"
    _jsonl(root / "nq_open/NQ-open.dev.jsonl", [
        {"question": "who played tess on touched by an angel", "answer": ["Della Reese"]},
        {"question": "where is the eiffel tower located", "answer": ["Paris", "Paris, France"]}])
    _jsonl(root / "nq_open/NQ-open.train.jsonl", [
        {"question": "who wrote hamlet", "answer": ["William Shakespeare", "Shakespeare"]},
        {"question": "what is the capital of japan", "answer": ["Tokyo"]},
        {"question": "how many legs does a spider have", "answer": ["eight", "8"]}])
    # WebQuestions: a json list of {url, targetValue, utterance}
    _write(root / "webquestions/webquestions.examples.test.json", json.dumps([
        {"url": "http://www.freebase.com/view/en/burne_hogarth",
         "targetValue": "(list (description \"School of Visual Arts\"))",
         "utterance": "what school did burne hogarth establish?"},
        {"url": "http://www.freebase.com/view/en/justin_bieber",
         "targetValue": "(list (description \"Jazmyn Bieber\") (description \"Jaxon Bieber\"))",
         "utterance": "what is the name of justin bieber brother?"}]))
    _write(root / "webquestions/webquestions.examples.train.json", json.dumps([
        {"url": "u1", "targetValue": "(list (description Canada))", "utterance": "where is toronto?"},
        {"url": "u2", "targetValue": "(list (description Jamaican_English) (description \"Jamaican Creole\"))",
         "utterance": "what language do jamaicans speak?"},
        {"url": "u3", "targetValue": "(list (description \"Washington, D.C.\"))",
         "utterance": "where is the white house?"}]))
    # SQuAD 2.0: data[title, paragraphs[context, qas]]; an unanswerable question has no answers
    def squad(title, context, qas):
        return {"version": "v2.0", "data": [{"title": title, "paragraphs": [{"context": context, "qas": [
            {"question": q, "id": f"{title}-{i}", "answers": [{"text": a, "answer_start": context.find(a)}
                                                               for a in answers],
             "is_impossible": not answers, **({} if answers else {"plausible_answers": [{"text": "x",
                                                                                          "answer_start": 0}]})}
            for i, (q, answers) in enumerate(qas)]}]}]}
    _write(root / "squad2/dev-v2.0.json", json.dumps(squad("The Blitz", BLITZ, [
        ("How many sorties were flown in March 1941?", ["4,000", "4,000", "4,000 sorties"]),
        ("When did the Luftwaffe fly inland missions?", ["only on moonlit nights", "moonlit nights"]),
        ("How many sorties were flown in March 1942?", [])])))
    _write(root / "squad2/train-v2.0.json", json.dumps(squad("Helsinki", HELSINKI, [
        ("What is the capital of Finland?", ["Helsinki"]),
        ("What is the capital of Sweden?", []),
        ("How many people live in the metropolitan area?", ["1.4 million"])])))
    # DROP: {passage_id: {passage, qa_pairs}}; answers hold a number, spans or a date
    empty_date = {"day": "", "month": "", "year": ""}

    def ans(number="", spans=(), date=empty_date):
        return {"number": number, "date": date, "spans": list(spans)}
    _write(root / "drop_dataset/drop_dataset_dev.json", json.dumps({"nfl_1": {
        "passage": "The Bears scored first on a 78-yard run. Kicker Gould added field goals of 23 and 41 yards.",
        "qa_pairs": [
            {"question": "How many field goals did Gould kick?", "query_id": "q1", "answer": ans(number="2"),
             "validated_answers": [ans(number="2")]},
            {"question": "Who scored first?", "query_id": "q2", "answer": ans(spans=["The Bears"]),
             "validated_answers": [ans(spans=["Bears"]), ans()]},
            {"question": "When was the game played?", "query_id": "q3",
             "answer": ans(date={"day": "17", "month": "August", "year": "1990"}), "validated_answers": []}]}}))
    _write(root / "drop_dataset/drop_dataset_train.json", json.dumps({"hist_1": {
        "passage": "In 1625 Brebeuf travelled to New France, and in 1629 he returned to France.",
        "qa_pairs": [
            {"question": "How many years did he stay?", "query_id": "t1", "answer": ans(number="4"),
             "validated_answers": []},
            {"question": "Which places did he travel to?", "query_id": "t2",
             "answer": ans(spans=["New France", "France"]), "validated_answers": []},
            {"question": "When did he return?", "query_id": "t3",
             "answer": ans(date={"day": "", "month": "", "year": "1629"}), "validated_answers": []}]}}))
    # CoQA: data[story, questions, answers, additional_answers]
    def turns(pairs):
        return ([{"input_text": q, "turn_id": i + 1} for i, (q, _) in enumerate(pairs)],
                [{"input_text": a, "turn_id": i + 1, "span_text": a} for i, (_, a) in enumerate(pairs)])
    qs, ans_dev = turns([("what is the capital of Finland?", "Helsinki"), ("how many people live there?", "1.4 million"),
                         ("is it in Sweden?", "no")])
    _, extra = turns([("", "helsinki"), ("", "1.4 million."), ("", "No")])
    _write(root / "coqa/coqa-dev-v1.0.json", json.dumps({"version": "1.0", "data": [
        {"source": "wikipedia", "id": "s1", "filename": "f", "story": HELSINKI, "questions": qs, "answers": ans_dev,
         "additional_answers": {"0": extra, "1": extra}}]}))
    qs_t, ans_t = turns([("what did Bob do?", "went out"), ("what color was the car?", "blue")])
    _write(root / "coqa/coqa-train-v1.0.json", json.dumps({"version": "1.0", "data": [
        {"source": "race", "id": "t1", "filename": "g", "story": "Bob went out. The car was blue.",
         "questions": qs_t, "answers": ans_t}]}))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_reading_fixtures(tmp_path_factory.mktemp("readingdata"))


# ---------------------------------------------------------------------- prompts
EXPECTED_PROMPTS = {
    "nq_open": ("Q: Who played tess on touched by an angel?\n\nA:", "Della Reese", ["Della Reese"]),
    "webqs": ("Q: What school did burne hogarth establish?\n\nA:", "School of Visual Arts", ["School of Visual Arts"]),
    "squadv2": (f"Title: The Blitz\n\nBackground: {BLITZ}\n\nQ: How many sorties were flown in March 1941?\n\nA:",
                "4,000", ["4,000", "4,000", "4,000 sorties"]),
    "drop": ("Passage: The Bears scored first on a 78-yard run. Kicker Gould added field goals of 23 and 41 yards.\n"
             "Question: How many field goals did Gould kick?\nAnswer:", "2", ["2", "2"]),
    "coqa": (f"{HELSINKI}\n\nQ: what is the capital of Finland?\n\nA:", "Helsinki", ["Helsinki", "helsinki", "helsinki"]),
}


@pytest.mark.parametrize("name", TASKS)
def test_prompt_target_and_answers_of_the_first_example(data, name):
    task = get_task(name, data)
    doc = task.eval_docs()[0]
    prompt, target, answers = EXPECTED_PROMPTS[name]
    assert task.text(doc) == prompt
    assert task.target(doc) == target
    assert task.answers(doc) == answers


def test_later_examples_carry_their_own_answers(data):
    nq = get_task("nq_open", data).eval_docs()[1]
    assert nq["answers"] == ["Paris", "Paris, France"]
    assert get_task("nq_open", data).text(nq) == "Q: Where is the eiffel tower located?\n\nA:"
    wq = get_task("webqs", data)
    assert wq.answers(wq.eval_docs()[1]) == ["Jazmyn Bieber", "Jaxon Bieber"]
    sq = get_task("squadv2", data)
    impossible = sq.eval_docs()[2]
    assert sq.target(impossible) == "unanswerable" and sq.answers(impossible) == [""]
    drop = get_task("drop", data)
    date_q = drop.eval_docs()[2]
    assert drop.target(date_q) == "17 August 1990" and date_q["gold_answers"] == [["17 August 1990"]]
    assert drop.eval_docs()[1]["gold_answers"] == [["The Bears"], ["Bears"], [""]]  # the empty one is kept, unused
    assert [drop.target(d) for d in drop.fewshot_docs()] == ["4", "New France, France", "1629"]
    coqa = get_task("coqa", data)
    third = coqa.eval_docs()[2]
    assert coqa.text(third) == (f"{HELSINKI}\n\nQ: what is the capital of Finland?\n\nA: Helsinki\n\n"
                                "Q: how many people live there?\n\nA: 1.4 million\n\nQ: is it in Sweden?\n\nA:")
    assert coqa.answers(third) == ["no", "No", "No"]


@pytest.mark.parametrize("name", [t for t in TASKS if t != "squadv2"])
def test_fewshot_contexts_hold_k_training_demonstrations(data, name):
    task = get_task(name, data)
    doc = task.eval_docs()[0]
    demos = [task.demo(d) for d in task.fewshot_docs()]
    for k in (1, 2):
        ctx = task.fewshot_context(0, doc, k, seed=1234)
        # k whole training examples, each followed by its answer, then the prompt, joined by blank lines
        assert any(ctx == "\n\n".join(list(chosen) + [task.text(doc)])
                   for chosen in itertools.permutations(demos, k)), (name, k, ctx)
        assert ctx == task.fewshot_context(0, doc, k, seed=1234)
    if name == "nq_open":
        one = task.fewshot_context(0, doc, 1, seed=1234)
        assert one.count("\n\nA: ") == 1 and one.count("Q: ") == 2
        assert any(one.startswith(d + "\n\n") for d in ("Q: Who wrote hamlet?\n\nA: William Shakespeare",
                                                         "Q: What is the capital of japan?\n\nA: Tokyo",
                                                         "Q: How many legs does a spider have?\n\nA: eight"))


def test_squad_v2_demonstrations_are_the_paragraphs_other_questions(data):
    # GPT-3 Figure G.28: the paragraph once, its other questions answered, then the question asked
    task = get_task("squadv2", data)
    docs = task.eval_docs()
    head = f"Title: The Blitz\n\nBackground: {BLITZ}\n\n"
    first = "Q: How many sorties were flown in March 1941?\n\nA: 4,000\n\n"
    third = "Q: How many sorties were flown in March 1942?\n\nA: unanswerable\n\n"  # no answer: "unanswerable"
    asked = "Q: When did the Luftwaffe fly inland missions?\n\nA:"
    assert task.fewshot_context(1, docs[1], 0, seed=1234) == head + asked == task.text(docs[1])
    one = task.fewshot_context(1, docs[1], 1, seed=1234)
    assert one in (head + first + asked, head + third + asked)
    assert task.fewshot_context(1, docs[1], 2, seed=1234) == head + first + third + asked  # passage order
    assert task.fewshot_context(1, docs[1], 5, seed=1234) == head + first + third + asked  # all there are
    assert all(d["question"] != docs[1]["question"] for d in docs[1]["siblings"])


# ---------------------------------------------------------------------- scoring end to end
def _oracle(data) -> DummyLM:
    answers = {}
    for name in TASKS:
        task = get_task(name, data)
        for doc in task.eval_docs():
            # a SQuAD prompt has the paragraph's other questions before the one asked: key on its tail
            tail = f"Q: {doc['question']}\n\nA:" if task.config.fewshot_siblings else task.text(doc)
            answers[tail] = task.target(doc)
    return DummyLM("oracle", answers=answers)


MAIN = {"nq_open": "exact_match", "webqs": "exact_match", "squadv2": "squad_v2_f1", "drop": "drop_f1",
        "coqa": "coqa_f1"}


def test_oracle_scores_100_and_silence_scores_0(data, tmp_path):
    res = run_eval(_oracle(data), TASKS, [0, 1, 2], tmp_path, data_dir=data, bootstrap_iters=20)
    for name in TASKS:
        assert res["tasks"][name]["gpt3_metric"] == MAIN[name]
        for k in ("0", "1", "2"):
            entry = res["results"][name][k]
            assert entry[MAIN[name]] == 1.0, (name, k)
    assert res["results"]["squadv2"]["1"]["squad_v2_exact"] == 1.0
    assert res["results"]["drop"]["0"]["drop_em"] == 1.0 and res["results"]["coqa"]["0"]["coqa_em"] == 1.0
    md = (tmp_path / "results.md").read_text()
    assert "100.00" in md and "Natural Questions" in md and "drop_f1" in md
    silent = run_eval(DummyLM("uniform"), TASKS, [0, 1], None, data_dir=data, bootstrap_iters=20)
    for name in TASKS:
        for k in ("0", "1"):
            value = silent["results"][name][k][MAIN[name]]
            # SQuAD 2.0 credits an empty answer on its unanswerable questions: 1 of the 3 here
            assert value == (pytest.approx(1 / 3) if name == "squadv2" else 0.0), (name, k)


def test_a_wrong_answer_scores_0_and_abstaining_is_right_only_when_unanswerable(data):
    task = get_task("squadv2", data)
    docs = task.eval_docs()
    wrong = DummyLM("oracle", answers={task.text(d): "unanswerable" for d in docs})
    res = run_eval(wrong, ["squadv2"], [0], None, data_dir=data, bootstrap_iters=20)
    assert res["results"]["squadv2"]["0"]["squad_v2_f1"] == pytest.approx(1 / 3)
    bluff = DummyLM("oracle", answers={task.text(d): "March" for d in docs})
    res = run_eval(bluff, ["squadv2"], [0], None, data_dir=data, bootstrap_iters=20)
    assert res["results"]["squadv2"]["0"]["squad_v2_f1"] == 0.0


def test_a_real_tiny_model_runs_every_task(data, tiny_lm, tmp_path):
    res = run_eval(tiny_lm, TASKS, [0, 1], tmp_path, data_dir=data, bootstrap_iters=20, limit=2)
    for name in TASKS:
        for k in ("0", "1"):
            entry = res["results"][name][k]
            assert entry["n"] == 2 and 0.0 <= entry[MAIN[name]] <= 1.0, (name, k, entry)


# ---------------------------------------------------------------------- metrics by hand
def test_webquestions_target_values():
    assert parse_target_value('(list (description "Jazmyn Bieber") (description "Jaxon Bieber"))') == \
        ["Jazmyn Bieber", "Jaxon Bieber"]
    assert parse_target_value("(list (description Canada))") == ["Canada"]
    assert parse_target_value('(list (description "Washington, D.C.") (description Jamaican_English))') == \
        ["Washington, D.C.", "Jamaican_English"]
    assert parse_target_value(r'(list (description "The \"Boss\""))') == ['The "Boss"']
    assert parse_target_value("(list)") == []


def test_squad_v2_official_rules():
    assert squad_v2_scores("", []) == (1.0, 1.0)                    # abstaining on an unanswerable question
    assert squad_v2_scores("Unanswerable.", []) == (1.0, 1.0)       # the prompt's word for abstaining
    assert squad_v2_scores("Paris", []) == (0.0, 0.0)
    assert squad_v2_scores("", ["Paris"]) == (0.0, 0.0)
    assert squad_v2_scores("unanswerable", ["Paris"]) == (0.0, 0.0)
    assert squad_v2_scores("The Paris!", ["paris", "France"]) == (1.0, 1.0)
    # pred [10th, century] vs gold [10th, and, 11th, centuries]: P 1/2, R 1/4, F1 1/3
    em, f1 = squad_v2_scores("the 10th century", ["10th and 11th centuries"])
    assert em == 0.0 and f1 == pytest.approx(1 / 3)
    # a gold text that normalises to nothing is no answer ("a" is an article)
    assert squad_v2_scores("", ["a"]) == (1.0, 1.0)


def test_drop_normalisation_matches_the_official_tests():
    assert normalize_drop("12.0") == normalize_drop("12.0  ") == normalize_drop("12.000") == normalize_drop("12") \
        == normalize_drop("  1.2e1  ") == "12.0"
    assert normalize_drop("12.0 persons") == "12.0 persons"
    assert normalize_drop("S.K. Singh") == "sk singh"


# (predicted, gold, (EM, F1)) from the official script's tests (allennlp tools/drop_eval_test.py)
DROP_DOCUMENTED = [
    (["78"], ["78.0"], (1.0, 1.0)),
    (["td"], ["td", "td"], (0.0, 0.5)), ("td", ["td", "td"], (0.0, 0.5)),
    (["td", "td"], ["td"], (0.0, 0.5)), (["td", "td"], "td", (0.0, 0.5)),
    (["the", "fat", "cat", "the fat", "fat cat", "the fat cat"], ["cat"], (0.0, 0.17)),
    (["cat"], ["the", "fat", "cat", "the fat", "fat cat", "the fat cat"], (0.0, 0.17)),
    (["the", "fat", "cat", "the fat", "fat cat", "the fat cat"], ["cat", "cat dog"], (0.0, 0.25)),
    (["td"], ["the td"], (1.0, 1.0)), (["the a NOT an ARTICLE the an a"], ["NOT ARTICLE"], (1.0, 1.0)),
    (["John Elton"], ["Elton John"], (0.0, 1.0)), (["50 yard"], ["yard 50"], (0.0, 1.0)),
    (["order word right"], ["right word order"], (0.0, 1.0)),
    (["Per.i.o.d...."], [".P....e.r,,i;;;o...d,,"], (1.0, 1.0)),
    (["Spa     c  e   s     "], ["    Spa c     e s"], (1.0, 1.0)),
    (["78-yard"], ["78 yard"], (1.0, 1.0)), (["78 yard"], ["78-yard"], (1.0, 1.0)),
    (["78"], ["78-yard"], (0.0, 0.67)), (["78-yard"], ["78"], (0.0, 0.67)),
    (["This was a triumph"], ["tHIS Was A TRIUMPH"], (1.0, 1.0)),
    (["Green bay packers"], ["Green bay packers"], (1.0, 1.0)),
    (["Green bay", "packers"], ["Green bay", "packers"], (1.0, 1.0)),
    (["Green", "bay", "packers"], ["Green", "bay", "packers"], (1.0, 1.0)),
    ([""], ["army"], (0.0, 0.0)), (["packers"], ["Green bay packers"], (0.0, 0.5)),
    (["packers"], ["Green bay"], (0.0, 0.0)),
    (["yard"], ["36 yard td"], (0.0, 0.0)), (["23 yards"], ["43 yards"], (0.0, 0.0)),  # numbers must agree
    (["56 yards"], ["56 yd"], (0.0, 0.5)), (["26"], ["26 yard td"], (0.0, 0.5)),
    (["78-yard", "56", "28", "40", "44", "touchdown"], ["78-yard", "56 yard", "1 yard touchdown"], (0.0, 0.28)),
    (["23", "23 yard"], ["23-yard", "56 yards"], (0.0, 0.5)),
    (["John Karman", "Joe Hardy"], ["Joe Karman", "John Hardy"], (0.0, 0.5)),
    (["ottoman", "Kantakouzenous"], ["ottoman", "army of Kantakouzenous"], (0.0, 0.75)),
    (["a"], ["a", "b"], (0.0, 0.5)), (["b"], ["a", "b"], (0.0, 0.5)), (["b"], ["b", "a"], (0.0, 0.5)),
]


@pytest.mark.parametrize("predicted,gold,expected", DROP_DOCUMENTED)
def test_drop_metric_matches_the_official_examples(predicted, gold, expected):
    assert drop_metrics(predicted, gold) == expected


def test_drop_best_over_answers_as_the_official_json_evaluation():
    def golds(answer, validated=()):
        return [list(drop_answer_spans(a)) for a in [answer, *validated]]
    # the official script's evaluate_json cases
    assert drop_best("1", golds({"number": "1"}, [{"number": "0"}])) == (1.0, 1.0)
    assert drop_best("2", golds({"spans": ["2"]}, [{"number": "2"}])) == (1.0, 1.0)
    assert drop_best("1", golds({"spans": ["0"]}, [{"number": "1"}, {"number": "2"}])) == (1.0, 1.0)
    assert drop_best("17 August", golds({"date": {"day": "17", "month": "August", "year": ""}},
                                        [{"spans": ["August"]}, {"number": "17"}])) == (1.0, 1.0)
    assert drop_best("span1", golds({"spans": ["span1", "span2"]}, [{"spans": ["span2"]}])) == (0.0, 0.5)
    assert drop_best("answer", golds({"spans": ["answer1"]}, [{"spans": ["answer2"]}])) == (0.0, 0.0)
    # by hand: EM and F1 are maximised separately; an empty annotation is skipped
    assert drop_best("Bears", [["The Bears"], ["Bears"], [""]]) == (1.0, 1.0)
    assert drop_best("Chicago Bears", [["The Bears"], [""]]) == (0.0, 0.67)  # P 1/2, R 1: 2/3
    # one generated string against two gold spans: bag {new, france} vs {new, france} and {france}
    # aligns to one of them (F1 1.0) and the other span scores 0: mean 0.5
    assert drop_best("New France, France", [["New France", "France"]]) == (0.0, 0.5)
    assert drop_answer_spans({"number": "", "spans": [], "date": {"day": "", "month": "", "year": ""}}) == ("",)
    assert drop_answer_spans({"number": ""}) == ()


def test_coqa_leave_one_out_average():
    # one reference: the score against it
    assert coqa_scores("Helsinki", ["helsinki."]) == (1.0, 1.0)
    assert coqa_scores("", ["unknown"]) == (0.0, 0.0)
    # three references; leaving out "Helsinki": best of "the city of Helsinki" (F1 2*1*(1/3)/(4/3) = 0.5;
    # "the" is an article) and "Espoo"; leaving out either other: "Helsinki" itself remains (1, 1)
    em, f1 = coqa_scores("Helsinki", ["Helsinki", "the city of Helsinki", "Espoo"])
    assert em == pytest.approx(2 / 3) and f1 == pytest.approx((0.5 + 1 + 1) / 3)
    # a prediction matching every reference scores 1 whatever is left out
    assert coqa_scores("1.4 million", ["1.4 million", "1.4 Million.", "1.4 million"]) == (1.0, 1.0)
    # matching only one of four: left out it scores 0 against the rest
    em, f1 = coqa_scores("no", ["no", "yes", "yes", "yes"])
    assert (em, f1) == (pytest.approx(0.75), pytest.approx(0.75))


# ---------------------------------------------------------------------- bad data
def test_bad_data_is_named(tmp_path):
    root = write_reading_fixtures(tmp_path)
    with pytest.raises(TaskError, match=r"task nq_open: data file .*NQ-open.dev.jsonl does not exist"):
        get_task("nq_open", tmp_path / "nowhere").eval_docs()
    _jsonl(root / "nq_open/NQ-open.dev.jsonl", [{"question": "who?", "answer": "Bob"}])
    with pytest.raises(TaskError, match=r"task nq_open: .*NQ-open.dev.jsonl line 1: needs .* list of strings"):
        get_task("nq_open", root).eval_docs()
    _write(root / "webquestions/webquestions.examples.test.json",
           json.dumps([{"url": "u", "targetValue": "(list)", "utterance": "who?"}]))
    with pytest.raises(TaskError, match=r"task webqs: .*examples.test.json: example 0 has no \(description"):
        get_task("webqs", root).eval_docs()
    _write(root / "drop_dataset/drop_dataset_dev.json", json.dumps(
        {"p": {"passage": "x", "qa_pairs": [{"question": "q", "query_id": "q9", "answer": {"number": ""}}]}}))
    with pytest.raises(TaskError, match=r"task drop: .*dev.json: question q9 of passage p has an answer with no"):
        get_task("drop", root).eval_docs()
    _write(root / "squad2/dev-v2.0.json", json.dumps({"data": [{"title": "T", "paragraphs": [
        {"qas": [{"question": "q", "id": "i", "answers": []}]}]}]}))
    with pytest.raises(TaskError, match=r"task squadv2: .*dev-v2.0.json: not the SQuAD 2.0 layout .*'context'"):
        get_task("squadv2", root).eval_docs()
    story = json.loads((root / "coqa/coqa-dev-v1.0.json").read_text())
    story["data"][0]["answers"][1]["turn_id"] = 7
    _write(root / "coqa/coqa-dev-v1.0.json", json.dumps(story))
    with pytest.raises(TaskError, match=r"task coqa: .*coqa-dev-v1.0.json: story s1 turn 2: the answers' turn_id"):
        get_task("coqa", root).eval_docs()
    _write(root / "coqa/coqa-dev-v1.0.json", "{not json")
    with pytest.raises(TaskError, match=r"task coqa: .*coqa-dev-v1.0.json is not valid JSON"):
        get_task("coqa", root).eval_docs()
