"""AdamW in the train step, and LoRA runs through the one trainer (tiny T5, a few steps).

AdamW is checked against ``optax.adamw`` (with ``optax.clip_by_global_norm`` and the decay
mask written out here) applied by hand to gradients of the same loss. A LoRA run must leave
every base weight bit-identical, keep optimizer state for the adapters only, give the same
logits merged as adapted, resume exactly, and export a normal checkpoint.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
import optax
import pytest

from flan_jax import checkpoints
from flan_jax.cli import main as cli_main
from flan_jax.data.vocabularies import get_vocabulary
from flan_jax.models import interface, lora, t5
from flan_jax.models.interface import Model
from flan_jax.testing import models as testing_models
from flan_jax.testing import training
from flan_jax.testing.models import make_tiny_t5_config
from flan_jax.training import (
    checkpointing,
    losses,
    metrics,
    optimizers,
    partitioning,
    train_state,
    train_step,
    trainer,
)

RUN = training.TinyRun(batch_size=4, num_steps=4)
FEATURE_LENGTHS = {"inputs": RUN.encoder_length, "targets": RUN.decoder_length}
LORA = lora.LoraConfig(
    rank=2, alpha=4.0, dropout_rate=0.1, targets=("attention/(query|value)/", "mlp/wo")
)
ADAMW = optimizers.AdamWConfig(b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
TOL = 1e-5


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    path = testing_models.write_test_sentencepiece(tmp_path_factory.mktemp("spiece"))
    return get_vocabulary(str(path), 0)


def _base_model() -> t5.T5Model:
    return t5.T5Model(make_tiny_t5_config(dropout_rate=0.1))


def _placed(params):
    """An ``initial_params`` callback handing ``params`` to the run (so they are known)."""
    return lambda abstract, shardings: jax.device_put(params, shardings)


def _fit(model_dir, vocabulary, model: Model, params, *, steps, optimizer_config=ADAMW):
    return trainer.fit(
        model=model,
        batch_source=training.SyntheticBatches(RUN),
        vocabulary=vocabulary,
        model_dir=str(model_dir),
        train_steps=steps,
        batch_size=RUN.batch_size,
        feature_lengths=FEATURE_LENGTHS,
        learning_rate=1e-2,
        initial_params=_placed(params),
        optimizer_config=optimizer_config,
        checkpoint_config=checkpointing.CheckpointConfig(period=2, async_save=False),
        metrics_config=metrics.MetricsConfig(log_period=2, tensorboard=False, progress_bar=False),
    )


def _num_floats(tree) -> int:
    return sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(tree) if np.issubdtype(x.dtype, np.floating)
    )


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: Model, params, batch):
    return model.hidden_states(params, batch) @ model.output_kernel(params)


# ------------------------------------------------------------------------------------------
# AdamW
# ------------------------------------------------------------------------------------------
def test_adamw_steps_equal_optax_adamw_with_clipping_by_hand():
    model = t5.T5Model(make_tiny_t5_config())
    params = model.init_params(jax.random.key(0))
    config = optimizers.AdamWConfig(b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.5, clip_norm=0.05)
    learning_rate = 1e-2
    loss_config = losses.LossConfig()
    run = trainer.build_run(
        model,
        learning_rate=learning_rate,
        optimizer_config=config,
        loss_config=loss_config,
        step_config=train_step.TrainStepConfig(donate_state=False, enable_dropout=False),
        partitioning_config=trainer.PartitioningConfig(),
    )
    state = train_state.init_sharded_train_state(params, run.optimizer, run.shardings)

    def loss(p, batch):
        weights, factor = losses.compute_loss_weights(batch, loss_config)
        hidden = model.hidden_states(p, batch)
        stats = losses.compute_loss(
            hidden, model.output_kernel(p), batch, loss_config, weights=weights, factor=factor
        )
        return stats.loss

    by_hand = optax.chain(
        optax.clip_by_global_norm(0.05),
        optax.adamw(
            learning_rate,
            b1=0.8,
            b2=0.95,
            eps=1e-6,
            weight_decay=0.5,
            mask=jax.tree.map(lambda x: x.ndim >= 2, params),  # norms are not decayed
        ),
    )
    expected, opt_state = params, by_hand.init(params)
    for step in range(2):
        batch = RUN.make_batch(step)
        global_batch = partitioning.make_global_batch(batch, run.mesh, run.rules)
        state, step_metrics = run.step_fn(state, global_batch)
        grads = jax.grad(loss)(expected, batch)
        assert float(optax.global_norm(grads)) > 0.05  # clipping is active
        np.testing.assert_allclose(step_metrics["grad_norm"], optax.global_norm(grads), rtol=TOL)
        updates, opt_state = by_hand.update(grads, opt_state, expected)
        expected = optax.apply_updates(expected, updates)
    for (path, got), want in zip(
        jax.tree_util.tree_flatten_with_path(state.params)[0], jax.tree.leaves(expected)
    ):
        name = jax.tree_util.keystr(path)
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL, err_msg=name)


def test_weight_decay_skips_one_dimensional_and_scanned_norm_parameters():
    from jax.sharding import PartitionSpec as P

    assert optimizers.decays_weight(P("embed", "mlp"))
    assert optimizers.decays_weight(P("layers", "embed", "heads", "kv"))
    assert not optimizers.decays_weight(P("embed"))
    assert not optimizers.decays_weight(P("layers", "embed"))  # a scanned norm scale


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("b2", 1.0, "AdamWConfig.b2 must be in [0, 1)"),
        ("clip_norm", 0.0, "AdamWConfig.clip_norm must be > 0 or None"),
        ("weight_decay", -1.0, "AdamWConfig.weight_decay must be >= 0"),
    ],
)
def test_bad_adamw_fields_are_named(field, value, message):
    with pytest.raises(optimizers.ConfigError, match=re.escape(message)):
        optimizers.AdamWConfig(**{field: value})


def test_gin_binds_adamw_through_the_union_annotation():
    import gin

    from flan_jax.cli import gin_flags

    gin.clear_config()
    try:
        gin_flags.parse_and_check_gin(
            ["models/t5_1_1_tiny.gin", "runs/finetune.gin", "runs/lora.gin"],
            ["MODEL_DIR = '/tmp/run'", "MIXTURE_OR_TASK_NAME = 'x'", "LORA_RANK = 4"],
        )
        bound = gin.query_parameter("trainer.train.optimizer_config").scoped_configurable_fn()
        assert bound == optimizers.AdamWConfig(clip_norm=1.0)
        model = gin.query_parameter("trainer.train.model").scoped_configurable_fn()
        assert isinstance(model, lora.LoraModel) and model.lora.rank == 4
        assert isinstance(model.base, t5.T5Model)
        # DROPOUT_RATE reaches the base model through the wrapper.
        changed = interface.replace_config(model, dropout_rate=0.3)
        assert isinstance(changed, lora.LoraModel) and changed.lora == model.lora
        assert changed.config.dropout_rate == 0.3 and changed.base.config.dropout_rate == 0.3
    finally:
        gin.clear_config()


# ------------------------------------------------------------------------------------------
# LoRA runs
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, vocabulary):
    """A 4-step LoRA run (checkpoints at steps 2 and 4) and its initial parameters."""
    model = lora.LoraModel(_base_model(), LORA)
    params = jax.device_get(model.init_params(jax.random.key(0)))
    model_dir = tmp_path_factory.mktemp("lora_run")
    result = _fit(model_dir, vocabulary, model, params, steps=RUN.num_steps)
    return model, params, result


def test_lora_training_leaves_every_base_weight_bit_identical(lora_run):
    model, initial, result = lora_run
    trained = jax.device_get(result.state.params)
    assert jax.tree.structure(trained) == jax.tree.structure(initial)
    for (path, before), after in zip(
        jax.tree_util.tree_flatten_with_path(initial)[0], jax.tree.leaves(trained)
    ):
        name = jax.tree_util.keystr(path)
        if name.endswith(("['lora_a']", "['lora_b']")):
            assert np.abs(after - before).max() > 0, f"{name} did not train"
        else:
            np.testing.assert_array_equal(after, before, err_msg=name)


def test_lora_optimizer_state_covers_the_adapters_only(lora_run):
    model, initial, result = lora_run
    adapters = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(initial)[0]
        if jax.tree_util.keystr(path).endswith(("['lora_a']", "['lora_b']"))
    ]
    num_adapter = sum(x.size for x in adapters)
    num_base = _num_floats(lora.remove_adapters(initial))
    # Encoder: query, value, wo; decoder: self and cross query and value, wo.
    assert len(adapters) == 2 * len(model.kernels) == 2 * 8
    assert _num_floats(result.state.opt_state) == 2 * num_adapter  # Adam's m and v
    # Under a tenth of full fine-tuning's Adam state (rank 2 on a 32-wide model).
    assert _num_floats(result.state.opt_state) < 2 * num_base / 10


def test_lora_merged_weights_give_the_logits_of_adapters_plus_base(lora_run):
    model, _, result = lora_run
    params = jax.device_get(result.state.params)
    batch = RUN.make_batch(99)
    adapted = _logits(model, params, batch)
    merged = _logits(model.base, lora.merge_lora(params), batch)
    unadapted = _logits(model.base, lora.remove_adapters(params), batch)
    assert np.abs(adapted - unadapted).max() > 1e-3
    np.testing.assert_allclose(adapted, merged, rtol=TOL, atol=TOL)


def test_exported_lora_checkpoint_is_a_normal_checkpoint_of_the_merged_weights(
    lora_run, tmp_path, capsys
):
    model, _, result = lora_run
    out = tmp_path / "merged"
    assert cli_main.main(["convert", "--merge-lora", str(result.model_dir), "--out", str(out)]) == 0
    loaded = checkpoints.load_model_checkpoint(out)
    assert loaded.step == RUN.num_steps and loaded.config == model.config
    expected = lora.merge_lora(jax.device_get(result.state.params))
    assert jax.tree.structure(loaded.params) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    capsys.readouterr()
    assert cli_main.main(["convert", "--merge-lora", str(out), "--out", str(tmp_path / "x")]) == 2
    assert "holds no LoRA adapters" in capsys.readouterr().err


def test_lora_run_resumes_like_an_uninterrupted_one(lora_run, tmp_path, vocabulary):
    model, params, uninterrupted = lora_run
    resumed_dir = tmp_path / "resumed"
    _fit(resumed_dir, vocabulary, lora.LoraModel(_base_model(), LORA), params, steps=2)
    # A new model object and a poisoned initial state: everything must come from step 2.
    poisoned = jax.tree.map(lambda x: x + 1.0, params)
    resumed = _fit(resumed_dir, vocabulary, lora.LoraModel(_base_model(), LORA), poisoned, steps=4)
    for name in ("params", "opt_state"):
        got = jax.device_get(getattr(resumed.state, name))
        want = jax.device_get(getattr(uninterrupted.state, name))
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_lora_run_starts_from_a_base_model_checkpoint(tmp_path):
    base = _base_model()
    base_params = jax.device_get(base.init_params(jax.random.key(3)))
    path = testing_models.write_test_sentencepiece(tmp_path / "spiece")
    ckpt = checkpoints.save_model_checkpoint(
        tmp_path / "base", params=base_params, config=base.config, vocab_path=path, extra_ids=0
    )
    model = lora.LoraModel(base, LORA)
    run = trainer.build_run(
        model,
        learning_rate=1e-3,
        optimizer_config=ADAMW,
        loss_config=losses.LossConfig(),
        step_config=train_step.TrainStepConfig(),
        partitioning_config=trainer.PartitioningConfig(),
    )

    def load_base(abstract, shardings):
        return checkpointing.load_initial_params(
            ckpt, model_config=model.config, abstract_params=abstract, shardings=shardings
        )

    initial = model.initial_params_from_base(load_base, seed=0)
    params = jax.device_get(initial(run.abstract_state.params, run.shardings.params))
    assert jax.tree.structure(params) == jax.tree.structure(run.abstract_state.params)
    for got, want in zip(
        jax.tree.leaves(lora.remove_adapters(params)), jax.tree.leaves(base_params)
    ):
        np.testing.assert_array_equal(got, want)
    b_factors = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if jax.tree_util.keystr(path).endswith("['lora_b']")
    ]
    assert b_factors and all(not np.any(b) for b in b_factors)
