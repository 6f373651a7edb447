"""Task registry: every shipped task reads its fixture in the published format and runs end to end;
prompts follow the definitions; few-shot sampling is reproducible and never shows the test example;
a user adds a task with YAML only; the contamination filter can list every evaluation text."""

from __future__ import annotations

import pytest

from evaluation.adapters import DummyLM
from evaluation.api import run_eval
from evaluation.registry import get_task, iter_eval_texts, list_tasks
from evaluation.task import TaskError

from .conftest import STANDARD_TASKS


def test_every_shipped_task_is_registered():
    names = set(list_tasks())
    assert set(STANDARD_TASKS) <= names
    for k in ("2da", "2ds", "3da", "3ds", "4da", "4ds", "5da", "5ds", "2dm", "1dc"):
        assert f"arithmetic_{k}" in names and f"gpt3_arithmetic_{k}" in names
    for k in ("cl", "a1", "a2", "ri", "rw"):
        assert f"word_scramble_{k}" in names
    from evaluation.registry import expand_names, load_configs
    configs = load_configs()
    assert expand_names(["superglue"], configs) == ["boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"]
    assert expand_names(["anli", "translation"], configs) == [
        "anli_r1", "anli_r2", "anli_r3", "wmt14_en_fr", "wmt14_fr_en", "wmt16_en_de", "wmt16_de_en", "wmt16_en_ro",
        "wmt16_ro_en"]


def test_standard_tasks_run_end_to_end(std_data, tiny_lm, tmp_path):
    res = run_eval(tiny_lm, STANDARD_TASKS, [0, 1], tmp_path, data_dir=std_data, bootstrap_iters=20)
    r = res["results"]
    for t in STANDARD_TASKS:
        assert r[t], t
    for t in ("hellaswag", "piqa", "arc_easy", "openbookqa", "storycloze", "copa", "boolq", "race_high"):
        for m in ("acc", "acc_norm_token", "acc_norm_char", "acc_uncond"):
            assert 0.0 <= r[t]["1"][m] <= 1.0, (t, m)
    assert "acc_uncond" not in r["winogrande"]["0"]  # partial scoring has no unconditional variant
    assert r["race_high"]["0"]["n"] == 2  # one example per question
    assert r["wikitext"].keys() == {"0"} and r["wikitext"]["0"]["n"] == 2 and r["wikitext"]["0"]["word_perplexity"] > 1
    assert 0 <= r["triviaqa"]["1"]["exact_match"] <= 1 and "f1" in r["triviaqa"]["1"]
    assert r["lambada_cloze"]["0"]["perplexity"] > 1
    md = (tmp_path / "results.md").read_text()
    assert "ARC (Easy)" in md and "★" in md
    # one table per set of metrics: a generation task's row has no empty multiple-choice columns
    row = next(line for line in md.splitlines() if line.startswith("| triviaqa (TriviaQA) | 1 | 0 |"))
    assert row.count("|") == 4 + len(res["tasks"]["triviaqa"]["metrics"]) + 1 and "||" not in row.replace(" ", "")
    assert md.count("| task | version | shots | n |") == len({tuple(t["metrics"]) for t in res["tasks"].values()})


def test_prompts_follow_the_published_formats(std_data):
    hs = get_task("hellaswag", std_data)
    d = hs.eval_docs()[0]
    assert hs.text(d) == "Baking cookies: A woman mixes flour. in a bowl. She"
    copa = get_task("copa", std_data)
    d0, d1 = copa.eval_docs()
    assert copa.text(d0) == "The man broke his toe because" and copa.choices(d0)[0] == "he dropped a hammer on his foot."
    assert copa.text(d1).endswith("therefore") and copa.gold(d1) == 1
    arc = get_task("arc_easy", std_data)
    a = arc.eval_docs()[0]
    assert arc.text(a) == "Question: Which is a mammal 0?\nAnswer:" and arc.gold(a) == 1
    wg = get_task("winogrande", std_data)
    w = wg.eval_docs()[0]
    assert wg.choices(w) == ["The trophy does not fit in the suitcase because the trophy",
                             "The trophy does not fit in the suitcase because the suitcase"]
    assert wg.continuation(w) == "is too big."
    lam = get_task("lambada_cloze", std_data)
    x = lam.eval_docs()[0]
    assert lam.text(x) == "She poured the tea and handed a cup to her ____. ->" and lam.target(x) == "sister"
    boolq = get_task("boolq", std_data)
    assert [boolq.gold(b) for b in boolq.eval_docs()] == [1, 0]
    original = [{k if k != "label" else "answer": v for k, v in b.items()} for b in boolq.eval_docs()]
    assert [boolq.gold(b) for b in original] == [1, 0]  # Google's release calls the label "answer"
    sc = get_task("storycloze", std_data)
    assert [sc.gold(s) for s in sc.eval_docs()] == [0, 1, 0]
    tq = get_task("triviaqa", std_data)
    assert "Planet Mars" in tq.answers(tq.eval_docs()[0])
    race = get_task("race_high", std_data)
    q0, q1 = race.eval_docs()
    article = "Article: Bob went out. The car was blue.\n\n"
    assert race.fewshot_context(1, q1, 0, seed=1) == article + "Q: What color was the car?\nA:"
    # GPT-3 Figures G.1 and G.3: the article's other questions, answered, are the demonstrations
    assert race.fewshot_context(1, q1, 1, seed=1) == race.fewshot_context(1, q1, 3, seed=1) == \
        article + "Q: Did Bob go?\nA: yes\n\nQ: What color was the car?\nA:"
    assert race.choices(q1)[race.gold(q1)] == "blue" and race.config.unconditional_context == "A:"
    piqa = get_task("piqa", std_data)
    assert [p["label"] for p in piqa.eval_docs()] == [0, 1, 0]
    first = piqa.eval_docs()[0]
    assert piqa.text(first) == "To open a jar 0" and piqa.choices(first) == ["twist the lid.", "hit it with a fish."]


