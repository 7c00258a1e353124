"""The distillation experiment script runs end to end at its smoke size."""

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "distill_experiment.py")


@pytest.mark.slow
def test_experiment_smoke(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs the 'bench' or 'test' extra")
    out_dir = tmp_path / "results"
    result = subprocess.run(
        [
            sys.executable,
            _SCRIPT,
            "--preset",
            "smoke",
            "--out_dir",
            str(out_dir),
            "--work_dir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "| mode | train examples |" in result.stdout  # the table is printed
    results = json.loads((out_dir / "distill_experiment.json").read_text())
    students = results["students"]
    assert set(students) == {"answer_only", "sample_matching", "distribution_matching"}
    assert students["answer_only"]["loss_steps"] == [4]  # the random teacher may keep no sample
    for ext in ("md", "json", "png"):
        assert (out_dir / f"distill_experiment.{ext}").stat().st_size > 0
    assert (out_dir / "distill_experiment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(out_dir)) == [f"distill_experiment.{e}" for e in ("json", "md", "png")]
