"""Scoring: oracle and uniform models on the released arithmetic files, every multiple-choice
normalisation against hand-computed references, generation metrics, standard errors."""

from __future__ import annotations

import json
import math

import pytest

from evaluation.adapters import DummyLM
from evaluation.api import run_eval
from evaluation.metrics import aggregate, corpus_bleu, exact_match, mean_stderr, token_f1


def test_released_arithmetic_oracle_100_uniform_chance(shared_data, tmp_path):
    oracle = run_eval(DummyLM("oracle"), ["gpt3_arithmetic"], [0, 1], tmp_path / "oracle", data_dir=shared_data)
    assert len(oracle["results"]) == 10
    for task, by_k in oracle["results"].items():
        for k, entry in by_k.items():
            assert entry["n"] == 2000 and entry["acc"] == 1.0, (task, k)
    uniform = run_eval(DummyLM("uniform"), ["gpt3_arithmetic"], [0, 1], None, data_dir=shared_data, limit=200)
    for task, by_k in uniform["results"].items():
        for entry in by_k.values():
            assert entry["acc"] == 0.0  # free-form answers: chance is 1/|vocab|^len, i.e. 0
    written = json.loads((tmp_path / "oracle" / "results.json").read_text())
    assert written["results"]["gpt3_arithmetic_2da"]["1"]["acc"] == 1.0
    assert (tmp_path / "oracle" / "plots" / "overview.png").stat().st_size > 1000
    assert "2D+" in (tmp_path / "oracle" / "results.md").read_text()


