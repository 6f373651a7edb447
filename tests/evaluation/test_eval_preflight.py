"""`mnemos eval` checks what it can before the model loads and before OUT is made: the options, each task's
data and few-shot pool, the contamination index. The refusals here name a --checkpoint that does not exist:
had the model been loaded first, the error would be "no valid checkpoint" instead of the one asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.cli import main


def _refused(capsys, argv: list[str], *expected: str) -> None:
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no valid checkpoint" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err


@pytest.fixture
def words_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "wordlist.txt").write_text("casino\nobjects\nsuccession\ninevitably\n")
    return d


def test_an_index_without_a_tasks_n_is_refused_before_the_model_loads(tmp_path, words_dir, capsys):
    from data.ngrams import NgramIndex
    NgramIndex.build(["some training text"], [8, 9, 10, 11, 12, 13]).save(str(tmp_path / "idx"))
    out = tmp_path / "out"
    _refused(capsys, ["--checkpoint", str(tmp_path / "no_run"), "--tasks", "word_scramble_cl,word_scramble_a1,"
                      "arithmetic_2da", "--contamination", str(tmp_path / "idx"), "--data-dir", str(words_dir),
                      "--out", str(out), "--shots", "0"],
             f"--contamination {tmp_path / 'idx'} holds n-grams for n in [8..13], but word_scramble_cl, "
             "word_scramble_a1 need n=2", "--write-index FILE --index-ns 2,8,9,10,11,12,13")
    assert not out.exists()


def test_run_eval_checks_the_index_before_any_request(tmp_path, words_dir):
    from data.ngrams import NgramIndex
    from evaluation.adapters import DummyLM
    from evaluation.api import run_eval
    from evaluation.task import TaskError
    lm = DummyLM("uniform")
    with pytest.raises(TaskError, match=r"word_scramble_rw needs n=2"):
        run_eval(lm, ["word_scramble_rw"], [0], contamination_index=NgramIndex.build(["x"], [8, 13]),
                 data_dir=str(words_dir), limit=5)
    assert sum(lm.calls.values()) == 0


def test_contamination_that_is_not_an_index_names_the_option(tmp_path, shared_data, capsys):
    jsonl = shared_data / "gpt3_arithmetic" / "two_digit_addition.jsonl"
    base = ["--checkpoint", str(tmp_path / "no_run"), "--tasks", "arithmetic_2da", "--shots", "0"]
    _refused(capsys, base + ["--contamination", str(jsonl)], f"--contamination {jsonl} is not an n-gram index")
    _refused(capsys, base + ["--contamination", str(tmp_path / "missing.idx")],
             f"--contamination {tmp_path / 'missing.idx'}: no such file")
    _refused(capsys, base + ["--contamination", str(tmp_path)], f"--contamination {tmp_path} is a directory")
    main(["eval", *base, "--contamination", str(jsonl)])
    assert "pickle" not in capsys.readouterr().err  # numpy's hint to load it unsafely would only mislead


def test_bf16_on_cpu_is_refused_before_the_model_loads(tmp_path, capsys):
    _refused(capsys, ["--checkpoint", str(tmp_path / "no_run"), "--tasks", "arithmetic_2da", "--dtype", "bf16",
                      "--device", "cpu"], "--dtype bf16 on CPU (rule: bf16 and fp16 need a GPU")


def test_max_memory_is_parsed_and_checked_against_this_machine(tmp_path, capsys):
    import torch
    hf = tmp_path / "hf"
    hf.mkdir()
    base = ["--hf-model", str(hf), "--tasks", "arithmetic_2da", "--shots", "0"]
    with pytest.raises(SystemExit) as exc:
        main(["eval", *base, "--max-memory", "cpu"])
    assert exc.value.code == 2
    assert "argument --max-memory: 'cpu': expected DEVICE=SIZE" in capsys.readouterr().err
    missing_gpu = torch.cuda.device_count()  # the first index this machine does not have
    _refused(capsys, base + ["--max-memory", f"{missing_gpu}=70GiB", "--max-memory", "cpu=200GiB"],
             f"--max-memory {missing_gpu}=70GiB: this machine has no GPU")


def test_missing_task_data_is_refused_before_the_model_loads(tmp_path, std_data, capsys, monkeypatch):
    monkeypatch.delenv("MNEMOS_EVAL_DATA", raising=False)
    out = tmp_path / "out"
    base = ["--checkpoint", str(tmp_path / "no_run"), "--out", str(out)]
    _refused(capsys, base + ["--tasks", "hellaswag", "--shots", "0"],
             "task hellaswag: path '{data_dir}/hellaswag/hellaswag_val.jsonl' needs a data directory")
    _refused(capsys, base + ["--tasks", "cb", "--shots", "0", "--data-dir", str(std_data)],
             f"task cb: data file {std_data}/CB/val.jsonl does not exist")
    # COPA's fixture train split holds 2 documents: 3 shots cannot be drawn
    _refused(capsys, base + ["--tasks", "copa", "--shots", "0,3", "--data-dir", str(std_data)],
             "task copa: --shots up to 3 needs 3 demonstrations, but its few-shot split 'train' has 2 usable "
             "documents")
    _refused(capsys, base + ["--tasks", "word_scramble_cl", "--shots", "0", "--data-dir", str(tmp_path)],
             f"word list {tmp_path}/wordlist.txt does not exist", "`mnemos eval-data words CORPUS --out")
    assert not out.exists()


def test_an_empty_word_list_is_one_line(tmp_path, capsys):
    (tmp_path / "wordlist.txt").write_text("\n")
    _refused(capsys, ["--checkpoint", str(tmp_path / "no_run"), "--tasks", "word_scramble_cl", "--shots", "0",
                      "--data-dir", str(tmp_path)],
             f"task word_scramble_cl: word list {tmp_path / 'wordlist.txt'} is empty")


# ---------------------------------------------------------------------- eval-data
def test_words_reads_the_text_field_and_refuses_an_empty_list(tmp_path, shared_data, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    lines = (shared_data / "corpus" / "wikitext2_valid.txt").read_text().splitlines()[:300]
    pq.write_table(pa.table({"content": lines}), tmp_path / "c.parquet")
    out = tmp_path / "words.txt"
    assert main(["eval-data", "words", str(tmp_path / "c.parquet"), "-o", str(out)]) == 2
    assert "no documents with the field --text-field='text'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["eval-data", "words", str(tmp_path / "c.parquet"), "-o", str(out), "--text-field", "content",
                 "--n", "50"]) == 0
    assert len(out.read_text().split()) == 50


def test_synthetic_checks_the_word_list_before_writing(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["eval-data", "synthetic", "-o", str(out), "--word-list", str(tmp_path / "missing.txt")]) == 2
    assert f"--word-list {tmp_path / 'missing.txt'}: no such file" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    assert main(["eval-data", "synthetic", "-o", str(out), "--word-list", str(tmp_path / "empty.txt")]) == 2
    assert f"--word-list {tmp_path / 'empty.txt'} is empty" in capsys.readouterr().err
    assert not out.exists()


def test_synthetic_without_a_word_list_says_which_files_it_left_out_and_how_to_get_them(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["eval-data", "synthetic", "-o", str(out), "--n", "5"]) == 0
    said = capsys.readouterr().out
    assert "wrote 10 task files" in said and "5 word-scramble files need a word list" in said
    assert "mnemos eval-data words" in said and not list(out.glob("scramble_*"))
