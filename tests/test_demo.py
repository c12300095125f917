"""`mmgen demo --quick`: every shipped stage runs end to end on toy budgets, and finished stages are reused."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_quick_demo_runs_every_stage_then_reuses_them(tmp_path):
    out = tmp_path / "demo"
    first = subprocess.run([sys.executable, "-m", "mmgen", "demo", "--quick", "--out", str(out)],
                           capture_output=True, text=True, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["data", "ground_truth", "tokenizer"]
    assert summary["ground_truth"]["overall"] == 1.0
    assert 0.0 <= summary["tokenizer"]["detector_fidelity"] <= 1.0
    assert (out / "tokenizer" / "tokenizer" / "model.safetensors").exists()
    assert first.stdout.count("done in") == 3

    again = subprocess.run([sys.executable, "-m", "mmgen", "demo", "--quick", "--out", str(out)],
                           capture_output=True, text=True, check=True)
    assert again.stdout.count("reused") == 3
