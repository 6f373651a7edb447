"""SuperGLUE's CB, RTE, WiC, WSC, MultiRC and ReCoRD, ANLI R1-R3 and WSC273: fixtures in each published
format load, prompts follow GPT-3's Appendix G, few-shot contexts are built from the right pools; an
oracle scores 100% and a uniform model chance; MultiRC's F1a / EM and ReCoRD's EM / F1 match hand
computation; a real tiny model runs through all of them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from evaluation.adapters import DummyLM
from evaluation.api import run_eval
from evaluation.formats.superglue import clean_multirc_passage, em_per_question, f1a
from evaluation.registry import get_task
from evaluation.task import TaskError

TASKS = ["cb", "rte", "wic", "wsc", "multirc", "record", "anli_r1", "anli_r2", "anli_r3", "winograd"]


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


CB = [{"premise": "It was a cold night. Mary said the lake had frozen.", "hypothesis": "the lake had frozen",
       "label": "entailment", "idx": 0},
      {"premise": "Manhattan rents fell. But it was never cheap.", "hypothesis": "Manhattan comes cheap.",
       "label": "contradiction", "idx": 1},
      {"premise": "He wondered if she had left.", "hypothesis": "she had left", "label": "neutral", "idx": 2}]
RTE = [{"premise": "The cat sat on the mat.", "hypothesis": "A cat is sitting.", "label": "entailment", "idx": 0},
       {"premise": "The bet was about the top quark.", "hypothesis": "The top quark is the last quark.",
        "label": "not_entailment", "idx": 1},
       {"premise": "Rain fell all day in Oslo.", "hypothesis": "It rained in Oslo.", "label": "entailment", "idx": 2}]
WIC = [{"word": "bank", "sentence1": "He sat on the bank of the river.", "sentence2": "She robbed the bank.",
        "idx": 0, "label": False, "start1": 14, "end1": 18, "start2": 15, "end2": 19, "version": 1.1},
       {"word": "outfitter", "sentence1": "An outfitter provided everything needed for the safari.",
        "sentence2": "He went to a specialist outfitter to buy some boots.", "idx": 1, "label": True,
        "start1": 3, "end1": 12, "start2": 24, "end2": 33, "version": 1.1},
       {"word": "run", "sentence1": "I run every day.", "sentence2": "They run a shop.", "idx": 2, "label": False,
        "start1": 2, "end1": 5, "start2": 5, "end2": 8, "version": 1.1}]
WSC = [{"text": "Mark told Pete many lies about himself, which Pete included in his book. He should have been "
                "more truthful.", "target": {"span2_index": 13, "span1_index": 0, "span1_text": "Mark",
                                             "span2_text": "He"}, "idx": 0, "label": True},
       {"text": "The trophy doesn't fit into the brown suitcase because it is too large.",
        "target": {"span2_index": 9, "span1_index": 5, "span1_text": "the brown suitcase", "span2_text": "it"},
        "idx": 1, "label": False},
       {"text": "Tom thanked Sam because Sam helped him.",
        "target": {"span2_index": 6, "span1_index": 0, "span1_text": "Tom", "span2_text": "him"},
        "idx": 2, "label": True}]
MULTIRC_VAL = [{"idx": 0, "version": 1.1, "passage": {
    "text": "<b>Sent 1: </b>Tom has a red ball.<br><b>Sent 2: </b>He gave it to Ann on Monday.<br>",
    "questions": [
        {"question": "What color is the ball?", "idx": 0,
         "answers": [{"text": "Red", "idx": 0, "label": 1}, {"text": "Blue", "idx": 1, "label": 0}]},
        {"question": "Who got the ball?", "idx": 1,
         "answers": [{"text": "Ann", "idx": 2, "label": 1}, {"text": "Tom", "idx": 3, "label": 0},
                     {"text": "A girl named Ann", "idx": 4, "label": 1}]}]}}]
MULTIRC_TRAIN = MULTIRC_VAL + [{"idx": 1, "version": 1.1, "passage": {
    "text": "<b>Sent 1: </b>The shop opens at nine.<br><b>Sent 2: </b>It closes at five.<br>",
    "questions": [{"question": "When does the shop close?", "idx": 2,
                   "answers": [{"text": "At five", "idx": 5, "label": 1}, {"text": "At nine", "idx": 6, "label": 0}]}]}}]

RECORD_TEXT = ("(CNN) Alice Smith met Bob Jones in Paris. Alice Smith later flew home.\n@highlight\n"
               "Smith visits France\n@highlight\nThe trip was short")


def _span(text: str, name: str, nth: int = 0) -> dict:
    start = -1
    for _ in range(nth + 1):
        start = text.index(name, start + 1)
    return {"start": start, "end": start + len(name) - 1}  # ReCoRD's end is inclusive


RECORD = [{"source": "CNN", "idx": 0, "passage": {
    "text": RECORD_TEXT,
    "entities": [_span(RECORD_TEXT, "Alice Smith"), _span(RECORD_TEXT, "Bob Jones"), _span(RECORD_TEXT, "Paris"),
                 _span(RECORD_TEXT, "Alice Smith", 1), _span(RECORD_TEXT, "Smith", 2), _span(RECORD_TEXT, "France")]},
    "qas": [{"query": "@placeholder was greeted by Bob Jones.", "idx": 0,
             "answers": [{**_span(RECORD_TEXT, "Alice Smith"), "text": "Alice Smith"}]},
            {"query": "They met in @placeholder.", "idx": 1,
             "answers": [{**_span(RECORD_TEXT, "Paris"), "text": "Paris"}]}]}]
ANLI = [{"uid": "a0", "context": "The Gold Coast Hotel & Casino is a hotel and casino located in Paradise, Nevada.",
         "hypothesis": "The Gold Coast is a budget-friendly casino.", "label": "n", "reason": ""},
        {"uid": "a1", "context": "We shut the loophole last year.", "hypothesis": "The loophole is now gone",
         "label": "e", "reason": ""},
        {"uid": "a2", "context": "Ben is a dentist in Leeds.", "hypothesis": "Ben has never worked", "label": "c",
         "reason": ""}]


def _wsc273(text: str, pronoun: str, options: list[str], label: int, at: int = 0) -> dict:
    loc = -1
    for _ in range(at + 1):
        loc = text.index(f" {pronoun} ", loc + 1)
    return {"text": text, "pronoun": pronoun, "pronoun_loc": loc + 1, "quote": "", "quote_loc": loc + 1,
            "options": options, "label": label, "source": "fixture"}


WINOGRAD = [
    _wsc273("The city councilmen refused the demonstrators a permit because they feared violence.", "they",
            ["The city councilmen", "The demonstrators"], 0),
    _wsc273("Grace was happy to trade me her sweater for my jacket. She thinks it looks dowdy on her.", "it",
            ["the sweater", "the jacket"], 0),
    _wsc273("The man lifted the boy onto his shoulders.", "his", ["The man", "The boy"], 0),
    {"text": "The fish ate the worm. It was hungry.", "pronoun": "It", "pronoun_loc": 23, "quote": "It was",
     "quote_loc": 23, "options": ["the fish", "the worm"], "label": 0, "source": "fixture"},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("superglue")
    for name, rows in (("CB", CB), ("RTE", RTE), ("WiC", WIC), ("WSC", WSC), ("ReCoRD", RECORD)):
        _jsonl(root / name / "val.jsonl", rows)
        _jsonl(root / name / "train.jsonl", rows)
    _jsonl(root / "MultiRC/val.jsonl", MULTIRC_VAL)
    _jsonl(root / "MultiRC/train.jsonl", MULTIRC_TRAIN)
    for r in ("R1", "R2", "R3"):
        for split in ("train", "dev", "test"):
            _jsonl(root / f"anli_v1.0/{r}/{split}.jsonl", ANLI)
    _jsonl(root / "winograd_wsc/wsc273.jsonl", WINOGRAD)
    return root


def _assert_fewshot(task, doc_id: int, doc: dict, k: int) -> list[int]:
    """The k-shot context is the description, k distinct demonstrations of the few-shot pool (never the
    example itself when the pool is the eval split), then the prompt: returns the demonstrations' indices."""
    c = task.config
    ctx = task.fewshot_context(doc_id, doc, k, seed=7)
    prompt = task.text(doc)
    assert ctx.startswith(c.description) and ctx.endswith(prompt)
    middle = ctx[len(c.description):len(ctx) - len(prompt)]
    pool = task.fewshot_docs()
    same_split = c.fewshot_split is None
    for combo in itertools.permutations(range(len(pool)), k):
        if same_split and doc_id in combo:
            continue
        if middle == "".join(task.demo(pool[i]) + c.fewshot_delimiter for i in combo):
            return list(combo)
    raise AssertionError(f"{task.name}: {k}-shot context is not k demonstrations + prompt:\n{ctx!r}")


