"""Distillation training modes through the trainer's train step: KL against naive dense math."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.distill import kl_loss, targets
from flan_jax.models import t5
from flan_jax.testing.kernels import dense_logits, naive_sparse_kl, random_top_k
from flan_jax.testing.models import make_tiny_t5_config
from flan_jax.testing.training import TinyRun, make_random_batch, make_tiny_trainer
from flan_jax.training import adafactor, checkpointing, losses

VOCAB, K = 128, 4
OPTIMIZER = adafactor.AdafactorConfig(min_dim_size_to_factor=16)


def _distill_batch(seed: int, *, fallback_fraction: float = 0.3) -> dict[str, np.ndarray]:
    """A random batch whose teacher rows mix top-k rows, one-hot fallbacks and padding."""
    batch = make_random_batch(seed, 4, 12, 8, VOCAB)
    rng = np.random.default_rng(seed + 100)
    ids, logprobs = random_top_k(rng, (4, 8), VOCAB, K, mass=0.9, pad_fraction=0.3)
    one_hot_ids, one_hot_logprobs = targets.one_hot_rows(batch["decoder_target_tokens"].ravel(), K)
    fallback = (rng.random((4, 8)) < fallback_fraction)[..., None]
    ids = np.where(fallback, one_hot_ids.reshape(4, 8, K), ids)
    logprobs = np.where(fallback, one_hot_logprobs.reshape(4, 8, K), logprobs)
    real = batch["decoder_target_tokens"][..., None] > 0
    batch["teacher_ids"] = np.where(real, ids, 0).astype(np.int32)
    batch["teacher_logprobs"] = np.where(real, logprobs, -np.inf).astype(np.float32)
    return batch


def _build(loss: losses.LossConfig, *, lr: float = 1e-2, seed: int = 0):
    """The tiny student's train step (the trainer's own) on one device."""
    run = TinyRun(loss=loss, learning_rate=lr, adafactor_config=OPTIMIZER, seed=seed)
    return make_tiny_trainer(run, jax.devices()[:1])


def _naive_loss(params, batch, *, z_loss: float, missing_mass: str, temperature: float):
    """Weighted-sum KL + z-loss with full [batch, length, vocab] logits."""
    model = t5.EncoderDecoder(make_tiny_t5_config())
    hidden = model.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        return_hidden=True,
    )
    kernel = t5.output_kernel(params)
    kl = naive_sparse_kl(
        hidden,
        kernel,
        jnp.asarray(batch["teacher_ids"]),
        jnp.asarray(batch["teacher_logprobs"]),
        missing_mass=missing_mass,
        temperature=temperature,
    )
    lse = jax.nn.logsumexp(dense_logits(hidden, kernel), axis=-1)
    per_token = kl + z_loss * lse**2
    return jnp.sum(batch["decoder_loss_weights"] * per_token)


def test_train_step_kl_loss_matches_naive_dense():
    loss = losses.LossConfig(kind=kl_loss.SPARSE_KL, z_loss=1e-4, chunk_size=48)
    trainer = _build(loss)
    batch = _distill_batch(0)
    params = jax.tree.map(np.asarray, trainer.state.params)
    expected = _naive_loss(params, batch, z_loss=1e-4, missing_mass="drop", temperature=1.0)
    _, metrics = trainer.step(trainer.state, trainer.global_batch(batch))
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "missing_mass,temperature", [("drop", 1.0), ("renormalize", 2.0), ("residual", 1.0)]
)
def test_kl_loss_and_gradient_match_naive_dense(missing_mass, temperature):
    loss = losses.LossConfig(
        kind=kl_loss.SPARSE_KL,
        z_loss=1e-4,
        chunk_size=48,
        kind_options={"missing_mass": missing_mass, "temperature": temperature},
    )
    params = t5.init_params(make_tiny_t5_config(), jax.random.key(1))
    batch = {k: jnp.asarray(v) for k, v in _distill_batch(1).items()}
    model = t5.T5Model(make_tiny_t5_config())

    def fused(p):
        return losses.compute_loss(
            model.hidden_states(p, batch), model.output_kernel(p), batch, loss
        ).loss

    def naive(p):
        return _naive_loss(
            p, batch, z_loss=1e-4, missing_mass=missing_mass, temperature=temperature
        )

    got_loss, got_grads = jax.jit(jax.value_and_grad(fused))(params)
    want_loss, want_grads = jax.jit(jax.value_and_grad(naive))(params)
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_one_hot_rows_train_exactly_like_cross_entropy():
    batch = _distill_batch(2, fallback_fraction=1.0)
    kl_trainer = _build(losses.LossConfig(kind=kl_loss.SPARSE_KL, chunk_size=48))
    ce_trainer = _build(losses.LossConfig(kind="cross_entropy", chunk_size=48))
    for _ in range(2):
        kl_trainer.state, kl_metrics = kl_trainer.step(
            kl_trainer.state, kl_trainer.global_batch(batch)
        )
        ce_trainer.state, ce_metrics = ce_trainer.step(
            ce_trainer.state, ce_trainer.global_batch(batch)
        )
        for name in ("loss", "z_loss", "accuracy"):
            np.testing.assert_allclose(
                float(kl_metrics[name]), float(ce_metrics[name]), rtol=1e-5, atol=1e-6
            )
    for a, b in zip(
        jax.tree.leaves(kl_trainer.state.params), jax.tree.leaves(ce_trainer.state.params)
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def _teacher_rows(batch, k: int):
    """Top-k rows of a differently seeded tiny model: a real teacher distribution."""
    config = make_tiny_t5_config()
    teacher = t5.init_params(config, jax.random.key(7))
    logits = t5.EncoderDecoder(config).apply(
        {"params": teacher}, batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    )
    logprobs, ids = jax.lax.top_k(jax.nn.log_softmax(logits * 4.0), k)  # sharpened teacher
    real = batch["decoder_target_tokens"][..., None] > 0
    return (
        np.where(real, ids, 0).astype(np.int32),
        np.where(real, logprobs, -np.inf).astype(np.float32),
    )


def test_student_moves_toward_teacher_distribution():
    batch = make_random_batch(3, 4, 12, 8, VOCAB)
    batch["teacher_ids"], batch["teacher_logprobs"] = _teacher_rows(batch, 8)
    loss = losses.LossConfig(
        kind=kl_loss.SPARSE_KL,
        z_loss=0.0,
        chunk_size=48,
        normalization="num_real_target_tokens",
        kind_options={"missing_mass": "renormalize"},
    )
    trainer = _build(loss, lr=3e-2)
    evaluate = _make_mean_kl(batch)
    before = evaluate(jax.tree.map(np.asarray, trainer.state.params))
    state, history = trainer.state, []
    for _ in range(15):
        state, metrics = trainer.step(state, trainer.global_batch(batch))
        history.append(float(metrics["loss"]))
    after = evaluate(jax.tree.map(np.asarray, state.params))
    np.testing.assert_allclose(history[0], before, rtol=1e-5)
    assert after < 0.5 * before, (before, after, history)


def _make_mean_kl(batch):
    real = float(batch["decoder_loss_weights"].sum())

    def mean_kl(params):
        return (
            float(
                _naive_loss(params, batch, z_loss=0.0, missing_mass="renormalize", temperature=1.0)
            )
            / real
        )

    return mean_kl


def _random_hidden_and_kernel():
    rng = np.random.default_rng(0)
    return (
        jnp.asarray(rng.normal(size=(4, 8, 32)), jnp.float32),
        jnp.asarray(rng.normal(size=(32, VOCAB)), jnp.float32),
    )


def test_missing_teacher_features_are_named():
    hidden, kernel = _random_hidden_and_kernel()
    batch = make_random_batch(4, 4, 12, 8, VOCAB)
    with pytest.raises(ValueError, match="teacher_ids"):
        losses.compute_loss(hidden, kernel, batch, losses.LossConfig(kind=kl_loss.SPARSE_KL))


def test_unknown_kind_option_is_named():
    hidden, kernel = _random_hidden_and_kernel()
    loss = losses.LossConfig(kind=kl_loss.SPARSE_KL, kind_options={"temprature": 2.0})
    with pytest.raises(ValueError, match="temprature"):
        losses.compute_loss(hidden, kernel, _distill_batch(5), loss)


def test_distill_gin_builds_a_sparse_kl_run():
    import gin

    import flan_jax.gin_configs

    path = os.path.join(os.path.dirname(flan_jax.gin_configs.__file__), "runs", "distill.gin")
    gin.clear_config()
    try:
        gin.parse_config_file(path)
        loss = gin.get_configurable(losses.LossConfig)()
        train_steps = gin.query_parameter("%TRAIN_STEPS")
        keep = gin.get_configurable(checkpointing.CheckpointConfig)().keep
    finally:
        gin.clear_config()
    assert loss.kind == kl_loss.SPARSE_KL
    assert dict(loss.kind_options) == {"missing_mass": "drop", "temperature": 1.0}
    assert train_steps == 1000 and keep is None  # every step stays for `distill select`
