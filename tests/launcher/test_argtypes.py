"""The command line's number types: values inside a rule pass through, values outside it are refused with
the rule and the value; commands outside `downstream` use them too."""

import argparse

import pytest

from launcher.argtypes import comma_list, integer, number
from launcher.cli import main as mnemos


def test_argument_types_accept_the_values_inside_their_rules():
    assert integer(1)("3") == 3 and integer()("-4") == -4
    assert number(0, low_open=True)("1e-3") == 1e-3 and number(0, 1)("1") == 1.0 and number()("-2.5") == -2.5
    assert comma_list(integer(0), distinct=True)(" 0, 1,2 ") == " 0, 1,2 "
    for bad in ("inf", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match="finite"):
            number()(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="at least one value"):
        comma_list(integer())(" , ")


@pytest.mark.parametrize("argv, message", [
    (["quickstart", "--steps", "1"], "argument --steps: must be an integer >= 2, got 1"),
    (["quickstart", "--corpus", "no_such_corpus.txt"], "argument --corpus: no such file or directory"),
    (["finetune", "--warmup", "1.5"], "argument --warmup: must be a number in [0, 1], got 1.5"),
    (["eval", "--checkpoint", "run", "--tasks", "arithmetic_2da", "--limit", "0"],
     "argument --limit: must be an integer >= 1, got 0"),
    (["ckpt", "reshard", "run", "--out", "resharded", "--tp", "0"], "argument --tp: must be an integer >= 1, got 0"),
    (["eval", "--hf-model", "no_such_export", "--tasks", "arithmetic_2da"],
     "argument --hf-model: no such file or directory: 'no_such_export'"),
])
def test_other_commands_refuse_bad_numbers_at_parse_time(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        mnemos(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    """Files the parser cannot check (globs, directories of shards) are reported by the command itself."""
    missing = str(tmp_path / "nowhere.txt")
    assert mnemos(["data", "stats", missing]) == 2
    assert capsys.readouterr().err.strip() == f"mnemos: input '{missing}' does not exist"


@pytest.mark.parametrize("argv", [
    ["downstream", "toy", "--steps", "2", "--out", "{file}"],
    ["downstream", "slots", "--out", "{file}"],
    ["quickstart", "--out", "{file}/sub"],
    ["data", "dedup", "-i", "{src}", "-o", "{file}"],
    ["data", "tokenize", "-i", "{src}", "-o", "{file}", "--tokenizer", "spm.model"],
    ["data", "train-tokenizer", "-i", "{src}", "--model-prefix", "{file}/spm", "--vocab-size", "300"],
    ["data", "decontaminate", "-i", "{src}", "-o", "{dir}/clean", "--write-index", "{dir}"],
    ["eval", "--checkpoint", "{dir}", "--tasks", "arithmetic_2da", "--out", "{file}"],
    ["eval-data", "synthetic", "--out", "{file}"],
    ["ckpt", "export-torch", "{dir}", "--out", "{dir}"],
])
def test_an_output_path_a_file_or_directory_is_in_the_way_of_stops_at_parse_time(tmp_path, capsys, argv):
    """Before any input is read: the mkdir would otherwise fail half-way, with a traceback."""
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    (tmp_path / "src.txt").write_text("a document\n")
    argv = [a.format(file=taken, dir=tmp_path, src=tmp_path / "src.txt") for a in argv]
    with pytest.raises(SystemExit) as stop:
        mnemos(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "is a file" in err or "is a directory" in err, err
    assert taken.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "src.txt"]


def _commands(parser, path=("mnemos",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))


def test_every_option_says_what_it_does_and_its_default():
    from launcher.cli import build_parser
    undocumented = []
    for path, parser in _commands(build_parser()):
        text = parser.format_help()  # raises on a help string argparse cannot format
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                undocumented.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
        assert text
    assert not undocumented, undocumented
    dedup = dict(_commands(build_parser()))[("mnemos", "data", "dedup")].format_help()
    assert "(default: 16)" in " ".join(dedup.split())  # --bands: defaults are shown
    assert "(default: None)" not in dedup and "(default: False)" not in dedup  # "off" is not a default to show
