"""End to end: 2 training steps of the tiny T5 on the demo tasks through `train(...)`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from flan_jax import checkpoints
from flan_jax.models import t5
from flan_jax.tasks import demo
from flan_jax.testing.models import make_tiny_t5_config
from flan_jax.training import checkpointing, metrics, task_eval, trainer

LENGTHS = {"inputs": 64, "targets": 32}


def _register():
    demo.register_demo_tasks(demo.get_demo_vocabulary())


def test_two_steps_then_eval_and_checkpoint(tmp_path):
    model_dir = str(tmp_path / "run")
    config = make_tiny_t5_config(vocab_size=1024)
    result = trainer.train(
        model_dir=model_dir,
        model=t5.T5Model(config),
        mixture_or_task_name=demo.DEMO_MIXTURE,
        task_feature_lengths=LENGTHS,
        train_steps=2,
        batch_size=4,
        register_tasks=[_register],
        data_config=trainer.DataConfig(buffer_size=16),
        checkpoint_config=checkpointing.CheckpointConfig(period=1, keep=1),
        eval_config=task_eval.EvalConfig(
            tasks=("demo__sentiment.unseen__zs_opt",), max_examples=4, batch_size=4
        ),
        metrics_config=metrics.MetricsConfig(log_period=1, peak_flops_per_device=1e12),
    )
    assert result.step == 2
    assert np.isfinite(result.train_metrics["train/loss"])
    assert 0 < result.train_metrics["train/mfu"] < 1
    assert 0 < result.packing_efficiency <= 1
    assert set(result.eval_metrics) == {
        "eval/demo__sentiment.unseen__zs_opt/loss",
        "eval/demo__sentiment.unseen__zs_opt/token_accuracy",
        "eval/demo__sentiment.unseen__zs_opt/accuracy",
    }
    assert np.isfinite(result.eval_metrics["eval/demo__sentiment.unseen__zs_opt/loss"])

    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        lines = [json.loads(x) for x in f]
    assert [x["step"] for x in lines if "train/loss" in x] == [1, 2]
    assert os.listdir(os.path.join(model_dir, "tensorboard"))

    # keep=1: only the last step survives, and it loads as a model checkpoint.
    loaded = checkpoints.load_model_checkpoint(model_dir)
    assert loaded.step == 2 and loaded.config == config
    for a, b in zip(
        np.asarray(loaded.params["decoder"]["logits_dense"]["kernel"]).ravel()[:8],
        np.asarray(result.state.params["decoder"]["logits_dense"]["kernel"]).ravel()[:8],
    ):
        assert a == b


def test_missing_model_dir_is_one_clear_error():
    with pytest.raises(ValueError, match="--gin.MODEL_DIR"):
        trainer.RunConfig(None, "demo_mixture", LENGTHS, 2, 4)
    with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
        trainer.RunConfig("/tmp/x", "demo_mixture", {"inputs": 8}, 2, 4)
    with pytest.raises(ValueError, match="TRAIN_STEPS"):
        trainer.RunConfig("/tmp/x", "demo_mixture", LENGTHS, 0, 4)


def test_initial_checkpoint_with_other_architecture_is_rejected(tmp_path):
    import jax

    config = make_tiny_t5_config(vocab_size=1024)
    other = config.replace(num_heads=2)
    vocab = demo.get_demo_vocabulary()
    checkpoints.save_model_checkpoint(
        tmp_path / "init",
        params=t5.init_params(other, jax.random.key(0)),
        config=other,
        vocab_path=vocab.sentencepiece_model_file,
        extra_ids=0,
    )
    with pytest.raises(ValueError, match="num_heads"):
        checkpointing.load_initial_params(
            tmp_path / "init", model_config=config, abstract_params=None, shardings=None
        )


def test_interrupted_save_leaves_latest_checkpoint_loadable(tmp_path):
    """A step directory left half-written (orbax's tmp dir) is ignored; the last one loads."""
    import jax

    config = make_tiny_t5_config(vocab_size=1024)
    vocab = demo.get_demo_vocabulary()
    params = t5.init_params(config, jax.random.key(0))
    checkpoints.save_model_checkpoint(
        tmp_path,
        params=params,
        config=config,
        vocab_path=vocab.sentencepiece_model_file,
        extra_ids=0,
        step=1,
    )
    crashed = tmp_path / "2.orbax-checkpoint-tmp-1234"
    (crashed / "params").mkdir(parents=True)
    (crashed / "params" / "partial").write_bytes(b"\0" * 10)
    loaded = checkpoints.load_model_checkpoint(tmp_path)
    assert loaded.step == 1
