"""`mnemos` dispatch: a command line imports only the module of the command it names, and the table that
says which module registers which command stays true."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.cli import COMMAND_MODULES, build_parser, overview_parser, requested_command

ROOT = Path(__file__).resolve().parents[2]


def _commands(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Command word -> its one-line help, as `mnemos --help` lists them."""
    return {choice.dest: choice.help for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for choice in a._choices_actions}


def test_each_module_registers_exactly_the_commands_and_help_the_table_names():
    for module, commands in COMMAND_MODULES.items():
        for command in commands:
            assert _commands(build_parser(command)) == commands, module
    every = {c: h for cs in COMMAND_MODULES.values() for c, h in cs.items()}
    assert _commands(build_parser()) == every
    assert _commands(overview_parser()) == every


@pytest.mark.parametrize("argv, command", [
    (["train", "cfg.yaml", "--nproc", "2"], "train"),
    (["--log-level", "DEBUG", "jobs", "status", "12"], "jobs"),
    (["--log-level=DEBUG", "eval-data", "--help"], "eval-data"),
    (["--help"], None),
    (["-h", "train"], None),
    ([], None),
])
def test_requested_command_skips_the_global_options(argv, command):
    assert requested_command(argv) == command


def test_a_command_line_does_not_import_the_other_commands_modules():
    """`mnemos jobs ...` and `mnemos submit ...` stay free of torch (seconds of start-up on every call)."""
    code = ("import sys; from launcher.cli import build_parser; build_parser('jobs').parse_args(['jobs', 'status', '1']); "
            "print(sorted(m for m in ('torch', 'scipy', 'launcher.finetune', 'evaluation.downstream.slots') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_top_level_help_imports_no_command_module():
    """`mnemos --help` lists every command without the seconds of importing torch for finetune/downstream."""
    code = ("import contextlib, io, sys; from launcher.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'launcher.finetune', 'evaluation.downstream.cli', 'data.cli') "
            "if m in sys.modules), 'downstream' in out.getvalue())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] True"


def test_an_unknown_command_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "launcher.cli", "trian"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    for commands in COMMAND_MODULES.values():
        for command in commands:
            assert f"'{command}'" in out.stderr


def test_each_downstream_task_module_registers_the_help_the_table_names():
    from evaluation.downstream.cli import TASK_MODULES, task_parser
    for task, (module, help_line) in TASK_MODULES.items():
        assert _commands(task_parser(module)) == {task: help_line}, module
    assert _commands(build_parser("downstream")._subparsers._group_actions[0].choices["downstream"]) == {
        task: help_line for task, (_, help_line) in TASK_MODULES.items()}


def test_downstream_help_imports_no_task_module_and_a_task_its_own_only():
    """`mnemos downstream --help` lists the tasks in a fraction of a second; `mnemos downstream toy ...` parses
    with the toy task's own parser (its errors name `mnemos downstream toy`) without importing the others."""
    code = ("import contextlib, io, sys; from launcher.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['downstream', '--help'])\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'evaluation.downstream.slots', 'evaluation.downstream.toy') "
            "if m in sys.modules), 'repertoire' in out.getvalue())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] True"
    code = ("import sys; from launcher.cli import main\n"
            "try: main(['downstream', 'toy', '--steps', '0'])\n"
            "except SystemExit as e: print('exit', e.code)\n"
            "print(sorted(m for m in ('evaluation.downstream.slots', 'evaluation.downstream.toy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split("\n")[:2] == ["exit 2", "['evaluation.downstream.toy']"], out.stdout + out.stderr
    assert out.stderr.startswith("mnemos downstream toy: argument --steps")


def test_unknown_arguments_are_still_refused_for_every_other_command():
    out = subprocess.run([sys.executable, "-m", "launcher.cli", "jobs", "list", "--bogus"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unrecognized arguments: --bogus" in out.stderr


@pytest.mark.parametrize("argv, prog, message", [
    (["plan"], "mnemos plan", "one of the arguments --model --config is required"),
    (["data", "dedup", "--input", "x.txt"], "mnemos data dedup", "the following arguments are required: --out/-o"),
    (["jobs", "status"], "mnemos jobs status", "the following arguments are required: job"),
    (["downstream", "mil", "--folds", "1"], "mnemos downstream mil", "argument --folds: must be an integer >= 2"),
    (["trian"], "mnemos", "argument COMMAND: invalid choice: 'trian'"),
])
def test_a_refused_command_line_is_one_line_naming_the_command_and_its_help(argv, prog, message):
    """argparse's own refusal puts the whole usage (a dozen lines for `mnemos plan`) above the error."""
    out = subprocess.run([sys.executable, "-m", "launcher.cli", *argv], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith(f"{prog}: {message}") and out.stderr.endswith(f"(see `{prog} --help`)\n")
