"""The tiny decoder-only model through the one trainer, on the demo collection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gin
import jax
import numpy as np
import pytest

from flan_jax import checkpoints
from flan_jax.cli import gin_flags
from flan_jax.data import packing, pipeline
from flan_jax.errors import ConfigError
from flan_jax.models.decoder import DecoderModel
from flan_jax.tasks import demo
from flan_jax.training import checkpointing, losses, metrics, task_eval, trainer

LENGTHS = {"inputs": 64, "targets": 32}
TASK = "demo__nli__zs_opt"


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    vocabulary = demo.get_demo_vocabulary(str(tmp_path_factory.mktemp("vocab")))
    demo.register_demo_tasks(vocabulary)
    return vocabulary


def _tiny_decoder(prefix_lm: bool = False) -> DecoderModel:
    """The model of gin_configs/models/decoder_tiny.gin, in float32 and the demo's vocabulary."""
    gin.clear_config()
    try:
        gin_flags.parse_gin(
            ["models/decoder_tiny.gin"],
            [
                'ACTIVATION_DTYPE = "float32"',
                f"PREFIX_LM = {prefix_lm}",
                "model_config.DecoderConfig.vocab_size = 1024",  # the demo's 1000 ids
            ],
        )
        model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    finally:
        gin.clear_config()
    assert isinstance(model, DecoderModel)
    return model


def _quiet_metrics() -> metrics.MetricsConfig:
    return metrics.MetricsConfig(log_period=1, tensorboard=False, progress_bar=False)


def test_the_tiny_decoder_trains_evaluates_and_checkpoints_through_train(tmp_path, vocabulary):
    model = _tiny_decoder()
    eval_task = "demo__sentiment.unseen__zs_opt"
    result = trainer.train(
        model_dir=str(tmp_path / "run"),
        model=model,
        mixture_or_task_name=demo.DEMO_MIXTURE,
        task_feature_lengths=LENGTHS,
        train_steps=3,
        batch_size=4,
        register_tasks=[lambda: demo.register_demo_tasks(vocabulary)],
        data_config=trainer.DataConfig(buffer_size=16),
        checkpoint_config=checkpointing.CheckpointConfig(period=3, keep=1, async_save=False),
        eval_config=task_eval.EvalConfig(tasks=(eval_task,), max_examples=4, batch_size=4),
        metrics_config=_quiet_metrics(),
    )
    assert result.step == 3
    assert np.isfinite(result.train_metrics["train/loss"])
    # Real tokens are counted by segment ids over the one decoder stream.
    assert 0.5 < result.packing_efficiency <= 1
    assert np.isfinite(result.eval_metrics[f"eval/{eval_task}/loss"])
    assert f"eval/{eval_task}/accuracy" in result.eval_metrics
    loaded = checkpoints.load_model_checkpoint(tmp_path / "run")
    assert loaded.step == 3 and loaded.config == model.config


def test_prefix_lm_with_loss_on_inputs_trains_through_train(tmp_path, vocabulary):
    # A prefix-LM model refuses rows without decoder_causal_attention, so this also checks
    # that the trainer built the rows in the model's format.
    model = _tiny_decoder(prefix_lm=True)
    assert model.feature_format == packing.DecoderOnlyFormat(start_token_id=0, prefix_lm=True)
    result = trainer.train(
        model_dir=str(tmp_path / "run"),
        model=model,
        mixture_or_task_name=TASK,
        task_feature_lengths=LENGTHS,
        train_steps=2,
        batch_size=4,
        register_tasks=[lambda: demo.register_demo_tasks(vocabulary)],
        data_config=trainer.DataConfig(buffer_size=16, loss_on_inputs=True),
        eval_config=task_eval.EvalConfig(teacher_forced=False, inference=False),
        metrics_config=_quiet_metrics(),
    )
    assert result.step == 2 and np.isfinite(result.train_metrics["train/loss"])


class _FixedBatch:
    """A batch source serving the same batch every step."""

    def __init__(self, batch: Mapping[str, np.ndarray]):
        self._batch = dict(batch)

    def __next__(self) -> dict[str, np.ndarray]:
        return dict(self._batch)

    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: Mapping[str, Any]) -> None:
        pass

    def log_scalars(self) -> dict[str, float]:
        return {}


def _fit_one_step(model_dir, model, vocabulary, batch):
    return trainer.fit(
        model=model,
        batch_source=_FixedBatch(batch),
        vocabulary=vocabulary,
        model_dir=str(model_dir),
        train_steps=1,
        batch_size=len(batch["decoder_target_tokens"]),
        feature_lengths=LENGTHS,
        loss_config=losses.LossConfig(normalization="sum"),
        checkpoint_config=checkpointing.CheckpointConfig(async_save=False),
        metrics_config=_quiet_metrics(),
    )


@pytest.mark.parametrize("prefix_lm", [False, True])
def test_packed_and_unpacked_first_steps_agree(tmp_path, vocabulary, prefix_lm):
    model = _tiny_decoder(prefix_lm=prefix_lm)
    examples = pipeline.make_eval_examples(
        TASK, "train", task_feature_lengths=LENGTHS, max_examples=8
    )
    lengths = packing.FeatureLengths.from_mapping(LENGTHS)
    packed = packing.pack_examples(examples, lengths, feature_format=model.feature_format)
    unpacked = packing.pad_examples(examples, lengths, feature_format=model.feature_format)
    assert len(packed["decoder_target_tokens"]) < len(examples)  # really packed
    results = [
        _fit_one_step(tmp_path / name, model, vocabulary, batch)
        for name, batch in (("packed", packed), ("unpacked", unpacked))
    ]
    # The same examples, tokens and loss weights: the same summed first-step loss
    # (z-loss included), and the same gradient, so the same parameters after the step.
    packed_loss, unpacked_loss = (r.train_metrics["train/loss"] for r in results)
    np.testing.assert_allclose(packed_loss, unpacked_loss, rtol=1e-5)
    for a, b in zip(*(jax.tree.leaves(r.state.params) for r in results)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_distillation_rejects_a_decoder_student(tmp_path, vocabulary):
    from flan_jax.distill import train_student

    student = tmp_path / "student"
    checkpoints.write_model_metadata(
        student,
        config=_tiny_decoder().config,
        vocab_path=vocabulary.sentencepiece_model_file,
        extra_ids=0,
    )
    with pytest.raises(ConfigError, match="holds a DecoderConfig model; distillation trains"):
        train_student.train_student(
            store_dir=None,
            student_dir=str(student),
            model_dir=str(tmp_path / "out"),
            train_steps=1,
            loss_config=losses.LossConfig(),
        )
