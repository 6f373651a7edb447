"""mnemos's tasks against lm-evaluation-harness's (the installed `lm_eval`, written for 0.4.13): the same
document of each fixture is rendered by both harnesses and the model requests compared.

lm-eval's side is lm-eval itself: its task YAML read with its own loader (`!function` utilities and
`include`s resolved), built into its `ConfigurableTask` over a hand-made dataset in the Hugging Face schema
its YAML expects (nothing downloaded), and asked for `fewshot_context` and `construct_requests`. The
demonstrations it gets are the ones mnemos drew for the same example, in the same order, so a k-shot
context compares delimiters and demonstration rendering, not two random draws.

Tasks whose requests are identical are asserted equal at k = 0, 1, 2 on every fixture document, with the
evaluation and few-shot splits. For the others, one test per task pins the difference that
evaluation/LM_EVAL.md states, so the table cannot go stale silently.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness (lm_eval) is not installed")
datasets = pytest.importorskip("datasets", reason="datasets is not installed")

from lm_eval.api import samplers  # noqa: E402
from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

from evaluation.api import _requests  # noqa: E402
from evaluation.registry import get_task  # noqa: E402
from tests.evaluation.test_tasks_reading import write_reading_fixtures  # noqa: E402
from tests.evaluation.test_tasks_superglue import data as superglue_data  # noqa: E402,F401 (a fixture)
from tests.evaluation.test_tasks_translation import write_wmt_fixtures  # noqa: E402

LM_TASKS = Path(lm_eval.__file__).parent / "tasks"
SEED = 1234


# ---------------------------------------------------------------------- the two harnesses, side by side
class _Given(samplers.ContextSampler):
    """lm-eval's sampler, handing out the demonstrations it is given, in order."""

    def sample(self, n, eval_doc=None, df=None, **kwargs):
        return list(self.df)[:n]


@pytest.fixture
def squad_metrics_module(monkeypatch):
    """lm-eval's ReCoRD and CoQA utilities import transformers.data.metrics.squad_metrics, which transformers 5
    removed; only their prompt functions are used here, so a stand-in lets lm-eval's loader import them."""
    try:
        import transformers.data.metrics.squad_metrics  # noqa: F401
    except ImportError:
        import types
        stub = types.ModuleType("transformers.data.metrics.squad_metrics")
        monkeypatch.setitem(sys.modules, "transformers.data.metrics", types.ModuleType("transformers.data.metrics"))
        monkeypatch.setitem(sys.modules, "transformers.data.metrics.squad_metrics", stub)


def lm_task(yaml_path: str, splits: dict[str, list[dict]], **overrides) -> ConfigurableTask:
    """lm-eval's task from its own YAML, over hand-built documents (split name -> HF-schema records)."""
    cfg = load_yaml(LM_TASKS / yaml_path)
    for key in ("tag", "group", "dataset_path", "dataset_name", "dataset_kwargs"):
        cfg.pop(key, None)
    cfg.update(overrides)
    dataset = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
    cfg["custom_dataset"] = lambda **_: dataset
    log = logging.getLogger("lm_eval")
    level = log.level
    log.setLevel(logging.ERROR)  # its notes on metric defaults and custom datasets
    try:
        return ConfigurableTask(config=cfg)
    finally:
        log.setLevel(level)


def lm_requests(task: ConfigurableTask, doc: dict, demos=()) -> list[tuple]:
    """The arguments of lm-eval's requests for `doc` with these demonstrations."""
    task.sampler = _Given(list(demos))
    ctx = task.fewshot_context(doc, len(demos))
    inst = task.construct_requests(doc, ctx)
    return [i.arguments for i in (inst if isinstance(inst, list) else [inst])]


def lm_doc(task: ConfigurableTask, hf: dict) -> dict:
    """An HF-schema document as lm-eval evaluates it: after its own process_docs, where it has one."""
    if task.config.process_docs is None:
        return hf
    return task.config.process_docs(datasets.Dataset.from_list([hf]))[0]


