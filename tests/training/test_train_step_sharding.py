"""The train step: sharded equals single-device (8 fake CPU devices, f32), and its guards.

The sharded runs happen in a subprocess because the fake device count is fixed when JAX is
imported. Dropout is on, so the test also checks that dropout masks do not depend on the
mesh; one sharded run accumulates gradients over microbatches. The in-process tests check
the metrics against a direct computation, the non-finite guard, bf16 compute, activation
constraints and the batch checks.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flan_jax.models import t5
from flan_jax.testing import training
from flan_jax.testing.models import make_tiny_t5_config
from flan_jax.training import losses, train_step

SCRIPT = str(pathlib.Path(__file__).with_name("run_sharded_training.py"))

# name: (mesh spec "DATA,FSDP,MODEL,RULES,MICROBATCHES,DROPOUT", reference run name)
RUNS = {
    "single": ("1,1,1,1d,1,0.1", None),
    "data8": ("8,1,1,1d,1,0.1", "single"),
    "data4_model2": ("4,1,2,1d,1,0.1", "single"),
    "data2_fsdp2_model2": ("2,2,2,2d,1,0.1", "single"),
    # Dropout masks depend on the microbatch split, so accumulation is compared without.
    "single_no_dropout": ("1,1,1,1d,1,0", None),
    "data4_model2_microbatches2": ("4,1,2,1d,2,0", "single_no_dropout"),
}


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    specs = [f"{name}={spec}" for name, (spec, _) in RUNS.items()]
    process = training.start_python_script(
        SCRIPT, ["--out", str(out), "--steps", "5", *specs], num_cpu_devices=8
    )
    training.wait_for_scripts([process], timeout=540)
    return {name: dict(np.load(out / f"{name}.npz")) for name in RUNS}


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [name for name, (_, ref) in RUNS.items() if ref])
def test_sharded_training_matches_single_device(sharded_results, mesh):
    reference = sharded_results[RUNS[mesh][1]]
    assert reference["loss"].shape == (5,)
    assert np.all(np.isfinite(reference["loss"]))
    assert reference["loss"][-1] != reference["loss"][0]  # the runs actually train
    training.assert_results_match(sharded_results[mesh], reference, rtol=1e-5)


# In-process checks of the train step itself (one CPU device).

RUN = training.TinyRun(batch_size=4)


def _trainer(on_nonfinite="raise", **run_changes):
    run = dataclasses.replace(RUN, **run_changes)
    config = train_step.TrainStepConfig(
        on_nonfinite=on_nonfinite,
        donate_state=False,
        constrain_activations=run.constrain_activations,
    )
    return training.make_tiny_trainer(run, jax.devices()[:1], config), run


def _nan_batch(run):
    batch = run.make_batch(0)
    batch["decoder_loss_weights"] = batch["decoder_loss_weights"].copy()
    batch["decoder_loss_weights"][0, 0] = np.nan
    return batch


@pytest.fixture(scope="module")
def skip_trainer():
    return _trainer(on_nonfinite="skip")


def test_step_metrics_match_a_direct_computation(skip_trainer):
    trainer, run = skip_trainer
    batch = run.make_batch(0)
    _, metrics = trainer.step(trainer.state, trainer.global_batch(batch))
    model = t5.EncoderDecoder(make_tiny_t5_config())

    def loss_fn(params):
        hidden = model.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            return_hidden=True,
        )
        return losses.compute_loss(hidden, t5.output_kernel(params), batch, run.loss).loss

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(trainer.state.params)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-4)
    real = batch["decoder_loss_weights"] > 0
    assert float(metrics["num_real_target_tokens"]) == real.sum()
    assert float(metrics["num_sequences"]) == run.batch_size
    np.testing.assert_allclose(metrics["learning_rate"], run.learning_rate, rtol=1e-6)
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0
    assert int(metrics["nonfinite"]) == 0


def test_nonfinite_step_is_skipped_and_counted(skip_trainer):
    trainer, run = skip_trainer
    skipped, metrics = trainer.step(trainer.state, trainer.global_batch(_nan_batch(run)))
    assert int(metrics["nonfinite"]) == 1 and int(skipped.num_skipped_steps) == 1
    assert int(skipped.step) == 1
    for new, old in zip(jax.tree.leaves(skipped.params), jax.tree.leaves(trainer.state.params)):
        np.testing.assert_array_equal(new, old)
    # The skipped step leaves no trace: a good step after it equals the same good step alone.
    good = trainer.global_batch(run.make_batch(1))
    after_skip, _ = trainer.step(skipped, good)
    alone, _ = trainer.step(trainer.state, good)
    for a, b in zip(jax.tree.leaves(after_skip.params), jax.tree.leaves(alone.params)):
        np.testing.assert_array_equal(a, b)
    assert int(after_skip.num_skipped_steps) == 1


def test_bfloat16_compute_tracks_float32(skip_trainer):
    f32, run = skip_trainer
    bf16, _ = _trainer(model_overrides=(("dtype", "bfloat16"),))
    batch = run.make_batch(0)
    _, m32 = f32.step(f32.state, f32.global_batch(batch))
    _, m16 = bf16.step(bf16.state, bf16.global_batch(batch))
    assert bf16.state.params["token_embedder"]["embedding"].dtype == jnp.float32
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=2e-2)  # bf16 activations


def test_batch_rows_must_split_into_microbatches(skip_trainer):
    trainer, run = skip_trainer
    step = train_step.make_train_step(
        model=None,
        optimizer=None,
        loss_config=run.loss,
        mesh=trainer.mesh,
        rules=trainer.rules,
        state_shardings=trainer.step.state_shardings,
        config=train_step.TrainStepConfig(num_microbatches=3),
    )
    with pytest.raises(ValueError, match=r"has 4 rows.*num_microbatches \(3\)"):
        step(trainer.state, trainer.global_batch(run.make_batch(0)))


def test_activation_constraints_do_not_change_the_step(skip_trainer):
    trainer, run = skip_trainer
    assert run.constrain_activations
    unconstrained, _ = _trainer(constrain_activations=False)
    batch = run.make_batch(0)
    _, expected = trainer.step(trainer.state, trainer.global_batch(batch))
    _, metrics = unconstrained.step(unconstrained.state, unconstrained.global_batch(batch))
    np.testing.assert_allclose(metrics["loss"], expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], expected["grad_norm"], rtol=1e-5)