def test_fewshot_sampling_is_reproducible_and_excludes_the_example():
    task = get_task("arithmetic_2da")
    docs = task.eval_docs(limit=50)
    for i, d in enumerate(docs):
        ctx = task.fewshot_context(i, d, 5, seed=1)
        assert ctx == task.fewshot_context(i, d, 5, seed=1)
        assert ctx.endswith(d["context"]) and ctx.count("Q: What is") == 6
        assert d["context"] + d["completion"] not in ctx  # never its own answer as a demonstration
    assert task.fewshot_context(0, docs[0], 5, seed=1) != task.fewshot_context(0, docs[0], 5, seed=2)
    assert task.fewshot_context(0, docs[0], 5, seed=1) != task.fewshot_context(1, docs[1], 5, seed=1)[:-30] + "x"
    # the exact GPT-3 layout: demonstrations then the question, no extra delimiter
    one = task.fewshot_context(3, docs[3], 1, seed=0)
    assert one.count("\n\nQ: What is") == 2 and one.startswith("\n\nQ: What is") and one.endswith("\n\nA:")


def test_user_task_without_python(tmp_path):
    (tmp_path / "mytasks").mkdir()
    (tmp_path / "mytasks" / "capitals.yaml").write_text("""
task: capitals
version: 2
description: "Name the capital.\\n\\n"
dataset: {loader: csv, files: {test: "{data_dir}/capitals.csv", train: "{data_dir}/capitals.csv"}}
fewshot_split: train
output_type: multiple_choice
doc_to_text: "Country: {{ country }}\\nCapital:"
doc_to_choice: "[a, b]"
doc_to_target: "{{ answer }}"
""")
    (tmp_path / "capitals.csv").write_text("country,a,b,answer\nFrance,Paris,Rome,0\nItaly,Paris,Rome,1\n")
    t = get_task("capitals", tmp_path, include=[tmp_path / "mytasks"])
    ctx = t.fewshot_context(0, t.eval_docs()[0], 1, seed=0)
    assert ctx.startswith("Name the capital.\n\nCountry: ") and ctx.endswith("Country: France\nCapital:")
    res = run_eval(DummyLM("uniform"), ["capitals"], [0, 1], None, data_dir=tmp_path, include=[tmp_path / "mytasks"])
    assert res["results"]["capitals"]["1"]["acc"] == 0.5 and res["tasks"]["capitals"]["version"] == 2
    with pytest.raises(ValueError, match=r"shots=\[1, 1\] \(rule: each number of shots once"):
        run_eval(DummyLM("uniform"), ["capitals"], [1, 1], None, data_dir=tmp_path, include=[tmp_path / "mytasks"])
    (tmp_path / "mytasks" / "bad.yaml").write_text("task: bad\noutput_type: multiple_choice\ndataset: {loader: csv}\nfoo: 1\n")
    with pytest.raises(TaskError, match="foo"):
        list_tasks(include=[tmp_path / "mytasks"])


def test_missing_data_is_named():
    with pytest.raises(TaskError, match="--data-dir"):
        get_task("hellaswag").eval_docs()