# ---------------------------------------------------------------------- prompts, gold, few-shot
def test_cb_prompt_gold_and_fewshot(data):
    t = get_task("cb", data)
    docs = t.eval_docs()
    assert t.text(docs[0]) == ("It was a cold night. Mary said the lake had frozen.\n"
                               "question: the lake had frozen true, false, or neither?\nanswer:")
    assert [t.gold(d) for d in docs] == [0, 1, 2] and t.choices(docs[0]) == ["true", "false", "neither"]
    assert t.demo(docs[1]) == ("Manhattan rents fell. But it was never cheap.\n"
                               "question: Manhattan comes cheap. true, false, or neither?\nanswer: false")
    picks = _assert_fewshot(t, 0, docs[0], 1)
    assert t.fewshot_context(0, docs[0], 1, seed=7) == t.demo(docs[picks[0]]) + "\n\n" + t.text(docs[0])
    assert len(set(_assert_fewshot(t, 0, docs[0], 2))) == 2


def test_rte_wic_prompts(data):
    rte = get_task("rte", data)
    d = rte.eval_docs()
    assert rte.text(d[0]) == "The cat sat on the mat.\nquestion: A cat is sitting. True or False?\nanswer:"
    assert [rte.gold(x) for x in d] == [0, 1, 0] and rte.target(d[1]) == "False"
    for k in (1, 2):
        _assert_fewshot(rte, 1, d[1], k)
    wic = get_task("wic", data)
    w = wic.eval_docs()
    assert wic.text(w[0]) == ("He sat on the bank of the river.\nShe robbed the bank.\n"
                              "question: Is the word 'bank' used in the same way in the two sentences above?\nanswer:")
    assert [wic.gold(x) for x in w] == [0, 1, 0] and wic.target(w[1]) == "yes"
    for k in (1, 2):
        _assert_fewshot(wic, 0, w[0], k)


