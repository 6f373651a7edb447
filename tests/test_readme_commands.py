"""Every `mnemos ...` line in the README's bash blocks parses with today's command line: option names,
choices and numbers the README shows still exist and pass their rules. Paths in examples (runs/bert-base)
need not exist, so only that one refusal is allowed."""

import contextlib
import io
import os
import shlex

import pytest

from launcher.cli import parse_command_line
from tests.conftest import ROOT


def readme_commands() -> list[str]:
    commands, block = [], None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if block is not None:
                joined = "\n".join(block).replace("\\\n", " ")
                parts = [part.split(" #")[0].strip() for row in joined.splitlines() for part in row.split("&&")]
                commands += [c for c in parts if c.startswith("mnemos ")]
            block = [] if block is None and line.strip() == "```bash" else None
            continue
        if block is not None:
            block.append(line)
    return commands


def test_the_readme_shows_the_commands_users_type():
    shown = {shlex.split(c)[1] for c in readme_commands()}
    assert {"quickstart", "train", "data", "eval", "plan", "submit", "ckpt", "downstream"} <= shown


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    argv = [a for a in shlex.split(command)[1:] if a != "..."]
    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)  # README paths such as ../shared/data are relative to the checkout
    try:
        with contextlib.redirect_stderr(err):
            parse_command_line(argv)
    except SystemExit as stop:
        assert stop.code == 0 or "no such file or directory" in err.getvalue(), err.getvalue()
    finally:
        os.chdir(cwd)
