import functools
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _is_xdist_controller(config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config):
    import torch
    torch.set_num_threads(1)
    if _is_xdist_controller(config):  # the workers inherit the variable (tests/downstream/slots_ci.py)
        from tests.downstream.slots_ci import SHARED_DIR_ENV
        os.environ[SHARED_DIR_ENV] = tempfile.mkdtemp(prefix="mnemos_slots_ci_")


def pytest_unconfigure(config):
    if _is_xdist_controller(config):
        from tests.downstream.slots_ci import SHARED_DIR_ENV, BackgroundRun
        BackgroundRun(Path(os.environ.pop(SHARED_DIR_ENV))).stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"reference data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@functools.cache
def small_tokenizer_file() -> str:
    """A 512-piece sentencepiece model of WikiText-2 lines, for configs that must pass check_cross_sections
    (it reads the vocabulary); trained once per test process."""
    from data.tokenizer import train_tokenizer
    out = Path(tempfile.mkdtemp(prefix="mnemos_tok_"))
    lines = (SHARED_DATA / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()[:2000]
    (out / "text.txt").write_text("\n".join(line for line in lines if line.strip()))
    return train_tokenizer([str(out / "text.txt")], str(out / "tok"), vocab_size=512)
