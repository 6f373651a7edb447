"""Task files: mistakes refused when the task is loaded, in one line naming file, task, field, value and rule."""

from __future__ import annotations

import pytest

from launcher.cli import main

_GEN_TASK = ("task: {name}\ndataset: {{loader: generator, generator: arithmetic, kwargs: {{kind: 2da, n: 5}}}}\n"
             "eval_split: test\noutput_type: generate_until\n")


def _refused_at_load(tmp_path, capsys, yaml_text: str, *expected: str) -> None:
    """`--list-tasks` (which loads every task file) refuses the file in one line naming what is wrong."""
    d = tmp_path / "mine"
    d.mkdir(exist_ok=True)
    (d / "t.yaml").write_text(yaml_text)
    assert main(["eval", "--list-tasks", "--include-tasks", str(d)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{d / 't.yaml'} (task mytask)" in err, err
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("line, expected", [
    ("doc_to_choices: '[1, 2]'", "doc_to_choices: unknown field (did you mean 'doc_to_choice'?)"),
    ("version: one", "version='one': Input should be a valid integer"),
    ("output_type: multiple-choice", "output_type='multiple-choice': Input should be 'multiple_choice'"),
])
def test_yaml_mistakes_quote_the_value_and_suggest_the_field(tmp_path, capsys, line, expected):
    text = _GEN_TASK.format(name="mytask")
    if line.startswith("output_type"):
        text = text.replace("output_type: generate_until\n", "")
    _refused_at_load(tmp_path, capsys, text + line + "\n", expected)


def test_a_task_directory_named_twice_is_read_once(tmp_path, capsys, monkeypatch):
    d = tmp_path / "mytasks"
    d.mkdir()
    (d / "x.yaml").write_text(_GEN_TASK.format(name="mytask_x"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNEMOS_EVAL_TASKS", "mytasks")
    assert main(["eval", "--list-tasks", "--include-tasks", str(d)]) == 0
    assert capsys.readouterr().out.count("mytask_x") == 1


def test_an_unknown_task_shows_close_matches_not_every_name(capsys):
    assert main(["eval", "--checkpoint", "x", "--tasks", "lambda"]) == 2
    err = capsys.readouterr().err
    assert "unknown task or group 'lambda' (did you mean lambada" in err and "--list-tasks" in err
    assert "hellaswag" not in err  # the ~80 names are --list-tasks' job


def test_every_shipped_task_has_a_paper_name():
    from evaluation.registry import load_configs
    assert [name for name, cfg in load_configs().items() if not cfg.paper_name] == []


@pytest.mark.parametrize("setting, expected", [
    ("{method: bream}", ["generation: method='bream': expected 'greedy' or 'beam'"]),
    ("{max_gen_tokens: 12}", ["unknown generation settings 'max_gen_tokens' (did you mean 'max_gen_toks'?)"]),
    ("{num_beams: two}", ["num_beams='two': expected an integer >= 1"]),
    ("{method: greedy, length_penalty: 0.6}", ["length_penalty=0.6 with method='greedy'", "method: beam only"]),
    ("{method: greedy, num_beams: 4}", ["num_beams=4 with method='greedy'"]),
])
def test_generation_typos_are_refused_when_the_task_loads(tmp_path, capsys, setting, expected):
    _refused_at_load(tmp_path, capsys, _GEN_TASK.format(name="mytask") + f"generation: {setting}\n", *expected)


def test_a_gpt3_metric_the_task_does_not_compute_is_refused(tmp_path, capsys):
    _refused_at_load(tmp_path, capsys, _GEN_TASK.format(name="mytask") + "gpt3_metric: accuracy\n",
                     "gpt3_metric='accuracy' is not a metric this task computes (rule: one of exact_match, f1")


def test_a_jinja_syntax_error_is_refused_when_the_task_loads(tmp_path, capsys):
    _refused_at_load(tmp_path, capsys, _GEN_TASK.format(name="mytask") + "doc_to_text: '{{ context }'\n",
                     "doc_to_text: not a valid Jinja template: unexpected '}'")


def test_a_template_naming_a_field_the_documents_lack_is_refused_before_the_model_loads(tmp_path, capsys):
    """Undefined names only show on real documents: `mnemos eval` renders each task's templates once on its
    first document before it loads the model, so nothing is written and no checkpoint is read."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "t.yaml").write_text(_GEN_TASK.format(name="mytask") + "doc_to_text: '{{ contxt }}'\n")
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", str(tmp_path / "no_run"), "--include-tasks", str(d), "--tasks", "mytask",
                 "--shots", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "doc_to_text failed on a document" in err and "'contxt' is undefined" in err, err
    assert "no valid checkpoint" not in err and not out.exists()
