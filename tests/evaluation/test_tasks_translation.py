"""Translation (GPT-3 Section 3.3): the WMT tasks read the release's SGML and sacrebleu's plain text alike,
prompt as GPT-3 Appendix G shows, draw demonstrations from another year's test set, and score SacreBLEU
exactly as the sacrebleu package and its command line do."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.adapters import DummyLM
from evaluation.api import run_eval
from evaluation.formats.translation import load_parallel, read_segments, sacrebleu_corpus
from evaluation.metrics import aggregate
from evaluation.registry import get_task, get_tasks, iter_eval_texts
from evaluation.task import TaskError

WMT_TASKS = ["wmt14_en_fr", "wmt14_fr_en", "wmt16_en_de", "wmt16_de_en", "wmt16_en_ro", "wmt16_ro_en"]

# Each test set: documents of (origlang, [segment in each language]). "&amp;" and the runs of spaces are
# as they would stand in the SGML; the loader unescapes and collapses them.
NEWSTEST2014 = {"langs": ("en", "fr"), "docs": [
    ("1012-bbc", "en", [("Spectacular Wingsuit Jump Over Bogota",
                         "Spectaculaire saut en \"wingsuit\" au-dessus de Bogota"),
                        ("Sportsman Jhonathan Florez jumped from a helicopter above Bogota, the capital of Colombia.",
                         "Le sportif Jhonathan Florez a sauté d'un hélicoptère au-dessus de Bogota, la capitale colombienne.")]),
    ("1013-lemonde", "fr", [("AT&amp;T said  it would   appeal.", "AT&amp;T a annoncé qu'il  ferait appel.")])]}
NEWSTEST2013 = {"langs": ("en", "fr", "de"), "docs": [
    ("1-nyt", "en", [("A Republican strategy to counter the re-election of Obama",
                      "Une stratégie républicaine pour contrer la réélection d'Obama",
                      "Eine republikanische Strategie, um der Wiederwahl von Obama entgegenzutreten"),
                     ("Republican leaders justified their policy by the need to combat electoral fraud.",
                      "Les dirigeants républicains justifièrent leur politique par la nécessité de lutter contre la fraude électorale.",
                      "Die Führungskräfte der Republikaner rechtfertigen ihre Politik mit der Notwendigkeit, den Wahlbetrug zu bekämpfen.")])]}
NEWSTEST2016_DE = {"langs": ("en", "de"), "docs": [
    ("abc.1", "de", [("Obama receives Netanyahu", "Obama empfängt Netanyahu"),
                     ("The relationship between Obama and Netanyahu is not exactly friendly.",
                      "Das Verhältnis zwischen Obama und Netanyahu ist nicht gerade freundschaftlich.")])]}
NEWSTEST2016_RO = {"langs": ("en", "ro"), "docs": [
    ("ro.1", "ro", [("Brazil's Former Presidential Chief-of-Staff to Stand Trial",
                     "Fostul șef al cabinetului prezidențial brazilian este adus în fața instanței"),
                    ("A federal judge on Tuesday accepted the charges filed against Brazil's former chief of staff.",
                     "Marți, un judecător federal a acceptat acuzațiile aduse împotriva fostului șef de cabinet brazilian.")])]}
NEWSDEV2016_RO = {"langs": ("en", "ro"), "docs": [
    ("dev.1", "en", [("The president announced his resignation.", "Președintele și-a anunțat demisia."),
                     ("The minister said the law will be voted on next week.",
                      "Ministrul a spus că legea va fi votată săptămâna viitoare.")])]}


def _sgml(setid: str, testset: dict, lang: str, kind: str, src_lang: str) -> str:
    i = testset["langs"].index(lang)
    head = (f'<srcset setid="{setid}" srclang="any">' if kind == "src"
            else f'<refset setid="{setid}" srclang="any" trglang="{lang}">')
    lines = [head]
    for docid, origlang, segs in testset["docs"]:
        lines.append(f'<doc sysid="ref" docid="{docid}" genre="news" origlang="{origlang}">')
        lines.append("<p>")
        lines += [f'<seg id="{n}">{seg[i]}</seg>' for n, seg in enumerate(segs, 1)]
        lines.append("</p>")
        lines.append("</doc>")
    lines.append("</srcset>" if kind == "src" else "</refset>")
    return "\n".join(lines) + "\n"


def write_wmt_fixtures(root: Path) -> Path:
    """The files of WMT's dev.tgz that wmt.yaml names, a few segments each, under root/wmt/dev/."""
    d = root / "wmt" / "dev"
    d.mkdir(parents=True, exist_ok=True)

    def pair(name: str, setid: str, testset: dict, src: str, ref: str) -> None:
        (d / f"{name}-src.{src}.sgm").write_text(_sgml(setid, testset, src, "src", src), encoding="utf-8")
        (d / f"{name}-ref.{ref}.sgm").write_text(_sgml(setid, testset, ref, "ref", src), encoding="utf-8")

    for src, ref in (("en", "fr"), ("fr", "en")):
        pair("newstest2014-fren", "newstest2014", NEWSTEST2014, src, ref)
    for src, ref in (("en", "fr"), ("fr", "en"), ("en", "de"), ("de", "en")):
        pair("newstest2013", "newstest2013", NEWSTEST2013, src, ref)
    pair("newstest2016-ende", "newstest2016", NEWSTEST2016_DE, "en", "de")
    pair("newstest2016-deen", "newstest2016", NEWSTEST2016_DE, "de", "en")
    pair("newstest2016-enro", "newstest2016", NEWSTEST2016_RO, "en", "ro")
    pair("newstest2016-roen", "newstest2016", NEWSTEST2016_RO, "ro", "en")
    pair("newsdev2016-enro", "newsdev2016", NEWSDEV2016_RO, "en", "ro")
    pair("newsdev2016-roen", "newsdev2016", NEWSDEV2016_RO, "ro", "en")
    return root