def test_a_second_evaluation_into_the_same_out_replaces_the_report_whole(shared_data, tmp_path):
    """Plots and samples of tasks the new report lacks were left beside it, describing another evaluation."""
    out = tmp_path / "eval"
    run_eval(DummyLM("oracle"), ["gpt3_arithmetic_2da", "gpt3_arithmetic_2ds"], [0], out, data_dir=shared_data,
             limit=5, log_samples=True)
    assert (out / "plots" / "gpt3_arithmetic_2ds.png").exists() and (out / "samples_gpt3_arithmetic_2ds.jsonl").exists()
    (out / "notes.txt").write_text("mine")
    files = run_eval(DummyLM("oracle"), ["gpt3_arithmetic_2da", "arithmetic_2da"], [0], out, data_dir=shared_data,
                     limit=5)["files"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["arithmetic_2da.png", "gpt3_arithmetic_2da.png",
                                                                "overview.png"]
    assert sorted(map(str, (out / "plots").iterdir())) == sorted(files["plots"])
    assert not list(out.glob("samples_*.jsonl")) and (out / "notes.txt").read_text() == "mine"
    assert set(json.loads((out / "results.json").read_text())["results"]) == {"gpt3_arithmetic_2da", "arithmetic_2da"}


def test_generated_arithmetic_by_generation_exact_match(tiny_lm):
    oracle = run_eval(DummyLM("oracle"), ["arithmetic_gen"], [0, 2], None, limit=100)
    assert all(e["exact_match"] == 1.0 for by_k in oracle["results"].values() for e in by_k.values())
    real = run_eval(tiny_lm, ["arithmetic_1dc_gen"], [1], None, limit=4)  # a random model decodes garbage
    assert real["results"]["arithmetic_1dc_gen"]["1"]["exact_match"] == 0.0


MC_YAML = """
task: toy_mc
dataset: {loader: jsonl, files: {test: "{data_dir}/toy.jsonl"}}
output_type: multiple_choice
doc_to_text: "{{ q }}"
doc_to_choice: "choices"
doc_to_target: "{{ gold }}"
gpt3_metric: acc_norm_token
"""


def test_multiple_choice_normalisations_match_hand_computation(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "toy.yaml").write_text(MC_YAML)
    docs = [{"q": "Q1", "choices": ["ab", "abcdef", "x"], "gold": 1},
            {"q": "Q2", "choices": ["long answer", "no"], "gold": 0},
            {"q": "Q3", "choices": ["aa", "bb"], "gold": 1}]
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    # log P(" choice" | context) and log P(" choice" | "Answer:"), set by hand
    cond = {("Q1", " ab"): -2.0, ("Q1", " abcdef"): -3.5, ("Q1", " x"): -1.9,
            ("Q2", " long answer"): -6.0, ("Q2", " no"): -2.5,
            ("Q3", " aa"): -1.0, ("Q3", " bb"): -3.0}
    uncond = {" ab": -2.2, " abcdef": -6.0, " x": -1.0, " long answer": -9.0, " no": -1.0, " aa": -0.5, " bb": -4.0}

    def logprob(ctx, cont):
        return uncond[cont] if ctx == "Answer:" else cond[(ctx, cont)]

    # DummyLM tokens are characters: token count = len(" " + choice); char count = len(choice)
    # Q1 raw: x(-1.9) wrong; per-token: -2/3, -3.5/7=-0.5, -1.9/2 -> abcdef right; per-char: -1, -0.583, -1.9 -> right;
    #    uncond: 0.2, 2.5, -0.9 -> right
    # Q2 raw: no (-2.5) wrong; per-token: -6/12=-0.5, -2.5/3 -> long right; per-char -6/11, -1.25 -> right;
    #    uncond: 3.0, -1.5 -> right
    # Q3 raw: aa wrong; per-token: -1/3, -1 -> wrong; per-char: -0.5, -1.5 -> wrong; uncond: -0.5, 1.0 -> right
    expected = {"acc": 0.0, "acc_norm_token": 2 / 3, "acc_norm_char": 2 / 3, "acc_uncond": 1.0}
    res = run_eval(DummyLM(logprob_fn=logprob), ["toy_mc"], [0], tmp_path / "out", include=[tmp_path / "tasks"],
                   data_dir=tmp_path)
    entry = res["results"]["toy_mc"]["0"]
    for m, v in expected.items():
        assert entry[m] == pytest.approx(v), m
    assert entry["acc_norm_token_stderr"] == pytest.approx(mean_stderr([1, 1, 0]))
    assert res["tasks"]["toy_mc"]["gpt3_metric"] == "acc_norm_token"
    md = (tmp_path / "out" / "results.md").read_text()
    assert "**66.67 ± 33.33** ★" in md  # GPT-3's choice marked


def test_uniform_model_gets_chance_on_multiple_choice(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "toy.yaml").write_text(MC_YAML)
    docs = [{"q": f"Q{i}", "choices": ["a", "b", "c", "d"], "gold": i % 4} for i in range(8)]
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    res = run_eval(DummyLM("uniform"), ["toy_mc"], [0, 2], None, include=[tmp_path / "tasks"], data_dir=tmp_path)
    for k in ("0", "2"):
        for m in ("acc", "acc_norm_token", "acc_norm_char", "acc_uncond"):
            assert res["results"]["toy_mc"][k][m] == pytest.approx(0.25)


def test_generation_metrics():
    assert exact_match("The Mars.", ["mars"]) == 1.0
    assert exact_match(" 143", [" 143"], "strip") == 1.0 and exact_match("1430", ["143"], "strip") == 0.0
    assert token_f1("planet mars is red", ["Planet Mars"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert corpus_bleu([("the cat sat on the mat", ["the cat sat on the mat"])]) == pytest.approx(100.0)
    # Papineni et al. example 1 (candidate 1 vs 3 references): p1 = 17/18
    hyp = "It is a guide to action which ensures that the military always obeys the commands of the party"
    refs = ["It is a guide to action that ensures that the military will forever heed Party commands",
            "It is the guiding principle which guarantees the military forces always being under the command of the Party",
            "It is the practical guide for the army always to heed the directions of the party"]
    b = corpus_bleu([(hyp, refs)])
    assert 30 < b < 60  # 0.5046 with NLTK's unsmoothed BLEU-4 on this pair
    assert b == pytest.approx(50.46, abs=0.05)
    v, se = aggregate("perplexity", [-1.0, -2.0, -3.0], bootstrap_iters=200)
    assert v == pytest.approx(math.exp(2.0)) and se > 0


def test_macro_f1_matches_scikit_learn_and_is_reported_beside_the_normalisations(tmp_path):
    from sklearn.metrics import f1_score
    from evaluation.metrics import macro_f1
    rng = __import__("random").Random(0)
    for _ in range(20):
        pairs = [(rng.randrange(3), rng.randrange(3)) for _ in range(rng.randrange(1, 30))]
        preds, golds = zip(*pairs)
        assert macro_f1(pairs) == pytest.approx(f1_score(golds, preds, average="macro"))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "toy.yaml").write_text(MC_YAML + "metrics: [acc, f1_macro]\n")
    docs = [{"q": f"Q{i}", "choices": ["a", "bb", "ccc"], "gold": i % 3} for i in range(6)]
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    # per token every choice scores -log V: all tie and the first, "a", is the pick, against golds 0,1,2,0,1,2
    res = run_eval(DummyLM("uniform"), ["toy_mc"], [0], tmp_path / "out", include=[tmp_path / "tasks"],
                   data_dir=tmp_path)
    entry = res["results"]["toy_mc"]["0"]
    assert entry["f1_macro"] == pytest.approx(f1_score([0, 1, 2] * 2, [0] * 6, average="macro"))
    assert res["tasks"]["toy_mc"]["metrics"] == ["acc", "acc_norm_token", "acc_norm_char", "acc_uncond", "f1_macro"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert f"{100 * entry['f1_macro']:.2f}" in md  # shown as a percentage like the accuracies


def test_group_bootstrap_resamples_whole_groups():
    from evaluation.formats.superglue import em_per_question
    from evaluation.metrics import bootstrap_stderr, group_bootstrap_stderr, mean
    xs = [float(i % 3 == 0) for i in range(30)]
    # one item per group: the same draws as the plain bootstrap
    assert group_bootstrap_stderr(lambda its: mean([x for _, x in its]), [(i, x) for i, x in enumerate(xs)], 200) == \
        pytest.approx(bootstrap_stderr(mean, xs, 200))
    # 40 questions of 5 answers, half of them all right: the per-question EM's error is that of 40 coin flips
    items = [(q, q % 2 == 0) for q in range(40) for _ in range(5)]
    v, se = aggregate("em_question", items, bootstrap_iters=500)
    assert v == 0.5 and se == pytest.approx(math.sqrt(0.25 / 40), rel=0.2)
    assert em_per_question([("a", True), ("a", False), ("b", True)]) == 0.5