def lm_splits(task: ConfigurableTask) -> tuple[str, str]:
    """(evaluated split, demonstration split) by lm-eval's rules."""
    evaluated = task.config.test_split if task.has_test_docs() else task.config.validation_split
    fewshot = task.fewshot_cfg.split or (task.config.training_split if task.has_training_docs() else
                                         task.config.validation_split if task.has_validation_docs() else
                                         task.config.test_split)
    return evaluated, fewshot


def mnemos_requests(task, doc_id: int, doc: dict, k: int) -> tuple[list[tuple], list[dict]]:
    """mnemos's scored (context, continuation) pairs (generation: (context, settings)) and the documents
    of the demonstrations it drew, in order."""
    drawn: list[dict] = []
    render = task.demo
    task.demo = lambda d: drawn.append(d) or render(d)
    task._demos.clear()
    try:
        reqs, meta = _requests(task, doc, doc_id, k, SEED)
    finally:
        del task.demo
    return (meta.get("pairs") or [r[1] for r in reqs]), drawn


def first_requests(mn_task, lm: ConfigurableTask, to_hf) -> tuple[list[tuple], list[tuple]]:
    """Both harnesses' 0-shot requests for the first evaluated document."""
    doc = mn_task.eval_docs()[0]
    return mnemos_requests(mn_task, 0, doc, 0)[0], lm_requests(lm, to_hf(doc))


# ---------------------------------------------------------------------- documents in the HF schemas
def _fields(*names):
    return lambda d: {n: d[n] for n in names}


def hf_hellaswag(d):
    keep = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split")
    return {**{k: d[k] for k in keep}, "label": str(d["label"])}  # Rowan/hellaswag: label is a string