@pytest.fixture(scope="module")
def wmt_data(tmp_path_factory) -> Path:
    return write_wmt_fixtures(tmp_path_factory.mktemp("wmt"))


# ---------------------------------------------------------------------- loading and prompts
# task -> (prompt of the first test segment, its reference, the two demonstrations of the dev split)
FIRST = {
    "wmt14_en_fr": ("Spectacular Wingsuit Jump Over Bogota =",
                    "Spectaculaire saut en \"wingsuit\" au-dessus de Bogota",
                    ["A Republican strategy to counter the re-election of Obama = "
                     "Une stratégie républicaine pour contrer la réélection d'Obama",
                     "Republican leaders justified their policy by the need to combat electoral fraud. = "
                     "Les dirigeants républicains justifièrent leur politique par la nécessité de lutter contre "
                     "la fraude électorale."]),
    "wmt14_fr_en": ("Spectaculaire saut en \"wingsuit\" au-dessus de Bogota =",
                    "Spectacular Wingsuit Jump Over Bogota",
                    ["Une stratégie républicaine pour contrer la réélection d'Obama = "
                     "A Republican strategy to counter the re-election of Obama",
                     "Les dirigeants républicains justifièrent leur politique par la nécessité de lutter contre "
                     "la fraude électorale. = "
                     "Republican leaders justified their policy by the need to combat electoral fraud."]),
    "wmt16_en_de": ("Obama receives Netanyahu =", "Obama empfängt Netanyahu",
                    ["A Republican strategy to counter the re-election of Obama = "
                     "Eine republikanische Strategie, um der Wiederwahl von Obama entgegenzutreten",
                     "Republican leaders justified their policy by the need to combat electoral fraud. = "
                     "Die Führungskräfte der Republikaner rechtfertigen ihre Politik mit der Notwendigkeit, den "
                     "Wahlbetrug zu bekämpfen."]),
    "wmt16_de_en": ("Obama empfängt Netanyahu =", "Obama receives Netanyahu",
                    ["Eine republikanische Strategie, um der Wiederwahl von Obama entgegenzutreten = "
                     "A Republican strategy to counter the re-election of Obama",
                     "Die Führungskräfte der Republikaner rechtfertigen ihre Politik mit der Notwendigkeit, den "
                     "Wahlbetrug zu bekämpfen. = "
                     "Republican leaders justified their policy by the need to combat electoral fraud."]),
    "wmt16_en_ro": ("Brazil's Former Presidential Chief-of-Staff to Stand Trial =",
                    "Fostul șef al cabinetului prezidențial brazilian este adus în fața instanței",
                    ["The president announced his resignation. = Președintele și-a anunțat demisia.",
                     "The minister said the law will be voted on next week. = "
                     "Ministrul a spus că legea va fi votată săptămâna viitoare."]),
    "wmt16_ro_en": ("Fostul șef al cabinetului prezidențial brazilian este adus în fața instanței =",
                    "Brazil's Former Presidential Chief-of-Staff to Stand Trial",
                    ["Președintele și-a anunțat demisia. = The president announced his resignation.",
                     "Ministrul a spus că legea va fi votată săptămâna viitoare. = "
                     "The minister said the law will be voted on next week."]),
}