def test_wsc_marks_the_pronoun_and_asks_about_the_candidate(data, tmp_path):
    t = get_task("wsc", data)
    d = t.eval_docs()
    assert t.text(d[0]) == ("Passage: Mark told Pete many lies about himself, which Pete included in his book. "
                            "*He* should have been more truthful.\n"
                            "Question: In the passage above, does the pronoun \"*He*\" refer to \"Mark\"?\nAnswer:")
    assert d[2]["passage"] == "Tom thanked Sam because Sam helped *him*."  # punctuation stays outside the mark
    assert d[1]["passage"].endswith("suitcase because *it* is too large.")
    assert [t.gold(x) for x in d] == [1, 0, 1] and t.choices(d[0]) == ["no", "yes"]
    zero = t.fewshot_context(0, d[0], 0, seed=1)
    assert zero == ("Final Exam with Answer Key\nInstructions: Please carefully read the following passages. "
                    "For each passage, you must identify which noun the pronoun marked in *bold* refers to.\n"
                    "=====\n" + t.text(d[0]))
    for k in (1, 2):
        _assert_fewshot(t, 0, d[0], k)
    from evaluation.formats.superglue import load_wsc
    spaced = tmp_path / "spaced.jsonl"  # a run of spaces: the index counts the words without the empty ones
    _jsonl(spaced, [{"text": "Tom  thanked Sam because Sam helped him.", "label": True, "target": {
        "span1_text": "Tom", "span1_index": 0, "span2_text": "him", "span2_index": 6}}])
    assert load_wsc(str(spaced), None, "wsc")[0]["passage"] == "Tom thanked Sam because Sam helped *him*."


