"""The chunked kernels equal naive dense implementations in value and gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.kernels import fused_loss
from flan_jax.testing import kernels as ref

VOCAB = 37  # prime, so most chunk sizes leave a ragged last chunk
EMBED = 16
CHUNK_SIZES = (5, 16, 37, 64)  # ragged, ragged, == V, > V
TOL = dict(rtol=1e-5, atol=1e-5)


def _problem(seed: int = 0, shape: tuple[int, ...] = (3, 4), dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=shape + (EMBED,)) * 0.5, dtype)
    kernel = jnp.asarray(rng.normal(size=(EMBED, VOCAB)) * 0.5, dtype)
    weights = jnp.asarray(rng.normal(size=shape), jnp.float32)  # mixes per-token losses
    return rng, hidden, kernel, weights


def _assert_value_and_grads(fused_fn, naive_fn, hidden, kernel, weights):
    def total(fn):
        return lambda h, w: jnp.sum(fn(h, w) * weights)

    fused_val, fused_grads = jax.value_and_grad(total(fused_fn), argnums=(0, 1))(hidden, kernel)
    naive_val, naive_grads = jax.value_and_grad(total(naive_fn), argnums=(0, 1))(hidden, kernel)
    np.testing.assert_allclose(fused_fn(hidden, kernel), naive_fn(hidden, kernel), **TOL)
    np.testing.assert_allclose(fused_val, naive_val, **TOL)
    for fused_g, naive_g in zip(fused_grads, naive_grads):
        np.testing.assert_allclose(fused_g, naive_g, **TOL)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_log_softmax(chunk_size, temperature):
    rng, hidden, kernel, weights = _problem()
    ids = jnp.asarray(rng.integers(0, VOCAB, size=(3, 4, 6)))
    mix = jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32)

    def fused(h, w):
        out = fused_loss.token_logprobs_from_hidden(
            h, w, ids, temperature=temperature, chunk_size=chunk_size
        )
        return (out * mix).sum(-1)

    def naive(h, w):
        logq = jax.nn.log_softmax(ref.dense_logits(h, w) / temperature, axis=-1)
        return (jnp.take_along_axis(logq, ids, axis=-1) * mix).sum(-1)

    _assert_value_and_grads(fused, naive, hidden, kernel, weights)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("z_loss,label_smoothing", [(0.0, 0.0), (1e-4, 0.0), (0.1, 0.1)])
def test_cross_entropy_matches_dense(chunk_size, z_loss, label_smoothing):
    rng, hidden, kernel, weights = _problem(seed=1)
    targets = jnp.asarray(rng.integers(0, VOCAB, size=(3, 4)))
    options = dict(z_loss=z_loss, label_smoothing=label_smoothing)

    def fused(h, w):
        return fused_loss.cross_entropy_from_hidden(
            h, w, targets, chunk_size=chunk_size, **options
        ).loss

    def naive(h, w):
        return ref.naive_cross_entropy(h, w, targets, **options)[0]

    _assert_value_and_grads(fused, naive, hidden, kernel, weights)
    out = fused_loss.cross_entropy_from_hidden(
        hidden, kernel, targets, chunk_size=chunk_size, **options
    )
    _, naive_z, naive_correct = ref.naive_cross_entropy(hidden, kernel, targets, **options)
    np.testing.assert_allclose(out.z_loss, naive_z, **TOL)
    np.testing.assert_array_equal(out.correct, naive_correct)


def test_cross_entropy_correct_counts_argmax_across_chunks():
    _, hidden, kernel, _ = _problem(seed=2, shape=(64,))
    argmax = jnp.argmax(ref.dense_logits(hidden, kernel), axis=-1)
    for chunk_size in CHUNK_SIZES:
        out = fused_loss.cross_entropy_from_hidden(hidden, kernel, argmax, chunk_size=chunk_size)
        assert bool(out.correct.all())
        shifted = fused_loss.cross_entropy_from_hidden(
            hidden, kernel, (argmax + 1) % VOCAB, chunk_size=chunk_size
        )
        assert not bool(shifted.correct.any())


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("missing_mass", fused_loss.MISSING_MASS_MODES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_kl_matches_dense(chunk_size, missing_mass, temperature):
    rng, hidden, kernel, weights = _problem(seed=3)
    ids, logprobs = ref.random_top_k(rng, (3, 4), VOCAB, k=5, mass=0.8, pad_fraction=0.3)
    options = dict(missing_mass=missing_mass, temperature=temperature)

    def fused(h, w):
        return fused_loss.sparse_kl_from_hidden(
            h, w, jnp.asarray(ids), jnp.asarray(logprobs), chunk_size=chunk_size, **options
        )

    def naive(h, w):
        return ref.naive_sparse_kl(h, w, jnp.asarray(ids), jnp.asarray(logprobs), **options)

    _assert_value_and_grads(fused, naive, hidden, kernel, weights)


def test_sparse_kl_drop_is_paper_weighted_cross_entropy_plus_constant():
    rng, hidden, kernel, _ = _problem(seed=4)
    ids, logprobs = ref.random_top_k(rng, (3, 4), VOCAB, k=5, mass=0.7)
    kl = fused_loss.sparse_kl_from_hidden(hidden, kernel, ids, logprobs, chunk_size=8)
    logq = jax.nn.log_softmax(ref.dense_logits(hidden, kernel), axis=-1)
    p = np.exp(logprobs)
    weighted_ce = -(p * np.take_along_axis(np.asarray(logq), ids, axis=-1)).sum(-1)
    np.testing.assert_allclose(kl, weighted_ce + (p * logprobs).sum(-1), **TOL)


def test_sparse_kl_renormalize_equals_dense_kl_of_renormalized_top_k():
    rng, hidden, kernel, _ = _problem(seed=5)
    ids, logprobs = ref.random_top_k(rng, (3, 4), VOCAB, k=5, mass=0.6)
    kl = fused_loss.sparse_kl_from_hidden(
        hidden, kernel, ids, logprobs, missing_mass="renormalize", chunk_size=16
    )
    p = np.exp(logprobs)
    dense_teacher = np.zeros((3, 4, VOCAB), np.float32)
    np.put_along_axis(dense_teacher, ids, p / p.sum(-1, keepdims=True), axis=-1)
    teacher_logits = np.log(np.maximum(dense_teacher, 1e-30))  # ~zero probability elsewhere
    dense = fused_loss.dense_kl_from_hidden(
        hidden, kernel, jnp.asarray(teacher_logits), chunk_size=16
    )
    np.testing.assert_allclose(kl, dense, **TOL)


def test_sparse_kl_residual_bucket_conserves_probability():
    """Residual KL == full KL when the teacher spreads its residual like the student does.

    By the chain rule of KL, KL(p || q) splits into the (k + 1)-bucket KL plus a within-residual
    term that vanishes when p restricted to the residual is proportional to q; that identity
    holds only if both bucket distributions sum to one.
    """
    rng, hidden, kernel, _ = _problem(seed=6)
    ids, logprobs = ref.random_top_k(rng, (3, 4), VOCAB, k=4, mass=0.75)
    kl = fused_loss.sparse_kl_from_hidden(
        hidden, kernel, ids, logprobs, missing_mass="residual", chunk_size=5
    )
    q = np.asarray(jax.nn.softmax(ref.dense_logits(hidden, kernel), axis=-1), np.float64)
    in_top = np.zeros_like(q, bool)
    np.put_along_axis(in_top, ids, True, axis=-1)
    rest_q = np.where(in_top, 0.0, q)
    teacher = rest_q / rest_q.sum(-1, keepdims=True) * 0.25
    np.put_along_axis(teacher, ids, np.exp(logprobs.astype(np.float64)), axis=-1)
    np.testing.assert_allclose(teacher.sum(-1), 1.0, rtol=1e-6)
    full_kl = (teacher * (np.log(teacher) - np.log(q))).sum(-1)
    np.testing.assert_allclose(kl, full_kl, **TOL)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_tempered_teacher_buckets_sum_to_one(temperature):
    rng = np.random.default_rng(7)
    _, logprobs = ref.random_top_k(rng, (10,), 50, k=5, mass=0.9, pad_fraction=0.5)
    valid = jnp.asarray(logprobs) > -jnp.inf
    for mode, has_residual in (("residual", True), ("renormalize", False)):
        top, residual = fused_loss._tempered_teacher(
            jnp.asarray(logprobs), valid, temperature, mode
        )
        total = jnp.where(valid, jnp.exp(top), 0.0).sum(-1) + jnp.exp(residual)
        rows = valid.any(-1) | has_residual
        np.testing.assert_allclose(np.asarray(total)[rows], 1.0, **TOL)


def test_sparse_kl_all_padding_rows_have_zero_loss_and_finite_grads():
    rng, hidden, kernel, _ = _problem(seed=8, shape=(4,))
    ids = np.zeros((4, 3), np.int32)
    logprobs = np.full((4, 3), -np.inf, np.float32)
    for mode in fused_loss.MISSING_MASS_MODES:

        def total(h, w, mode=mode):
            return fused_loss.sparse_kl_from_hidden(
                h, w, ids, logprobs, missing_mass=mode, chunk_size=8
            ).sum()

        value, grads = jax.value_and_grad(total, argnums=(0, 1))(hidden, kernel)
        assert float(value) == 0.0, mode
        for grad in grads:
            assert np.all(np.asarray(grad) == 0.0), mode


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_dense_kl_matches_dense(chunk_size, temperature):
    rng, hidden, kernel, weights = _problem(seed=9)
    teacher = jnp.asarray(rng.normal(size=(3, 4, VOCAB)) * 2.0, jnp.float32)

    def fused(h, w):
        return fused_loss.dense_kl_from_hidden(
            h, w, teacher, temperature=temperature, chunk_size=chunk_size
        )

    def naive(h, w):
        return ref.naive_dense_kl(h, w, teacher, temperature=temperature)

    _assert_value_and_grads(fused, naive, hidden, kernel, weights)


def test_bfloat16_inputs_compute_in_float32_and_return_input_dtype_grads():
    rng, hidden, kernel, weights = _problem(seed=10, dtype=jnp.bfloat16)
    targets = jnp.asarray(rng.integers(0, VOCAB, size=(3, 4)))

    def fused(h, w):
        return fused_loss.cross_entropy_from_hidden(h, w, targets, z_loss=1e-4, chunk_size=8).loss

    def naive(h, w):
        return ref.naive_cross_entropy(h, w, targets, z_loss=1e-4)[0]

    np.testing.assert_allclose(fused(hidden, kernel), naive(hidden, kernel), **TOL)
    grads = jax.grad(lambda h, w: jnp.sum(fused(h, w) * weights), argnums=(0, 1))(hidden, kernel)
    naive_grads = jax.grad(
        lambda h, w: jnp.sum(naive(h.astype(jnp.float32), w.astype(jnp.float32)) * weights),
        argnums=(0, 1),
    )(hidden, kernel)
    for grad, naive_grad in zip(grads, naive_grads):
        assert grad.dtype == jnp.bfloat16
        # Both sides round one f32 gradient to bf16; at most one bf16 ulp apart.
        np.testing.assert_allclose(
            np.asarray(grad, np.float32),
            np.asarray(naive_grad.astype(jnp.bfloat16), np.float32),
            rtol=2**-7,
            atol=1e-5,
        )


def test_jit_with_leading_dims_matches_eager():
    rng, hidden, kernel, _ = _problem(seed=11, shape=(2, 3, 5))
    targets = jnp.asarray(rng.integers(0, VOCAB, size=(2, 3, 5)))
    run = jax.jit(
        lambda h, w: fused_loss.cross_entropy_from_hidden(h, w, targets, chunk_size=16).loss
    )
    np.testing.assert_allclose(
        run(hidden, kernel), ref.naive_cross_entropy(hidden, kernel, targets)[0], **TOL
    )


def test_kernels_never_allocate_full_logits():
    """The compiled forward+backward temp memory stays far below one [tokens, V] f32 array."""
    tokens, vocab, embed, chunk = 512, 8192, 32, 512
    hidden = jnp.zeros((tokens, embed), jnp.float32)
    kernel = jnp.zeros((embed, vocab), jnp.float32)
    targets = jnp.zeros((tokens,), jnp.int32)

    def fused(h, w):
        return fused_loss.cross_entropy_from_hidden(h, w, targets, chunk_size=chunk).loss.sum()

    def naive(h, w):
        return ref.naive_cross_entropy(h, w, targets)[0].sum()

    def temp_bytes(fn):
        compiled = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(hidden, kernel).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    full_logits = tokens * vocab * 4
    assert temp_bytes(naive) >= full_logits  # the reference does materialise them
    assert temp_bytes(fused) < full_logits / 4


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda h, w, t: fused_loss.cross_entropy_from_hidden(h, w.T, t), "last dimension"),
        (lambda h, w, t: fused_loss.cross_entropy_from_hidden(h, w, t, chunk_size=0), "chunk_size"),
        (
            lambda h, w, t: fused_loss.cross_entropy_from_hidden(h, w, t, label_smoothing=1.0),
            "label_smoothing",
        ),
        (lambda h, w, t: fused_loss.cross_entropy_from_hidden(h, w, t[:, :2]), "targets shape"),
        (
            lambda h, w, t: fused_loss.sparse_kl_from_hidden(
                h, w, t[..., None], t[..., None] * 0.0, missing_mass="ignore"
            ),
            "missing_mass",
        ),
        (
            lambda h, w, t: fused_loss.sparse_kl_from_hidden(
                h, w, t[..., None], t[..., None] * 0.0, temperature=0.0
            ),
            "temperature",
        ),
        (lambda h, w, t: fused_loss.dense_kl_from_hidden(h, w, h), "teacher_logits shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    rng, hidden, kernel, _ = _problem()
    targets = jnp.asarray(rng.integers(0, VOCAB, size=(3, 4)))
    with pytest.raises(ValueError, match=message):
        call(hidden, kernel, targets)


def test_vocab_sharding_checks_axes_and_one_shard_is_the_plain_path():
    """Several shards are tested on 8 devices in test_fused_loss_sharding.py."""
    mesh = jax.make_mesh((1,), ("model",), devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="subset of the mesh axes"):
        fused_loss.VocabSharding(mesh=mesh, axes=("vocab",))
    one_shard = fused_loss.VocabSharding(mesh=mesh, axes="model")
    assert one_shard.axes == ("model",) and one_shard.num_shards == 1
    rng, hidden, kernel, _ = _problem()
    targets = jnp.asarray(rng.integers(0, VOCAB, size=(3, 4)))
    plain = fused_loss.cross_entropy_from_hidden(hidden, kernel, targets, chunk_size=5)
    on_mesh = fused_loss.cross_entropy_from_hidden(
        hidden, kernel, targets, chunk_size=5, vocab_sharding=one_shard
    )
    for a, b in zip(plain, on_mesh):
        np.testing.assert_array_equal(a, b)