def test_wmt_en_fr_prompts_are_appendix_g_literally(wmt_data):
    task = get_task("wmt14_en_fr", wmt_data)
    docs = task.eval_docs()
    assert len(docs) == 3
    third = docs[2]
    assert third["source"] == "AT&T said it would appeal."  # entity unescaped, whitespace collapsed
    assert task.answers(third) == ["AT&T a annoncé qu'il ferait appel."]
    assert (third["docid"], third["seg_id"], third["origlang"]) == ("1013-lemonde", "1", "fr")
    # 0 shots: GPT-3's zero-shot question names the target language; 1 and more: "source = target"
    assert task.fewshot_context(2, third, 0, seed=1234) == "Q: What is the French translation of AT&T said it would appeal.\nA:"
    assert task.fewshot_context(2, third, 1, seed=1234) == (
        "Republican leaders justified their policy by the need to combat electoral fraud. = Les dirigeants "
        "républicains justifièrent leur politique par la nécessité de lutter contre la fraude électorale.\n\n"
        "AT&T said it would appeal. =")
    assert task.fewshot_context(2, third, 2, seed=1234) == (
        "A Republican strategy to counter the re-election of Obama = "
        "Une stratégie républicaine pour contrer la réélection d'Obama\n\n"
        "Republican leaders justified their policy by the need to combat electoral fraud. = Les dirigeants "
        "républicains justifièrent leur politique par la nécessité de lutter contre la fraude électorale.\n\n"
        "AT&T said it would appeal. =")
    # what the contamination filter reads: source and target of the test example
    assert task.example_text(third) == "AT&T said it would appeal. = AT&T a annoncé qu'il ferait appel."


@pytest.mark.parametrize("name", WMT_TASKS)
def test_every_wmt_task_reads_its_sgml_and_prompts_source_equals(wmt_data, name):
    prompt, reference, demos = FIRST[name]
    task = get_task(name, wmt_data)
    assert task.config.group == ["translation"] and task.config.gpt3_metric == "sacrebleu_intl"
    doc = task.eval_docs()[0]
    assert task.text(doc) == prompt
    assert task.target(doc) == reference and task.answers(doc) == [reference]
    assert [task.demo(d) for d in task.fewshot_docs()] == demos  # the other year's set, never a test segment
    one = task.fewshot_context(0, doc, 1, seed=7)
    assert one in {demos[0] + "\n\n" + prompt, demos[1] + "\n\n" + prompt}
    two = task.fewshot_context(0, doc, 2, seed=7)
    assert two in {demos[0] + "\n\n" + demos[1] + "\n\n" + prompt, demos[1] + "\n\n" + demos[0] + "\n\n" + prompt}
    assert task.fewshot_context(0, doc, 2, seed=7) == two  # reproducible
    target_language = {"fr": "French", "en": "English", "de": "German", "ro": "Romanian"}[name[-2:]]
    assert task.fewshot_context(0, doc, 0, seed=7) == \
        f"Q: What is the {target_language} translation of {doc['source']}\nA:"
    gen = task.config.generation
    assert gen == {"until": ["\n"], "max_gen_toks": 256, "method": "beam", "num_beams": 4, "length_penalty": 0.6}


def test_plain_text_as_sacrebleu_writes_it_gives_the_same_documents(wmt_data, tmp_path):
    sgml = load_parallel({"source": str(wmt_data / "wmt/dev/newstest2014-fren-src.en.sgm"),
                          "reference": str(wmt_data / "wmt/dev/newstest2014-fren-ref.fr.sgm")}, None, "t")
    src, ref = tmp_path / "wmt14.en-fr.src", tmp_path / "wmt14.en-fr.ref"
    src.write_text("".join(d["source"] + "\n" for d in sgml), encoding="utf-8")
    ref.write_bytes("".join(d["reference"] + "\r\n" for d in sgml).encode("utf-8"))  # CRLF reads the same
    plain = load_parallel({"source": str(src), "reference": str(ref)}, None, "t")
    assert [(d["source"], d["references"]) for d in plain] == [(d["source"], d["references"]) for d in sgml]
    assert plain[0]["docid"] is None
    # a second reference file gives a second reference per segment
    two = load_parallel({"source": str(src), "reference": [str(ref), str(src)]}, None, "t")
    assert two[1]["references"] == [sgml[1]["reference"], sgml[1]["source"]]
    # a line separator inside a sentence is not a line break (it is whitespace, collapsed like sacrebleu does)
    odd = tmp_path / "odd.txt"
    odd.write_text("one\u2028sentence\nsecond\n", encoding="utf-8")
    assert [s["text"] for s in read_segments(str(odd), "t")] == ["one sentence", "second"]