def test_a_misspelled_task_gets_suggestions():
    from evaluation.registry import expand_names, load_configs
    with pytest.raises(TaskError, match=r"unknown task or group 'hellaswg' \(did you mean hellaswag\?\)"):
        expand_names(["hellaswg"], load_configs())
    with pytest.raises(TaskError, match=r"'arithmatic' \(did you mean arithmetic,"):  # a group is suggested too
        expand_names(["arithmatic"], load_configs())


def test_iter_eval_texts(std_data, shared_data):
    texts = list(iter_eval_texts(["arithmetic_2da", "copa"], data_dir=std_data))
    assert len(texts) == 2002
    assert texts[0][0] == "arithmetic_2da" and texts[0][1].startswith("\n\nQ: What is")
    assert texts[0][1].split("A:")[1].strip().lstrip("-").isdigit()  # context + completion
    assert ("copa", "The man broke his toe because he dropped a hammer on his foot.") in texts
    everything = {t for t, _ in iter_eval_texts(data_dir=std_data)}
    assert {"arithmetic_2da", "hellaswag", "wikitext", "triviaqa"} <= everything
    assert "gpt3_arithmetic_2da" not in everything and "word_scramble_cl" not in everything  # no data there: skipped
    released = {t for t, _ in iter_eval_texts(["gpt3_arithmetic"], data_dir=shared_data)}
    assert len(released) == 10


def test_ptb_scores_the_whole_file_per_word(tmp_path):
    lines = [" aer banknote berlitz calloway centrust cluett fromstein gitano guterman", " pierre <unk> N years old will join",
             " mr. <unk> is chairman of <unk> n.v. the dutch publishing group"]
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb/ptb.test.txt").write_text("\n".join(lines) + "\n")
    task = get_task("ptb", tmp_path)
    (doc,) = task.eval_docs()
    assert task.text(doc).split() == " ".join(lines).split()  # one document, every sentence in it
    res = run_eval(DummyLM("uniform"), ["ptb"], [0, 1], None, data_dir=tmp_path, bootstrap_iters=10)["results"]["ptb"]
    assert res.keys() == {"0"}  # perplexity is zero-shot only
    # a uniform model over 257 symbols: log-likelihood -len(text) log 257, per whitespace word of the file
    words = len(" ".join(lines).split())
    assert res["0"]["word_perplexity"] == pytest.approx(257 ** (len(task.text(doc)) / words))


def test_text_datasets_skip_blank_lines_and_take_sample_by(tmp_path):
    """`loader: text` read blank lines as documents to score (n counted them); `kwargs.sample_by` cuts the
    text as `mnemos data` does (WikiText's one-space lines are blank)."""
    from evaluation.task import TaskConfig, load_split
    (tmp_path / "t.txt").write_text(" = Title = \n \n Para one .\n Para two .\n \n\n = = Next = = \n")

    def docs(**kwargs):
        cfg = TaskConfig(task="t", output_type="loglikelihood_rolling", doc_to_text="{{ text }}", doc_to_target="",
                         dataset={"loader": "text", "files": {"test": str(tmp_path / "t.txt")}, "kwargs": kwargs})
        return [d["text"] for d in load_split(cfg, "test", None)]
    assert docs() == [" = Title = ", " Para one .", " Para two .", " = = Next = = "]
    assert docs(sample_by="paragraph") == [" = Title = ", " Para one .\n Para two .", " = = Next = = "]
    assert len(docs(sample_by="document")) == 1
    with pytest.raises(TaskError, match=r"rule: a text dataset takes only sample_by"):
        docs(sample_by="sentence")


def test_passage_demonstrations_need_their_template_and_their_list(tmp_path):
    from evaluation.task import Task, TaskConfig
    base = {"task": "t", "dataset": {"loader": "jsonl", "files": {"test": str(tmp_path / "t.jsonl")}},
            "output_type": "generate_until", "doc_to_text": "{{ p }}\n{{ demos }}Q: {{ q }}"}
    with pytest.raises(TaskError, match="fewshot_siblings and doc_to_sibling go together"):
        Task(TaskConfig(**base, fewshot_siblings="others"))
    task = Task(TaskConfig(**base, fewshot_siblings="others", doc_to_sibling="Q: {{ q }} A: {{ a }}"))
    doc = {"p": "P", "q": "x", "others": [{"q": "y", "a": "1"}, {"q": "z", "a": "2"}]}
    assert task.fewshot_context(0, doc, 0, seed=0) == "P\nQ: x"
    assert task.fewshot_context(0, doc, 2, seed=0) == "P\nQ: y A: 1\n\nQ: z A: 2\n\nQ: x"
    with pytest.raises(TaskError, match="'others' .* is NoneType, expected the list"):
        task.fewshot_context(0, {"p": "P", "q": "x"}, 1, seed=0)
