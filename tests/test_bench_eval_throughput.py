"""bench/eval_throughput.py records what it measured: generations with text to compare, and the number of
requests each workload really timed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generation_workload_compares_text_and_records_real_counts(shared_data, tmp_path):
    pytest.importorskip("lm_eval")
    out = tmp_path / "eval_throughput.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "eval_throughput.py"), "--preset", "tiny", "--n", "16",
                    "--gen-n", "10", "--repeats", "1", "--batch-size", "4", "--data", str(shared_data),
                    "--out", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=300)
    r = json.loads(out.read_text())
    gen = r["workloads"]["generate_greedy"]
    assert gen["nonempty_text"] == 1.0 and gen["mean_chars"] > 0   # not a comparison of empty strings
    assert gen["same_text"] == 1.0 and gen["same_ids_as_unbatched"] == 1.0  # fp32 on the CPU: identical
    assert r["requests"] == {"arithmetic_4shot": 16, "multiple_choice": 16, "generate_greedy": 10}
    assert all(r["workloads"][w]["requests"] == n for w, n in r["requests"].items())
    assert "n" not in r  # one number for all workloads was not what generate_greedy ran