def test_multirc_one_example_per_answer_option(data):
    t = get_task("multirc", data)
    d = t.eval_docs()
    assert len(d) == 5
    assert t.text(d[0]) == "Tom has a red ball. He gave it to Ann on Monday.\n\nWhat color is the ball?"
    assert t.choices(d[0]) == ["- [False] Red", "- [True] Red"]
    assert [t.gold(x) for x in d] == [1, 0, 1, 0, 1]
    assert t.demo(d[1]) == "Tom has a red ball. He gave it to Ann on Monday.\n\nWhat color is the ball?\n- [False] Blue"
    header = "READING COMPREHENSION ANSWER KEY\nTom has a red ball. He gave it to Ann on Monday.\n\n"
    assert t.fewshot_context(0, d[0], 0, seed=1) == header + "What color is the ball?"
    # K counts questions (GPT-3 Figure G.15): the paragraph's other question with all its options labelled
    other = "Who got the ball?\n- [True] Ann\n- [False] Tom\n- [True] A girl named Ann\n\n"
    assert t.fewshot_context(0, d[0], 1, seed=1) == t.fewshot_context(0, d[0], 2, seed=1) == \
        header + other + "What color is the ball?"
    assert t.fewshot_context(2, d[2], 1, seed=1) == \
        header + "What color is the ball?\n- [True] Red\n- [False] Blue\n\nWho got the ball?"
    assert clean_multirc_passage("<b>Sent 1: </b>A b.<br><b>Sent 12: </b>C d.<br/>") == "A b. C d."


def test_record_one_example_per_query_with_the_entities_as_choices(data):
    t = get_task("record", data)
    d = t.eval_docs()
    assert len(d) == 2
    assert t.text(d[0]) == ("(CNN) Alice Smith met Bob Jones in Paris. Alice Smith later flew home.\n"
                            "- Smith visits France\n- The trip was short")
    assert d[0]["entities"] == ["Alice Smith", "Bob Jones", "Paris", "Smith", "France"]  # distinct texts
    assert t.choices(d[0]) == ["- Alice Smith was greeted by Bob Jones.", "- Bob Jones was greeted by Bob Jones.",
                               "- Paris was greeted by Bob Jones.", "- Smith was greeted by Bob Jones.",
                               "- France was greeted by Bob Jones."]
    assert [t.gold(x) for x in d] == [0, 2]
    assert t.demo(d[1]).endswith("The trip was short\n- They met in Paris.")
    for k in (1, 2):
        _assert_fewshot(t, 0, d[0], k)


def test_anli_rounds(data):
    for name in ("anli_r1", "anli_r2", "anli_r3"):
        t = get_task(name, data)
        d = t.eval_docs()
        assert t.config.eval_split == "dev"
        assert t.text(d[0]) == ("The Gold Coast Hotel & Casino is a hotel and casino located in Paradise, Nevada.\n"
                                "Question: The Gold Coast is a budget-friendly casino. True, False, or Neither?")
        assert [t.target(x) for x in d] == ["Neither", "True", "False"]
        for k in (1, 2):
            _assert_fewshot(t, 2, d[2], k)
    assert get_task("anli_r2", data).config.paper_name == "ANLI R2"


def test_winograd_partial_scoring(data):
    t = get_task("winograd", data)
    d = t.eval_docs()
    assert t.choices(d[0]) == ["The city councilmen refused the demonstrators a permit because the city councilmen",
                               "The city councilmen refused the demonstrators a permit because the demonstrators"]
    assert t.continuation(d[0]) == " feared violence."
    # GPT-3's figure G.13
    assert t.choices(d[1])[1] == "Grace was happy to trade me her sweater for my jacket. She thinks the jacket"
    assert t.continuation(d[1]) == " looks dowdy on her."
    assert t.choices(d[2]) == ["The man lifted the boy onto the man's", "The man lifted the boy onto the boy's"]
    assert t.continuation(d[2]) == " shoulders."  # a possessive pronoun makes the option possessive
    assert t.choices(d[3]) == ["The fish ate the worm. The fish", "The fish ate the worm. The worm"]  # sentence start
    assert [t.gold(x) for x in d] == [0, 0, 0, 0]
    assert t.demo(d[0]) == "The city councilmen refused the demonstrators a permit because the city councilmen feared violence."
    for k in (1, 2):  # no training split: the other schemas, never the example itself
        picks = _assert_fewshot(t, 1, d[1], k)
        assert 1 not in picks


# ---------------------------------------------------------------------- oracle and uniform models
def _gold_continuations(task) -> set[str]:
    c = task.config
    return {c.target_delimiter + task.choices(d)[task.gold(d)] for d in task.eval_docs()}


MAIN = {"cb": ["acc_norm_token", "f1_macro"], "rte": ["acc_norm_token"], "wic": ["acc_norm_token"], "wsc": ["acc_norm_token"],
        "multirc": ["f1a", "em_question"], "record": ["exact_match", "f1"], "anli_r1": ["acc_norm_token"],
        "anli_r2": ["acc_norm_token"], "anli_r3": ["acc_norm_token"], "winograd": ["acc_norm_token"]}