def hf_arc(d):  # allenai/ai2_arc
    q = d["question"]
    return {"id": d["id"], "question": q["stem"], "answerKey": d["answerKey"],
            "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}}


def hf_openbookqa(d):  # allenai/openbookqa main
    a = hf_arc(d)
    return {"id": a["id"], "question_stem": a["question"], "choices": a["choices"], "answerKey": a["answerKey"]}


def hf_storycloze(d):  # LSDSem/story_cloze 2016
    return {"story_id": d["InputStoryid"], **{f"input_sentence_{i}": d[f"InputSentence{i}"] for i in range(1, 5)},
            "sentence_quiz1": d["RandomFifthSentenceQuiz1"], "sentence_quiz2": d["RandomFifthSentenceQuiz2"],
            "answer_right_ending": int(d["AnswerRightEnding"])}


# mnemos task -> (fixture, lm-eval YAML, document mapper, mnemos split -> lm-eval split, shots compared)
SAME = {
    "lambada_standard": ("std_data", "lambada/lambada_openai.yaml", _fields("text"), {"test": "test"}, [0]),
    "lambada_cloze": ("std_data", "lambada_cloze/lambada_openai_cloze.yaml", _fields("text"), {"test": "test"}, [0]),
    "hellaswag": ("std_data", "hellaswag/hellaswag.yaml", hf_hellaswag,
                  {"train": "train", "validation": "validation"}, [0, 1, 2]),
    "winogrande": ("std_data", "winogrande/default.yaml", _fields("sentence", "option1", "option2", "answer"),
                   {"train": "train", "validation": "validation"}, [0, 1, 2]),
    "arc_easy": ("std_data", "arc/arc_easy.yaml", hf_arc,
                 {"train": "train", "validation": "validation", "test": "test"}, [0, 1, 2]),
    "arc_challenge": ("std_data", "arc/arc_challenge.yaml", hf_arc,
                      {"train": "train", "validation": "validation", "test": "test"}, [0, 1, 2]),
    "openbookqa": ("std_data", "openbookqa/openbookqa.yaml", hf_openbookqa,
                   {"train": "train", "test": "test"}, [0, 1, 2]),
    "storycloze": ("std_data", "storycloze/storycloze_2016.yaml", hf_storycloze,
                   {"validation": "validation", "test": "test"}, [0, 1, 2]),
}


@pytest.fixture(scope="module")
def reading_data(tmp_path_factory) -> Path:
    return write_reading_fixtures(tmp_path_factory.mktemp("lmeval_reading"))


@pytest.fixture(scope="module")
def wmt_data(tmp_path_factory) -> Path:
    return write_wmt_fixtures(tmp_path_factory.mktemp("lmeval_wmt"))


def _same_pair(name, root):
    fixture, yaml_path, to_hf, split_names, shots = SAME[name]
    task = get_task(name, root)
    c = task.config
    lm_docs = {split_names[s]: [to_hf(d) for d in task.docs(s)] for s in split_names}
    lm_docs.setdefault("validation", [])  # a split lm-eval's YAML names but mnemos's data lacks
    return task, lm_task(yaml_path, lm_docs), to_hf, split_names, shots, c


@pytest.mark.parametrize("name", sorted(SAME))
def test_identical_prompts_choices_targets_and_splits(name, request):
    root = request.getfixturevalue(SAME[name][0])
    task, lm, to_hf, split_names, shots, c = _same_pair(name, root)
    assert lm_splits(lm) == (split_names[c.eval_split], split_names[c.fewshot_split or c.eval_split])
    for doc_id, doc in enumerate(task.eval_docs()):
        hf = lm_doc(lm, to_hf(doc))
        if c.output_type == "multiple_choice":  # the gold choice: lm-eval's index (WinoGrande: its doc_to_text)
            gold = lm.doc_to_text(hf) if lm.multiple_input else lm.doc_to_target(hf)
            assert task.gold(doc) == (gold if isinstance(gold, int) else lm.doc_to_choice(hf).index(gold))
        for k in shots:
            ours, drawn = mnemos_requests(task, doc_id, doc, k)
            assert len(drawn) == k
            assert ours == lm_requests(lm, hf, [lm_doc(lm, to_hf(d)) for d in drawn]), (name, doc_id, k)


# ---------------------------------------------------------------------- tasks that differ: the difference, pinned
def _pool(task, split):
    return task.docs(split)


def test_copa_lm_eval_doubles_the_space_before_each_choice(std_data):
    t = get_task("copa", std_data)
    hf = _fields("premise", "choice1", "choice2", "question", "label", "idx")
    lm = lm_task("super_glue/copa/default.yaml", {"train": [hf(d) for d in t.docs("train")],
                                                     "validation": [hf(d) for d in t.eval_docs()]})
    ours, theirs = first_requests(t, lm, hf)
    assert ours == [("The man broke his toe because", " he dropped a hammer on his foot."),
                    ("The man broke his toe because", " he got a hole in his sock.")]
    # lm-eval's choices carry their own space and its target delimiter adds another (GPT-3 G.5: one)
    assert theirs == [(ctx, " " + cont) for ctx, cont in ours]


def test_piqa_lm_eval_wraps_the_goal_in_question_and_answer(std_data):
    t = get_task("piqa", std_data)
    hf = _fields("goal", "sol1", "sol2", "label")
    lm = lm_task("piqa/piqa.yaml", {"train": [hf(d) for d in t.docs("train")],
                                    "validation": [hf(d) for d in t.eval_docs()]})
    ours, theirs = first_requests(t, lm, hf)
    # GPT-3 G.4: the goal alone is the context
    assert ours == [("To open a jar 0", " twist the lid."), ("To open a jar 0", " hit it with a fish.")]
    assert theirs == [("Question: To open a jar 0\nAnswer:", cont) for _, cont in ours]


def test_lambada_demonstrations_differ_only_by_lm_eval_doubled_space(std_data):
    t = get_task("lambada_standard", std_data)
    lm = lm_task("lambada/lambada_openai.yaml", {"test": [{"text": d["text"]} for d in t.eval_docs()]})
    doc = t.eval_docs()[0]
    ours, drawn = mnemos_requests(t, 0, doc, 1)
    theirs = lm_requests(lm, {"text": doc["text"]}, [{"text": d["text"]} for d in drawn])
    head, tail = drawn[0]["text"].rsplit(" ", 1)
    assert ours[0][0] == f"{head} {tail}\n\n{t.text(doc)}"
    assert theirs == [(f"{head}  {tail}\n\n{t.text(doc)}", ours[0][1])]


def _lm_superglue(name, yaml_path, mn_split_docs, to_hf, **over):
    return lm_task(yaml_path, {"train": [to_hf(d) for d in mn_split_docs["train"]],
                               "validation": [to_hf(d) for d in mn_split_docs["validation"]]}, **over)


def test_boolq_lm_eval_capitalises_question_and_answer(std_data):
    t = get_task("boolq", std_data)
    hf = lambda d: {"question": d["question"], "passage": d["passage"], "idx": d["idx"], "label": int(d["label"])}
    lm = _lm_superglue("boolq", "super_glue/boolq/default.yaml", {s: t.docs(s) for s in ("train", "validation")}, hf)
    ours, theirs = first_requests(t, lm, hf)
    assert ours[0] == ("The sky appears blue by day.\nquestion: is the sky blue?\nanswer:", " no")
    assert theirs[0] == ("The sky appears blue by day.\nQuestion: is the sky blue?\nAnswer:", " no")
    assert [c for _, c in ours] == [c for _, c in theirs]


CB_LABELS = {"entailment": 0, "contradiction": 1, "neutral": 2}


def test_cb_rte_wic_lm_eval_capitalised_labels_and_prompts(superglue_data):
    root = superglue_data
    cb = get_task("cb", root)
    hf = lambda d: {"premise": d["premise"], "hypothesis": d["hypothesis"], "idx": d["idx"],
                    "label": CB_LABELS[d["label"]]}
    lm = _lm_superglue("cb", "super_glue/cb/default.yaml", {s: cb.docs(s) for s in ("train", "validation")}, hf)
    ours, theirs = first_requests(cb, lm, hf)
    assert ours == [("It was a cold night. Mary said the lake had frozen.\nquestion: the lake had frozen true, "
                     "false, or neither?\nanswer:", f" {w}") for w in ("true", "false", "neither")]
    assert theirs == [("It was a cold night. Mary said the lake had frozen.\nQuestion: the lake had frozen. True, "
                       "False, or Neither?\nAnswer:", f" {w}") for w in ("True", "False", "Neither")]

    rte = get_task("rte", root)
    hf = lambda d: {"premise": d["premise"], "hypothesis": d["hypothesis"], "idx": d["idx"],
                    "label": ["entailment", "not_entailment"].index(d["label"])}
    lm = _lm_superglue("rte", "super_glue/rte/default.yaml", {s: rte.docs(s) for s in ("train", "validation")}, hf)
    ours, theirs = first_requests(rte, lm, hf)
    assert ours[0] == ("The cat sat on the mat.\nquestion: A cat is sitting. True or False?\nanswer:", " True")
    assert theirs[0] == ("The cat sat on the mat.\nQuestion: A cat is sitting. True or False?\nAnswer:", " True")
    assert [c for _, c in ours] == [c for _, c in theirs]

    wic = get_task("wic", root)
    keep = ("word", "sentence1", "sentence2", "start1", "end1", "start2", "end2", "idx")
    hf = lambda d: {**{k: d[k] for k in keep}, "label": int(d["label"])}
    lm = _lm_superglue("wic", "super_glue/wic/default.yaml", {s: wic.docs(s) for s in ("train", "validation")}, hf)
    ours, theirs = first_requests(wic, lm, hf)
    assert ours[0][0] == ("He sat on the bank of the river.\nShe robbed the bank.\nquestion: Is the word 'bank' "
                          "used in the same way in the two sentences above?\nanswer:")
    assert theirs[0][0] == ("Sentence 1: He sat on the bank of the river.\nSentence 2: She robbed the bank.\n"
                            "Question: Is the word 'bank' used in the same way in the two sentences above?\nAnswer:")
    assert [c for _, c in ours] == [c for _, c in theirs] == [" no", " yes"]


def test_wsc_lm_eval_has_no_exam_header_and_bolds_the_noun(superglue_data):
    t = get_task("wsc", superglue_data)
    hf = lambda d: {"text": d["text"], **{k: d["target"][k] for k in ("span1_index", "span2_index", "span1_text",
                                                                           "span2_text")},
                    "idx": d["idx"], "label": int(d["label"])}
    lm = _lm_superglue("wsc", "super_glue/wsc/default.yaml", {s: t.docs(s) for s in ("train", "validation")}, hf)
    ours, theirs = first_requests(t, lm, hf)
    passage = ("Passage: Mark told Pete many lies about himself, which Pete included in his book. *He* should "
               "have been more truthful.\n")
    assert ours[0][0] == (t.config.description + passage +
                          'Question: In the passage above, does the pronoun "*He*" refer to "Mark"?\nAnswer:')
    assert theirs[0][0] == passage + 'Question: In the passage above, does the pronoun "*He*" refer to "*Mark*"?\nAnswer:'
    assert [c for _, c in ours] == [c for _, c in theirs] == [" no", " yes"]


def test_multirc_lm_eval_asks_yes_no_per_answer(superglue_data):
    t = get_task("multirc", superglue_data)
    raw = json.loads((superglue_data / "MultiRC/val.jsonl").read_text().splitlines()[0])
    q, a = raw["passage"]["questions"][0], raw["passage"]["questions"][0]["answers"][0]
    hf = {"paragraph": raw["passage"]["text"], "question": q["question"], "answer": a["text"],
          "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": a["label"]}
    lm = lm_task("super_glue/multirc/default.yaml", {"train": [hf], "validation": [hf]})
    ours = mnemos_requests(t, 0, t.eval_docs()[0], 0)[0]
    assert ours == [("READING COMPREHENSION ANSWER KEY\nTom has a red ball. He gave it to Ann on Monday.\n\n"
                     "What color is the ball?", "\n- [False] Red"),
                    ("READING COMPREHENSION ANSWER KEY\nTom has a red ball. He gave it to Ann on Monday.\n\n"
                     "What color is the ball?", "\n- [True] Red")]
    # lm-eval keeps the HTML markup and asks "Is the answer correct?"; its choice 0 is "yes", label 1 = true
    para = "<b>Sent 1: </b>Tom has a red ball.<br><b>Sent 2: </b>He gave it to Ann on Monday.<br>"
    assert lm_requests(lm, hf) == [(f"{para}\nQuestion: What color is the ball?\nAnswer:", f" Red\nIs the answer "
                                    f"correct? {w}") for w in ("yes", "no")]
    assert lm.doc_to_target(hf) == 1


def test_record_lm_eval_indents_the_highlights(superglue_data, squad_metrics_module):
    t = get_task("record", superglue_data)
    raw = json.loads((superglue_data / "ReCoRD/val.jsonl").read_text().splitlines()[0])
    text, q = raw["passage"]["text"], raw["qas"][0]
    ents = [text[e["start"]:e["end"] + 1] for e in raw["passage"]["entities"]]
    hf = {"passage": text, "query": q["query"], "entities": ents, "answers": [a["text"] for a in q["answers"]],
          "idx": {"passage": 0, "query": 0}}
    lm = lm_task("super_glue/record/default.yaml", {"train": [hf], "validation": [hf]})
    doc = t.eval_docs()[0]
    ours = mnemos_requests(t, 0, doc, 0)[0]
    article = "(CNN) Alice Smith met Bob Jones in Paris. Alice Smith later flew home."
    assert ours[0] == (f"{article}\n- Smith visits France\n- The trip was short",
                       "\n- Alice Smith was greeted by Bob Jones.")
    assert len(ours) == 5  # distinct entities in passage order
    hf_doc = lm.validation_docs()[0]
    theirs = lm_requests(lm, hf_doc)
    assert theirs[0] == (f"{article}\n\n  - Smith visits France.\n  - The trip was short.\n",
                         "   - Alice Smith was greeted by Bob Jones.")
    assert len(theirs) == 5  # distinct entities, sorted


def test_anli_lm_eval_adds_an_answer_line(superglue_data):
    t = get_task("anli_r1", superglue_data)
    hf = lambda d: {"uid": d["uid"], "premise": d["context"], "hypothesis": d["hypothesis"],
                    "label": "enc".index(d["label"]), "reason": d["reason"]}
    docs = [hf(d) for d in t.eval_docs()]
    lm = lm_task("anli/anli_r1.yaml", {"train_r1": docs, "dev_r1": docs, "test_r1": docs})
    ours, theirs = first_requests(t, lm, hf)
    premise = "The Gold Coast Hotel & Casino is a hotel and casino located in Paradise, Nevada."
    question = "Question: The Gold Coast is a budget-friendly casino. True, False, or Neither?"
    assert ours == [(f"{premise}\n{question}", f" {w}") for w in ("True", "Neither", "False")]
    assert theirs == [(f"{premise}\n{question}\nAnswer:", f" {w}") for w in ("True", "Neither", "False")]
    # lm-eval evaluates the test split (its YAML names one); mnemos dev, as GPT-3 reports
    assert lm_splits(lm) == ("test_r1", "train_r1") and t.config.eval_split == "dev"
    assert t.gold(t.eval_docs()[0]) == lm.doc_to_choice(docs[0]).index(lm.doc_to_target(docs[0]))


def test_winograd_lm_eval_doubles_the_space_before_the_continuation(superglue_data):
    t = get_task("winograd", superglue_data)
    raw = [json.loads(x) for x in (superglue_data / "winograd_wsc/wsc273.jsonl").read_text().splitlines()]
    lm = lm_task("wsc273/default.yaml", {"test": raw})
    hf_docs = lm.test_docs()
    for doc_id, doc in enumerate(t.eval_docs()):
        ours = mnemos_requests(t, doc_id, doc, 0)[0]
        theirs = lm_requests(lm, hf_docs[doc_id])
        # lm-eval's continuation: its delimiter " " + the text after the pronoun, which starts with " "
        assert [x for _, x in theirs] == [" " + x for _, x in ours]
        # the options fill the pronoun's place alike, except at a sentence start, where mnemos capitalises
        # an option written lower case ("the fish") and lm-eval leaves it as written
        fixed = [c[:-len(o)] + o[:1].upper() + o[1:] for (c, _), o in zip(theirs, hf_docs[doc_id]["options"])]
        assert [c for c, _ in ours] == ([c for c, _ in theirs] if doc_id < 3 else fixed)
        assert t.gold(doc) == lm.doc_to_text(hf_docs[doc_id])


def test_race_lm_eval_scores_the_last_question_after_the_earlier_ones(std_data):
    t = get_task("race_high", std_data)
    art = json.loads((std_data / "RACE/test/high/1.txt").read_text())
    problems = [{"answer": a, "options": o, "question": q}
                for a, o, q in zip(art["answers"], art["options"], art["questions"])]
    hf = {"article": art["article"], "problems": str(problems), "example_id": "1"}
    lm = lm_task("race/race.yaml", {"test": [hf]})
    ours = [mnemos_requests(t, i, d, 0)[0][0] for i, d in enumerate(t.eval_docs())]
    assert ours == [("Article: Bob went out. The car was blue.\n\nQ: Did Bob go?\nA:", " yes"),
                    ("Article: Bob went out. The car was blue.\n\nQ: What color was the car?\nA:", " red")]
    assert lm_requests(lm, hf)[0] == ("Article: Bob went out. The car was blue.\n\nQuestion: Did Bob go?\n"
                                      "Answer: yes\nWhat color was the car?", " red")
    assert len(lm.test_docs()) == 1  # one document per article


def test_triviaqa_nq_webqs_prompts(std_data, reading_data):
    t = get_task("triviaqa", std_data)
    rec = json.loads((std_data / "triviaqa/wikipedia-dev.json").read_text())["Data"][0]
    hf = {"question": rec["Question"], "question_id": rec["QuestionId"],
          "answer": {"aliases": rec["Answer"]["Aliases"], "value": rec["Answer"]["Value"],
                     "normalized_aliases": rec["Answer"]["NormalizedAliases"]}}
    lm = lm_task("triviaqa/default.yaml", {"train": [hf], "validation": [hf]})
    (ctx, gen), = mnemos_requests(t, 0, t.eval_docs()[0], 0)[0]
    assert ctx == "Q: Which planet is known as the red planet?\n\nA:"
    assert (gen["method"], gen["num_beams"], gen["length_penalty"]) == ("beam", 4, 0.6)
    (lctx, lgen), = lm_requests(lm, hf)
    assert lctx == "Question: Which planet is known as the red planet??\nAnswer:" and "num_beams" not in lgen
    assert lm.doc_to_target(hf) == ["Mars", "Planet Mars"]

    t = get_task("nq_open", reading_data)
    raw = json.loads((reading_data / "nq_open/NQ-open.dev.jsonl").read_text().splitlines()[0])
    lm = lm_task("nq_open/nq_open.yaml", {"train": [raw], "validation": [raw]})
    (ctx, _), = mnemos_requests(t, 0, t.eval_docs()[0], 0)[0]
    assert ctx == "Q: Who played tess on touched by an angel?\n\nA:"
    assert lm_requests(lm, raw)[0][0] == "Answer these questions:\n\nQ: who played tess on touched by an angel?\nA:"

    t = get_task("webqs", reading_data)
    (ctx, _), = mnemos_requests(t, 0, t.eval_docs()[0], 0)[0]
    assert ctx == "Q: What school did burne hogarth establish?\n\nA:"
    hf = {"url": "u", "question": "what school did burne hogarth establish?", "answers": ["School of Visual Arts"]}
    lm = lm_task("webqs/webqs.yaml", {"train": [hf], "test": [hf]})
    # lm-eval: multiple choice over the answers, "exact_match" = the answer is the greedy continuation
    assert lm.OUTPUT_TYPE == "multiple_choice" and t.config.output_type == "generate_until"
    assert lm_requests(lm, hf) == [("Question: what school did burne hogarth establish?\nAnswer:",
                                    " School of Visual Arts")]


def test_reading_comprehension_prompts(reading_data, squad_metrics_module):
    t = get_task("squadv2", reading_data)
    (ctx, _), = mnemos_requests(t, 0, t.eval_docs()[0], 0)[0]
    assert ctx.startswith("Title: The Blitz\n\nBackground: From the German") and \
        ctx.endswith("\n\nQ: How many sorties were flown in March 1941?\n\nA:")
    assert not (LM_TASKS / "squadv2/squadv2.yaml").read_text().count("doc_to_text")  # a Python class instead
    from lm_eval.tasks.squadv2.task import SQuAD2
    doc = {"id": "x", "title": "The Blitz", "context": "C.", "question": "Q?", "answers": {"text": [], "answer_start": []}}
    assert SQuAD2.doc_to_text(None, doc) == "Title: The Blitz\n\nBackground: C.\n\nQuestion: Q?\n\nAnswer:"
    assert SQuAD2.doc_to_target(None, doc) == " unanswerable"  # shown after a " " delimiter: two spaces

    t = get_task("drop", reading_data)
    (ctx, _), = mnemos_requests(t, 0, t.eval_docs()[0], 0)[0]
    passage = "The Bears scored first on a 78-yard run. Kicker Gould added field goals of 23 and 41 yards."
    assert ctx == f"Passage: {passage}\nQuestion: How many field goals did Gould kick?\nAnswer:"
    empty = {"day": "", "month": "", "year": ""}
    hf = {"section_id": "nfl_1", "query_id": "q1", "passage": passage,
          "question": "How many field goals did Gould kick?", "answer": {"number": "2", "date": empty, "spans": []},
          "validated_answers": {"number": ["2"], "date": [empty], "spans": [[]]}}
    lm = lm_task("drop/default.yaml", {"train": [hf], "validation": [hf]})
    (lctx, lgen), = lm_requests(lm, lm.validation_docs()[0])
    assert lctx == f"{passage} How many field goals did Gould kick?" and lgen["until"] == ["."]

    t = get_task("coqa", reading_data)
    docs = t.eval_docs()
    assert len(docs) == 3  # one example per turn
    raw = json.loads((reading_data / "coqa/coqa-dev-v1.0.json").read_text())["data"][0]
    cols = lambda turns: {"input_text": [x["input_text"] for x in turns]}
    hf = {"source": raw["source"], "story": raw["story"], "questions": cols(raw["questions"]),
          "answers": cols(raw["answers"]),
          "additional_answers": {k: cols(v) for k, v in raw["additional_answers"].items()}}
    lm = lm_task("coqa/default.yaml", {"train": [hf], "validation": [hf]})
    (ours, _), = mnemos_requests(t, 2, docs[2], 0)[0]
    (theirs, lgen), = lm_requests(lm, hf)
    assert theirs == ours  # lm-eval's one example per story is mnemos's example of the story's last turn
    assert lgen["until"] == ["\nQ:"]
    # ... with the references de-duplicated case-insensitively (mnemos keeps all three, as CoQA's script)
    assert lm.doc_to_target(hf) == ["no"] and t.answers(docs[2]) == ["no", "No", "No"]


def test_translation_prompts_and_bleu(wmt_data):
    t = get_task("wmt14_en_fr", wmt_data)
    doc = t.eval_docs()[0]
    hf = {"translation": {"en": doc["source"], "fr": doc["reference"]}}
    lm = lm_task("translation/wmt14_en-fr.yaml", {"train": [hf], "validation": [hf], "test": [hf]})
    zero = mnemos_requests(t, 0, doc, 0)[0][0][0]
    one = mnemos_requests(t, 0, doc, 1)[0][0][0]
    assert zero == "Q: What is the French translation of Spectacular Wingsuit Jump Over Bogota\nA:"
    assert one.endswith("\n\nSpectacular Wingsuit Jump Over Bogota =")
    assert lm_requests(lm, hf)[0][0] == "English phrase: Spectacular Wingsuit Jump Over Bogota\nFrench phrase:"
    # lm-eval's bleu is sacrebleu's corpus BLEU with its default 13a tokens: mnemos's `sacrebleu`, not the
    # `sacrebleu_intl` of GPT-3's signature
    from lm_eval.api.metrics import bleu
    from evaluation.formats.translation import sacrebleu_corpus
    items = [("Le chat noir, c'est-à-dire «le chat».", "Le chat noir, c’est-à-dire « le chat »."),
             ("Il pleut (beaucoup).", "Il pleut beaucoup.")]
    assert bleu([(r, p) for p, r in items]) == pytest.approx(sacrebleu_corpus([(p, [r]) for p, r in items], "13a"))
    assert sacrebleu_corpus([(p, [r]) for p, r in items], "intl") != pytest.approx(bleu([(r, p) for p, r in items]))


def test_arithmetic_lm_eval_rewrites_the_released_context(tmp_path):
    row = {"context": "\n\nQ: What is 48 plus 76?\n\nA:", "completion": " 124"}
    (tmp_path / "gpt3_arithmetic").mkdir()
    (tmp_path / "gpt3_arithmetic/two_digit_addition.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(
        {"context": "\n\nQ: What is 12 plus 30?\n\nA:", "completion": " 42"}) + "\n")
    t = get_task("gpt3_arithmetic_2da", tmp_path)
    ours, drawn = mnemos_requests(t, 0, t.eval_docs()[0], 1)
    assert ours == [("\n\nQ: What is 12 plus 30?\n\nA: 42\n\nQ: What is 48 plus 76?\n\nA:", " 124")]
    lm = lm_task("arithmetic/arithmetic_2da.yaml", {"validation": [row, drawn[0]]})
    docs = lm.validation_docs()
    assert lm_requests(lm, docs[0], [docs[1]]) == [("Question: What is 12 plus 30?\nAnswer: 42\n\n"
                                                    "Question: What is 48 plus 76?\nAnswer:", " 124")]


def test_wikitext_lm_eval_scores_the_detokenised_page(std_data):
    t = get_task("wikitext", std_data)
    page = t.eval_docs()[0]["page"]
    lm = lm_task("wikitext/wikitext.yaml", {"train": [{"page": page}], "validation": [{"page": page}],
                                            "test": [{"page": page}]})
    (ours,) = mnemos_requests(t, 0, t.eval_docs()[0], 0)[0]
    (theirs,), = lm_requests(lm, {"page": page})
    assert ours == page and theirs != page
    assert theirs == page.replace(" . ", ". ").replace("= =", "==").replace(" \n", "\n").replace("\n ", "\n")
    # words: both count the raw page, lm-eval without stripping it (its leading and trailing space each add one)
    from evaluation.api import _score
    ours_words = _score(t, t.eval_docs()[0], [-10.0], {}, None)["word_perplexity"]
    assert lm.process_results({"page": page}, [-10.0])["word_perplexity"] == (-10.0, ours_words[1] + 1 + page.endswith(" "))