def test_bad_data_is_named(wmt_data, tmp_path):
    src = str(wmt_data / "wmt/dev/newstest2014-fren-src.en.sgm")
    short = tmp_path / "short.fr"
    short.write_text("une ligne\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"task t: .*newstest2014-fren-src.en.sgm has 3 segments but .*short.fr has 1"):
        load_parallel({"source": src, "reference": str(short)}, None, "t")
    with pytest.raises(TaskError, match=r"task t: data file .*missing.sgm does not exist"):
        load_parallel({"source": src, "reference": str(tmp_path / "missing.sgm")}, None, "t")
    empty = tmp_path / "empty.sgm"
    empty.write_text('<refset setid="x" srclang="any" trglang="fr">\n</refset>\n', encoding="utf-8")
    with pytest.raises(TaskError, match=r"empty.sgm: no <seg id=...> inside a <doc>"):
        read_segments(str(empty), "t")
    shuffled = tmp_path / "shuffled.sgm"
    shuffled.write_text(Path(src).read_text(encoding="utf-8").replace('docid="1013-lemonde"', 'docid="9-other"'),
                        encoding="utf-8")
    with pytest.raises(TaskError, match=r"segment 3 is document '1013-lemonde' seg 1 in .* but document '9-other'"):
        load_parallel({"source": src, "reference": str(shuffled)}, None, "t")
    with pytest.raises(TaskError, match=r"task t: a parallel split needs files \{source: PATH"):
        load_parallel({"src": src, "reference": src}, None, "t")
    with pytest.raises(TaskError, match="task wmt16_en_ro: data file .*newstest2016-enro-src.en.sgm does not exist"):
        get_task("wmt16_en_ro", tmp_path).eval_docs()


# ---------------------------------------------------------------------- scoring
def test_oracle_scores_100_and_a_silent_model_0(wmt_data):
    answers = {}
    for task in get_tasks(["translation"], wmt_data):
        for d in task.eval_docs():  # the model's completion starts after "=" (or "A:" at 0 shots)
            answers[task.text(d)] = " " + task.target(d)
            answers[task.fewshot_context(0, d, 0, seed=0)] = " " + task.target(d)
    res = run_eval(DummyLM("oracle", answers=answers), ["translation"], [0, 1], None, data_dir=wmt_data,
                   bootstrap_iters=20)
    for name in WMT_TASKS:
        for k in ("0", "1"):
            entry = res["results"][name][k]
            for m in ("sacrebleu_intl", "sacrebleu", "bleu"):
                assert entry[m] == pytest.approx(100.0), (name, k, m)
    assert res["tasks"]["wmt16_ro_en"]["metrics"] == ["sacrebleu_intl", "sacrebleu", "bleu"]
    silent = run_eval(DummyLM("uniform"), ["translation"], [0], None, data_dir=wmt_data, bootstrap_iters=20)
    for name in WMT_TASKS:
        assert silent["results"][name]["0"]["sacrebleu_intl"] == 0.0
        assert silent["results"][name]["0"]["sacrebleu"] == 0.0


def test_sacrebleu_hand_cases():
    assert sacrebleu_corpus([("The cat sat on the mat.", ["The cat sat on the mat."])]) == pytest.approx(100.0)
    assert sacrebleu_corpus([("red green blue", ["one two three four"])]) == 0.0
    # by hand: clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty)
    assert sacrebleu_corpus([("the cat sat on the mat", ["the cat sat on a mat"])]) == \
        pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # every n-gram right but one word short: brevity penalty exp(1 - 6/5)
    assert sacrebleu_corpus([("the cat sat on the", ["the cat sat on the mat"])]) == \
        pytest.approx(100 * math.exp(1 - 6 / 5))
    # sacrebleu's README example (two reference streams): BLEU = 48.53
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    refs = [["The dog bit the man.", "The dog had bit the man."],
            ["It was not unexpected.", "No one was surprised."],
            ["The man bit him first.", "The man had bitten the dog."]]
    assert sacrebleu_corpus(list(zip(hyps, refs))) == pytest.approx(48.53, abs=0.005)
    with pytest.raises(ValueError, match="no reference"):
        sacrebleu_corpus([("text", [])])


CLI_HYPS = ["Le sportif Jhonathan Florez a sauté jeudi d'un hélicoptère au-dessus de Bogota.",
            "Spectaculaire saut en wingsuit au-dessus de Bogota",
            "« C'est un rêve », a-t-il dit ; ils ont payé 3,5 millions $ (environ 2,9 M€).",
            "Marți, un judecător a acceptat acuzațiile."]
CLI_REFS = ["Le sportif Jhonathan Florez a sauté jeudi d'un hélicoptère au-dessus de Bogota, la capitale colombienne.",
            "Spectaculaire saut en \"wingsuit\" au-dessus de Bogota",
            "« C'était un rêve », a-t-il déclaré : ils ont payé 3,5 millions de dollars (2,9 M€).",
            "Marți, un judecător federal a acceptat acuzațiile aduse."]


@pytest.mark.parametrize("metric,tokenize", [("sacrebleu", "13a"), ("sacrebleu_intl", "intl")])
def test_sacrebleu_metrics_equal_the_command_line(tmp_path, metric, tokenize):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("\n".join(CLI_HYPS) + "\n", encoding="utf-8")
    ref.write_text("\n".join(CLI_REFS) + "\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-b", "-w", "4",
                          "-tok", tokenize], capture_output=True, text=True, check=True)
    value, se = aggregate(metric, list(zip(CLI_HYPS, [[r] for r in CLI_REFS])), bootstrap_iters=50)
    assert value == pytest.approx(float(out.stdout.strip()), abs=1e-4)
    assert 0 < value < 100 and se > 0