def test_oracle_scores_100_and_uniform_scores_chance(data):
    label_tasks = ["cb", "rte", "wic", "wsc", "anli_r1", "anli_r2", "anli_r3"]
    answers = {}
    for name in label_tasks:  # each prompt's tail is unique: the oracle answers it with the gold label
        t = get_task(name, data)
        answers.update({t.text(d): " " + t.target(d) for d in t.eval_docs()})
    w = get_task("winograd", data)
    answers.update({w.choices(d)[w.gold(d)]: w.continuation(d) for d in w.eval_docs()})
    oracle = run_eval(DummyLM("oracle", answers=answers), label_tasks + ["winograd"], [0, 1], None, data_dir=data,
                      bootstrap_iters=20)
    # MultiRC's options share their question's prompt and ReCoRD's queries their passage: the oracle knows
    # the right continuations instead
    right = _gold_continuations(get_task("multirc", data)) | _gold_continuations(get_task("record", data))
    by_cont = run_eval(DummyLM(logprob_fn=lambda ctx, cont: 0.0 if cont in right else -5.0), ["multirc", "record"],
                       [0, 1], None, data_dir=data,
                      bootstrap_iters=20)
    results = {**oracle["results"], **by_cont["results"]}
    for name in TASKS:
        for k in ("0", "1"):
            for m in MAIN[name]:
                assert results[name][k][m] == pytest.approx(1.0), (name, k, m)
    assert oracle["tasks"]["cb"]["metrics"][-1] == "f1_macro"
    assert by_cont["tasks"]["multirc"]["metrics"][-2:] == ["f1a", "em_question"]

    uniform = run_eval(DummyLM("uniform"), TASKS, [0, 1], None, data_dir=data,
                      bootstrap_iters=20)["results"]
    chance = {"cb": 1 / 3, "rte": 1 / 2, "wic": 1 / 2, "wsc": 1 / 2, "multirc": 1 / 2, "anli_r1": 1 / 3,
              "anli_r2": 1 / 3, "anli_r3": 1 / 3, "record": (1 / 5 + 1 / 5) / 2}
    for name, p in chance.items():  # every character (a DummyLM token) alike: per-token scores tie, ties count 1/k
        for k in ("0", "1"):
            assert uniform[name][k]["acc_norm_token"] == pytest.approx(p), name
    assert uniform["winograd"]["0"]["acc"] == pytest.approx(0.5)  # one shared continuation: always a tie
    # per token a uniform model ties every choice and picks the first, "- [False] ...": no option is
    # called true (F1a 0), and every question has a true option (EM 0)
    assert uniform["multirc"]["0"]["f1a"] == 0.0
    assert uniform["multirc"]["0"]["em_question"] == 0.0


# ---------------------------------------------------------------------- the metrics by hand
def test_multirc_f1a_and_exact_match_by_hand(data):
    from sklearn.metrics import f1_score
    # the model says True to Red, Blue, Ann and the girl, False to Tom
    says_true = {"Red", "Blue", "Ann", "A girl named Ann"}

    def logprob(ctx, cont):
        if ctx == "Answer:":
            return -1.0
        answer, label = cont.split("] ", 1)[1], "[True]" in cont
        return -1.0 if label == (answer in says_true) else -2.0

    res = run_eval(DummyLM(logprob_fn=logprob), ["multirc"], [0], None, data_dir=data, bootstrap_iters=20)["results"]["multirc"]["0"]
    # options (pred, gold): Red (1,1) Blue (1,0) Ann (1,1) Tom (0,0) girl (1,1): tp 3, fp 1, fn 0
    assert res["f1a"] == pytest.approx(6 / 7)
    assert res["f1a"] == pytest.approx(f1_score([1, 0, 1, 0, 1], [1, 1, 1, 0, 1]))
    assert res["em_question"] == pytest.approx(0.5)  # question 0 has Blue wrong, question 1 is all right
    assert res["n"] == 5
    assert f1a([(0, 0), (0, 1)]) == 0.0 and f1a([(1, 1)]) == 1.0
    assert em_per_question([("a", True), ("a", False), ("b", True), ("c", True)]) == pytest.approx(2 / 3)


