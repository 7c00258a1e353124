"""Naive dense references for `flan_jax.kernels.fused_loss`, used by tests and benchmarks.

Each function materialises the full f32 logits `[..., V]` and follows the textbook formula,
so it is the ground truth the chunked kernels are compared against (and the "naive" side of
`benchmarks/kernel_bench.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def dense_logits(hidden: jax.Array, kernel: jax.Array) -> jax.Array:
    """Full f32 logits `[..., V]`."""
    return hidden.astype(jnp.float32) @ kernel.astype(jnp.float32)


def naive_cross_entropy(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    *,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """t5x-style (loss incl. z-loss, z-loss, correct) from a dense smoothed target."""
    logits = dense_logits(hidden, kernel)
    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
    entropy = -jnp.sum(jax.scipy.special.xlogy(soft, soft), axis=-1)
    lse = jax.nn.logsumexp(logits, axis=-1)
    nll = -jnp.sum(soft * jax.nn.log_softmax(logits, axis=-1), axis=-1) - entropy
    z_term = z_loss * lse**2
    return nll + z_term, z_term, jnp.argmax(logits, axis=-1) == targets


def _teacher_buckets(
    teacher_logprobs: jax.Array, temperature: float, with_residual: bool
) -> tuple[jax.Array, jax.Array]:
    """Tempered teacher over the top-k (+ the residual bucket): probs `[..., k]`, `[...]`."""
    valid = teacher_logprobs > -jnp.inf
    probs = jnp.where(valid, jnp.exp(teacher_logprobs), 0.0)
    residual = jnp.clip(1.0 - probs.sum(-1), 0.0, 1.0)
    buckets = jnp.concatenate(
        [probs, residual[..., None] if with_residual else jnp.zeros_like(residual)[..., None]],
        axis=-1,
    )
    powered = jnp.where(buckets > 0, buckets ** (1.0 / temperature), 0.0)
    total = powered.sum(-1, keepdims=True)
    tempered = powered / jnp.where(total > 0, total, 1.0)
    return tempered[..., :-1], tempered[..., -1]


def naive_sparse_kl(
    hidden: jax.Array,
    kernel: jax.Array,
    teacher_ids: jax.Array,
    teacher_logprobs: jax.Array,
    *,
    missing_mass: str = "drop",
    temperature: float = 1.0,
) -> jax.Array:
    """Sparse top-k KL computed with dense student log-probs and dense teacher vectors."""
    logq = jax.nn.log_softmax(dense_logits(hidden, kernel) / temperature, axis=-1)
    vocab = logq.shape[-1]
    valid = teacher_logprobs > -jnp.inf
    top_p, residual_p = _teacher_buckets(
        teacher_logprobs, temperature, with_residual=missing_mass != "renormalize"
    )
    # Dense teacher vector over the vocabulary, top-k mass only.
    dense_p = jnp.sum(jax.nn.one_hot(teacher_ids, vocab) * top_p[..., None], axis=-2)
    kl = jnp.sum(jax.scipy.special.xlogy(dense_p, dense_p) - dense_p * logq, axis=-1)
    if missing_mass == "residual":
        in_top = jnp.sum(jax.nn.one_hot(teacher_ids, vocab) * valid[..., None], axis=-2) > 0
        student_residual = jnp.sum(jnp.where(in_top, 0.0, jnp.exp(logq)), axis=-1)
        kl = (
            kl
            + jax.scipy.special.xlogy(residual_p, residual_p)
            - jax.scipy.special.xlogy(residual_p, student_residual)
        )
    return kl


def naive_dense_kl(
    hidden: jax.Array, kernel: jax.Array, teacher_logits: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
    """KL(softmax(teacher / T) || softmax(student / T)) with full logits."""
    logq = jax.nn.log_softmax(dense_logits(hidden, kernel) / temperature, axis=-1)
    logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def random_top_k(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    vocab: int,
    k: int,
    *,
    mass: float = 0.8,
    pad_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random teacher top-k: distinct ids `[*shape, k]` and log-probs summing to `mass`.

    With `pad_fraction` > 0 some trailing entries become padding (`-inf`), and some rows are
    entirely padding.
    """
    ids = np.stack(
        [rng.choice(vocab, size=k, replace=False) for _ in range(int(np.prod(shape)))]
    ).reshape(*shape, k)
    weights = rng.dirichlet(np.ones(k), size=shape) * mass
    logprobs = np.log(weights).astype(np.float32)
    if pad_fraction > 0:
        keep = rng.integers(0, k + 1, size=shape)
        keep = np.where(rng.random(shape) < pad_fraction, keep, k)
        logprobs = np.where(np.arange(k) < keep[..., None], logprobs, -np.inf).astype(np.float32)
    return ids.astype(np.int32), logprobs