def test_the_two_tokenisations_differ_where_gpt3s_signature_matters():
    # 13a keeps "wasn't"-style inner apostrophes and splits less punctuation than intl; on this item
    # the scores differ, which is why the metric GPT-3 reports is the intl one.
    items = list(zip(CLI_HYPS, [[r] for r in CLI_REFS]))
    assert sacrebleu_corpus(items, "13a") != pytest.approx(sacrebleu_corpus(items, "intl"))


# ---------------------------------------------------------------------- contamination and a real model
def test_contamination_filter_sees_source_and_target(wmt_data):
    texts = set(iter_eval_texts(["translation"], data_dir=wmt_data))
    assert ("wmt16_ro_en", "Fostul șef al cabinetului prezidențial brazilian este adus în fața instanței = "
                           "Brazil's Former Presidential Chief-of-Staff to Stand Trial") in texts
    assert ("wmt14_fr_en", "AT&T a annoncé qu'il ferait appel. = AT&T said it would appeal.") in texts
    assert len(texts) == 3 + 3 + 2 + 2 + 2 + 2  # eval splits only: no demonstration set


def test_tiny_model_runs_every_translation_task(wmt_data, tiny_lm, tmp_path, monkeypatch):
    import evaluation.registry as registry
    real_load = registry.load_configs

    def short_generations(include=None):  # the shipped tasks, with 16 new tokens instead of 256: fast
        configs = real_load(include)
        for name in WMT_TASKS:
            configs[name] = configs[name].model_copy(
                update={"generation": {**configs[name].generation, "max_gen_toks": 16}})
        return configs

    monkeypatch.setattr(registry, "load_configs", short_generations)
    res = run_eval(tiny_lm, ["translation"], [0, 1], tmp_path, data_dir=wmt_data, limit=1, bootstrap_iters=5)
    for name in WMT_TASKS:
        for k in ("0", "1"):
            entry = res["results"][name][k]
            assert entry["n"] == 1 and 0.0 <= entry["sacrebleu_intl"] <= 100.0 and 0.0 <= entry["bleu"] <= 100.0
    md = (tmp_path / "results.md").read_text()
    assert "wmt16_ro_en (Ro→En)" in md and "sacrebleu_intl" in md
