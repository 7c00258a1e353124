"""The training loss against a NumPy reference over explicit logits, for every normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.training import losses, partitioning

RTOL = 1e-4  # composite: chunked log-softmax + weighting + normalisation, f32 vs f64
VOCAB, EMBED = 50, 12

# Row 0 packs two sequences (3 and 2 target tokens) then padding; row 1 is one sequence of
# 4 tokens; row 2 is one short sequence.
SEGMENTS = np.array(
    [
        [1, 1, 1, 2, 2, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0, 0],
    ]
)


def _batch(seed=0, packed=True):
    rng = np.random.default_rng(seed)
    targets = rng.integers(1, VOCAB, size=SEGMENTS.shape) * (SEGMENTS > 0)
    batch = {
        "decoder_target_tokens": targets.astype(np.int32),
        "decoder_loss_weights": (SEGMENTS > 0).astype(np.float32),
    }
    if packed:
        batch["decoder_segment_ids"] = SEGMENTS.astype(np.int32)
    hidden = rng.normal(size=SEGMENTS.shape + (EMBED,)).astype(np.float32)
    kernel = rng.normal(size=(EMBED, VOCAB)).astype(np.float32)
    return batch, hidden, kernel


def _reference_token_losses(hidden, kernel, targets, z_loss, smoothing):
    logits = hidden.astype(np.float64) @ kernel.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    logp = logits - lse[..., None]
    on = 1.0 - smoothing
    off = smoothing / (VOCAB - 1)
    soft = np.full(logits.shape, off)
    np.put_along_axis(soft, targets[..., None], on, axis=-1)
    entropy = -(on * np.log(on) + (VOCAB - 1) * off * np.log(off + 1e-20)) if smoothing else 0.0
    ce = -(soft * logp).sum(-1) - entropy
    return ce + z_loss * lse**2, logits.argmax(-1) == targets


def _reference_loss(batch, hidden, kernel, config):
    seg = batch.get("decoder_segment_ids", (batch["decoder_loss_weights"] > 0).astype(int))
    w = batch["decoder_loss_weights"].astype(np.float64)
    per_token, _ = _reference_token_losses(
        hidden, kernel, batch["decoder_target_tokens"], config.z_loss, config.label_smoothing
    )
    if config.normalization == "average_per_sequence":
        # Mean loss of each (row, segment), averaged over all sequences.
        means = [
            per_token[r][seg[r] == s].mean()
            for r in range(seg.shape[0])
            for s in np.unique(seg[r])
            if s
        ]
        return np.mean(means)
    total = (w * per_token).sum()
    return (
        total
        / {
            "sum": 1.0,
            "num_real_target_tokens": w.sum(),
            "num_total_target_tokens": w.size,
            "constant": config.normalizing_constant,
        }[config.normalization]
    )


@pytest.mark.parametrize("normalization", losses.NORMALIZATIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_matches_reference(normalization, label_smoothing):
    batch, hidden, kernel = _batch()
    config = losses.LossConfig(
        z_loss=1e-2,
        label_smoothing=label_smoothing,
        normalization=normalization,
        normalizing_constant=7.0,
        chunk_size=16,
    )
    stats = losses.compute_loss(jnp.asarray(hidden), jnp.asarray(kernel), batch, config)
    expected = _reference_loss(batch, hidden, kernel, config)
    np.testing.assert_allclose(stats.loss, expected, rtol=RTOL)


def test_average_per_sequence_unpacked_rows_are_sequences():
    batch, hidden, kernel = _batch(packed=False)
    # Without segment ids row 0 is one sequence of 5 tokens.
    config = losses.LossConfig(z_loss=0.0, normalization="average_per_sequence", chunk_size=16)
    weights, factor = losses.compute_loss_weights(batch, config)
    np.testing.assert_allclose(weights[0], [0.2] * 5 + [0.0], rtol=1e-6)
    assert float(factor) == 3.0
    stats = losses.compute_loss(jnp.asarray(hidden), jnp.asarray(kernel), batch, config)
    expected = _reference_loss(batch, hidden, kernel, config)
    np.testing.assert_allclose(stats.loss, expected, rtol=RTOL)


def test_statistics_and_sequence_count():
    batch, hidden, kernel = _batch()
    config = losses.LossConfig(z_loss=1e-2, chunk_size=16)
    stats = losses.compute_loss(jnp.asarray(hidden), jnp.asarray(kernel), batch, config)
    per_token, correct = _reference_token_losses(
        hidden, kernel, batch["decoder_target_tokens"], 0.0, 0.0
    )
    del per_token
    real = SEGMENTS > 0
    assert float(stats.num_real_target_tokens) == real.sum()
    assert float(stats.num_correct) == (correct & real).sum()
    assert float(losses.count_sequences(batch)) == 4.0
    unpacked = {k: v for k, v in batch.items() if k != "decoder_segment_ids"}
    assert float(losses.count_sequences(unpacked)) == 3.0


@pytest.mark.parametrize("normalization", losses.NORMALIZATIONS)
def test_microbatch_losses_add_up_to_the_batch_loss(normalization):
    """With the whole batch's weights and factor, row subsets' losses sum to the total."""
    batch, hidden, kernel = _batch()
    config = losses.LossConfig(normalization=normalization, normalizing_constant=3.0, chunk_size=16)
    weights, factor = losses.compute_loss_weights(batch, config)
    whole = losses.compute_loss(jnp.asarray(hidden), jnp.asarray(kernel), batch, config)
    parts = 0.0
    for rows in ([0], [1, 2]):
        sub = {k: v[rows] for k, v in batch.items()}
        parts += losses.compute_loss(
            jnp.asarray(hidden[rows]),
            jnp.asarray(kernel),
            sub,
            config,
            weights=weights[np.asarray(rows)],
            factor=factor,
        ).loss
    np.testing.assert_allclose(parts, whole.loss, rtol=1e-5)


def test_bad_config_and_unknown_kind_are_clear_errors():
    with pytest.raises(ValueError, match="normalization must be one of"):
        losses.LossConfig(normalization="mean")
    with pytest.raises(ValueError, match="normalizing_constant must be > 0"):
        losses.LossConfig(normalization="constant")
    with pytest.raises(ValueError, match="did you mean"):
        losses.get_token_loss("cross_entropi")


def test_registered_kind_is_used():
    """A new kind (as distillation adds) plugs in through the registry and shares weighting."""

    def constant_loss(hidden, kernel, batch, config, *, vocab_sharding):
        ones = jnp.ones(batch["decoder_target_tokens"].shape)
        return losses.TokenLosses(ones * config.kind_options["value"], 0 * ones, ones > 0)

    losses.register_token_loss("test_constant", constant_loss)
    batch, hidden, kernel = _batch()
    config = losses.LossConfig(
        kind="test_constant", normalization="num_real_target_tokens", kind_options={"value": 2.5}
    )
    stats = losses.compute_loss(jnp.asarray(hidden), jnp.asarray(kernel), batch, config)
    np.testing.assert_allclose(stats.loss, 2.5, rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        losses.register_token_loss("test_constant", lambda *a: None)


def test_vocab_sharding_follows_the_rules_and_needs_mesh_and_rules_together():
    """Sharded values are tested on 8 devices in tests/kernels/test_fused_loss_sharding.py."""
    rules = partitioning.get_logical_axis_rules("1d")
    one_device = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices()[:1])
    assert losses.get_vocab_sharding(one_device, rules) is None  # a model axis of size 1
    batch, hidden, kernel = _batch()
    config = losses.LossConfig(chunk_size=16)
    plain = losses.compute_loss(jnp.asarray(hidden), jnp.asarray(kernel), batch, config)
    on_mesh = losses.compute_loss(
        jnp.asarray(hidden), jnp.asarray(kernel), batch, config, mesh=one_device, rules=rules
    )
    np.testing.assert_array_equal(on_mesh.loss, plain.loss)
    with pytest.raises(ValueError, match="needs both mesh and rules"):
        losses.compute_loss(
            jnp.asarray(hidden), jnp.asarray(kernel), batch, config, mesh=one_device
        )
