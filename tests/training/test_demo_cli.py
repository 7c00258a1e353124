"""The embedded demo through the CLI (`flan-jax train` with its default gin files), shortened."""

from __future__ import annotations

import os

import pytest

from flan_jax.training import demo


def test_results_table_lists_every_cluster_and_the_mean():
    before = {"arith": {"seen": 0.0, "unseen": 0.0}, "nli": {"seen": 10.0, "unseen": 0.0}}
    after = {"arith": {"seen": 50.0, "unseen": 40.0}, "nli": {"seen": 90.0, "unseen": 80.0}}
    lines = demo.format_results_table(before, after).splitlines()
    assert lines[3].split() == ["arith", "0.0%", "50.0%", "0.0%", "40.0%"]
    assert lines[-1].split() == ["mean", "5.0%", "70.0%", "0.0%", "60.0%"]


@pytest.mark.slow
def test_short_demo_run_learns_and_leaves_an_inferable_checkpoint(tmp_path, capsys):
    from flan_jax import checkpoints
    from flan_jax.cli import infer
    from flan_jax.cli import train as train_cli

    model_dir = str(tmp_path / "demo")
    files = [f"--gin_file={f}" for f in train_cli.DEMO_GIN_FILES]
    code = train_cli.main(
        files
        + [
            f"--gin.MODEL_DIR={model_dir}",
            "--gin.TRAIN_STEPS=150",
            "--gin.demo.run_demo.num_eval_examples=10",
            "--gin.metrics.MetricsConfig.progress_bar=False",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    mean = next(line for line in out.splitlines() if line.startswith("mean")).split()
    before_seen, after_seen = float(mean[1].rstrip("%")), float(mean[2].rstrip("%"))
    assert after_seen > before_seen
    assert "flan-jax infer --checkpoint" in out
    assert checkpoints.load_model_checkpoint(model_dir).step == 150

    prompts = os.path.join(model_dir, "new_instructions.jsonl")
    output = str(tmp_path / "predictions.jsonl")
    assert (
        infer.main(
            [
                "--checkpoint",
                model_dir,
                "--input_file",
                prompts,
                "--output_file",
                output,
                "--max_decode_len",
                "32",
            ]
        )
        == 0
    )
    assert len(infer.read_jsonl(output, required=("prediction",))) == len(demo.NEW_INSTRUCTIONS)