def test_record_official_em_and_f1_by_hand(data):
    # query 0 (gold "Alice Smith") -> "Smith": EM 0, F1 2*(1*0.5)/1.5 = 2/3; query 1 (gold "Paris") -> "Paris"
    picks = {"- Smith was greeted by Bob Jones.", "- They met in Paris."}
    res = run_eval(DummyLM(logprob_fn=lambda ctx, cont: -1.0 if cont.lstrip("\n") in picks else -3.0),
                   ["record"], [0], None, data_dir=data, bootstrap_iters=20)["results"]["record"]["0"]
    assert res["exact_match"] == pytest.approx(0.5)
    assert res["f1"] == pytest.approx((2 / 3 + 1) / 2)
    from evaluation.formats.superglue import score_record
    doc = {"entities": ["The Paris!", "Bob", "Paris"], "answers": ["paris", "Bob Jones"]}
    # the official script's normalisation: lower case, no punctuation, no articles
    first, second, third = ({"acc": [0.0 if i == k else -1.0 for i in range(3)]} for k in range(3))
    assert score_record(None, doc, {"pred": 0, "scores": first}) == {"acc": 1.0, "exact_match": 1.0, "f1": 1.0}
    assert score_record(None, doc, {"pred": 1, "scores": second}) == \
        {"acc": 0.0, "exact_match": 0.0, "f1": pytest.approx(2 / 3)}
    # both spellings of the answer are right: the accuracies count either
    assert score_record(None, doc, {"pred": 2, "scores": third})["acc"] == 1.0
    tie = {"acc": [0.0, 0.0, 0.0]}  # uniform: two of the three tied entities are right
    assert score_record(None, doc, {"pred": 0, "scores": tie})["acc"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------- bad data
@pytest.mark.parametrize("task,path,rows,message", [
    ("cb", "CB/val.jsonl", [{"premise": "p", "hypothesis": "h", "label": "maybe"}], "label 'maybe' is none of"),
    ("rte", "RTE/val.jsonl", [{"premise": "p", "label": "entailment"}], "missing field hypothesis"),
    ("wic", "WiC/val.jsonl", [{"word": "w", "sentence1": "a", "sentence2": "b", "label": "yes"}], "label 'yes'"),
    ("wsc", "WSC/val.jsonl", [{"text": "Tom saw him.", "label": True, "target": {
        "span1_text": "Tom", "span1_index": 0, "span2_text": "him", "span2_index": 1}}], "word 1 of the text is 'saw'"),
    ("record", "ReCoRD/val.jsonl", [{"passage": {"text": "Ann met Bob.", "entities": [{"start": 0, "end": 2}]},
                                     "qas": [{"query": "@placeholder left.", "answers": [{"text": "Bob"}]}]}],
     "no entity of the passage is an answer"),
    ("anli_r1", "anli_v1.0/R1/dev.jsonl", [{"context": "c", "hypothesis": "h", "label": "x"}], "label 'x'"),
    ("winograd", "winograd_wsc/wsc273.jsonl", [{"text": "Tom saw him.", "pronoun": "him", "pronoun_loc": 2,
                                                "options": ["Tom", "Bob"], "label": 0}], "pronoun_loc 2"),
])
def test_bad_data_names_task_file_and_line(tmp_path, task, path, rows, message):
    _jsonl(tmp_path / path, rows)
    with pytest.raises(TaskError) as err:
        get_task(task, tmp_path).eval_docs()
    assert f"task {task}: " in str(err.value) and f"{path} line 1" in str(err.value) and message in str(err.value)
    (tmp_path / path).write_text("{not json\n")
    with pytest.raises(TaskError, match="line 1 is not JSON"):
        get_task(task, tmp_path).eval_docs()


# ---------------------------------------------------------------------- a real model
def test_real_tiny_model_runs_every_task(data, tiny_lm, tmp_path):
    res = run_eval(tiny_lm, ["cb", "rte", "wic", "wsc", "multirc", "record", "anli", "winograd"], [0, 1], tmp_path,
                   data_dir=data, bootstrap_iters=20)
    r = res["results"]
    for name in TASKS:
        for k in ("0", "1"):
            for m in MAIN[name]:
                assert 0.0 <= r[name][k][m] <= 1.0, (name, k, m)
    md = (tmp_path / "results.md").read_text()
    assert "ReCoRD" in md and "MultiRC" in md and "ANLI R3" in md and "Winograd" in md
