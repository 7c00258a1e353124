"""Losses computed from final hidden states without materialising full vocabulary logits.

A T5 output layer turns hidden states `[tokens, d]` into logits `[tokens, V]` with V = 32,128.
Materialising those logits in f32 (and their softmax, and their gradient) dominates the memory
of a training step. Every loss here instead walks the vocabulary in chunks of `chunk_size`
columns of the output kernel `[d, V]`:

* the forward pass keeps an online logsumexp (running max and rescaled sum), the logits at a
  few requested ids, the sum of logits, the running argmax and, for a dense teacher, the
  teacher-weighted sums: all of them `[tokens]` or `[tokens, k]`;
* the backward pass (a `jax.custom_vjp`) recomputes each chunk's logits from the hidden states
  and the kernel, forms that chunk's logit gradient and immediately contracts it into the
  gradients of the hidden states and of the kernel.

So the largest temporary is one `[tokens, chunk_size]` f32 block, in both directions. Chunks
need not divide the vocabulary: the last chunk is shifted left to end at V and the columns it
shares with the previous chunk are masked out, so the kernel is never padded or copied.

Worked example (V = 10, chunk_size = 4): chunks start at columns 0, 4 and 6; the third chunk
covers columns 6..9 but only 8 and 9 are "fresh", so columns 6 and 7 are counted once.

All losses come from one statistics primitive (`_chunked_stats`) and plain JAX arithmetic on
its small outputs, so autodiff through the arithmetic plus the primitive's custom VJP gives
exact gradients. Math is f32 whatever the dtype of `hidden` and `kernel`; gradients are
returned in the input dtypes.

When the kernel's vocabulary is split over mesh axes (`VocabSharding`), a `dynamic_slice`
over the whole vocabulary would make XLA all-gather the `[d, V]` kernel. Instead the same
primitive runs per shard inside `jax.shard_map` on that shard's `[d, V / shards]` columns,
and the per-token statistics are combined across shards (`_combine_shard_stats`): a
logsumexp of the shards' logsumexps, the target logit from the shard that owns the id, the
argmax from the shard with the largest logit. The backward pass stays per shard as well.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

DEFAULT_CHUNK_SIZE = 4096
MISSING_MASS_MODES = ("drop", "renormalize", "residual")
MissingMass = Literal["drop", "renormalize", "residual"]


class CrossEntropyOutput(NamedTuple):
    """Per-token cross-entropy results, unweighted, all shaped like `targets`.

    Attributes:
      loss: cross-entropy against the (optionally smoothed) target plus the z-loss term.
      z_loss: the z-loss term alone (`z_loss * logsumexp(logits)**2`), for logging.
      correct: whether the argmax of the logits equals the target (bool).
    """

    loss: jax.Array
    z_loss: jax.Array
    correct: jax.Array


@dataclasses.dataclass(frozen=True)
class _ChunkPlan:
    """Static configuration of one chunked pass over the vocabulary."""

    vocab_size: int
    chunk_size: int
    inv_temperature: float

    @property
    def num_chunks(self) -> int:
        return -(-self.vocab_size // self.chunk_size)


class _ChunkStats(NamedTuple):
    """Outputs of the chunked pass, per token (`[n]` unless stated)."""

    lse: jax.Array  # logsumexp(logits * inv_temperature)
    gathered: jax.Array  # [n, k] raw logits at the requested ids
    logit_sum: jax.Array  # sum of raw logits over the vocabulary
    argmax: jax.Array  # int32 argmax of the raw logits (first index on ties)
    max_logit: jax.Array  # the raw logit at argmax; no gradient (it only ranks vocab shards)
    teacher_cross: jax.Array  # sum_v p_teacher(v) * raw logit(v); 0 without a teacher
    teacher_neg_entropy: jax.Array  # sum_v p_teacher(v) * log p_teacher(v); 0 without a teacher


def _chunk_columns(plan: _ChunkPlan, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns the chunk's first column and a `[chunk]` mask of columns not seen before."""
    start = jnp.minimum(index * plan.chunk_size, plan.vocab_size - plan.chunk_size)
    columns = start + jnp.arange(plan.chunk_size)
    return start, columns >= index * plan.chunk_size


def _chunk_logits(hidden32: jax.Array, kernel: jax.Array, start: jax.Array, plan: _ChunkPlan):
    """f32 logits `[n, chunk]` of one vocabulary chunk."""
    block = jax.lax.dynamic_slice_in_dim(kernel, start, plan.chunk_size, axis=1)
    return hidden32 @ block.astype(jnp.float32)


def _ids_in_chunk(ids: jax.Array, start: jax.Array, index: jax.Array, plan: _ChunkPlan):
    """Local column of each id in the chunk and whether the chunk owns that id."""
    owned = (ids >= index * plan.chunk_size) & (ids < start + plan.chunk_size)
    return jnp.clip(ids - start, 0, plan.chunk_size - 1), owned


def _teacher_probs(teacher, teacher_lse, start, fresh, plan: _ChunkPlan):
    """Teacher log-probs and probs `[n, chunk]` (zero prob outside fresh columns)."""
    block = jax.lax.dynamic_slice_in_dim(teacher, start, plan.chunk_size, axis=1)
    logp = block.astype(jnp.float32) * plan.inv_temperature - teacher_lse[:, None]
    logp = jnp.where(fresh, logp, 0.0)
    return logp, jnp.where(fresh, jnp.exp(logp), 0.0)


def _forward_stats(plan: _ChunkPlan, hidden, kernel, ids, teacher, teacher_lse) -> _ChunkStats:
    n = hidden.shape[0]
    hidden32 = hidden.astype(jnp.float32)

    def body(carry, index):
        run_max, run_sum, gathered, logit_sum, best, best_idx, cross, neg_ent = carry
        start, fresh = _chunk_columns(plan, index)
        logits = _chunk_logits(hidden32, kernel, start, plan)  # [n, chunk]
        scaled = jnp.where(fresh, logits * plan.inv_temperature, -jnp.inf)
        new_max = jnp.maximum(run_max, scaled.max(axis=-1))
        run_sum = run_sum * jnp.exp(run_max - new_max) + jnp.exp(scaled - new_max[:, None]).sum(
            axis=-1
        )
        local, owned = _ids_in_chunk(ids, start, index, plan)
        gathered = gathered + jnp.where(owned, jnp.take_along_axis(logits, local, axis=-1), 0.0)
        logit_sum = logit_sum + jnp.where(fresh, logits, 0.0).sum(axis=-1)
        masked = jnp.where(fresh, logits, -jnp.inf)
        chunk_best = masked.max(axis=-1)
        chunk_idx = jnp.argmax(masked, axis=-1).astype(jnp.int32) + start
        improved = chunk_best > best  # strict: earlier chunks win ties, like jnp.argmax
        best, best_idx = (
            jnp.where(improved, chunk_best, best),
            jnp.where(improved, chunk_idx, best_idx),
        )
        if teacher is not None:
            t_logp, t_prob = _teacher_probs(teacher, teacher_lse, start, fresh, plan)
            cross = cross + (t_prob * logits).sum(axis=-1)
            neg_ent = neg_ent + (t_prob * t_logp).sum(axis=-1)
        carry = (new_max, run_sum, gathered, logit_sum, best, best_idx, cross, neg_ent)
        return carry, None

    # `full_like` (not `jnp.full`) so the carries inherit hidden's varying mesh axes when
    # this runs per vocabulary shard inside `shard_map`; elsewhere it is the same constant.
    zeros = jax.lax.full_like(hidden32, 0.0, shape=(n,))
    minus_inf = jax.lax.full_like(hidden32, -jnp.inf, shape=(n,))
    init = (
        minus_inf,
        zeros,
        jax.lax.full_like(hidden32, 0.0, shape=ids.shape),
        zeros,
        minus_inf,
        jax.lax.full_like(hidden32, 0, jnp.int32, (n,)),
        zeros,
        zeros,
    )
    carry, _ = jax.lax.scan(body, init, jnp.arange(plan.num_chunks))
    run_max, run_sum, gathered, logit_sum, best, best_idx, cross, neg_ent = carry
    return _ChunkStats(
        run_max + jnp.log(run_sum), gathered, logit_sum, best_idx, best, cross, neg_ent
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_stats(plan: _ChunkPlan, hidden, kernel, ids, teacher, teacher_lse) -> _ChunkStats:
    """Chunked statistics of `logits = hidden @ kernel`; `hidden [n, d]`, `kernel [d, V]`.

    `ids [n, k]` selects the logits to gather; `teacher [n, V]` (or None) holds dense teacher
    logits with `teacher_lse [n]` their logsumexp at the same temperature. Gradients flow to
    `hidden` and `kernel` only; the teacher is treated as a constant.
    """
    return _forward_stats(plan, hidden, kernel, ids, teacher, teacher_lse)


def _chunked_stats_fwd(plan, hidden, kernel, ids, teacher, teacher_lse):
    stats = _forward_stats(plan, hidden, kernel, ids, teacher, teacher_lse)
    return stats, (hidden, kernel, ids, teacher, teacher_lse, stats.lse)


def _chunked_stats_bwd(plan, residuals, cotangents):
    hidden, kernel, ids, teacher, teacher_lse, lse = residuals
    # argmax, max_logit and the teacher's entropy carry no gradient.
    g_lse, g_gathered, g_sum, g_cross = (
        cotangents.lse,
        cotangents.gathered,
        cotangents.logit_sum,
        cotangents.teacher_cross,
    )
    n, d = hidden.shape
    hidden32 = hidden.astype(jnp.float32)
    rows = jnp.arange(n)[:, None]

    def body(carry, index):
        d_hidden, d_kernel = carry
        start, fresh = _chunk_columns(plan, index)
        logits = _chunk_logits(hidden32, kernel, start, plan)  # recomputed, [n, chunk]
        probs = jnp.where(fresh, jnp.exp(logits * plan.inv_temperature - lse[:, None]), 0.0)
        d_logits = (g_lse * plan.inv_temperature)[:, None] * probs + g_sum[:, None] * fresh
        local, owned = _ids_in_chunk(ids, start, index, plan)
        d_logits = d_logits.at[rows, local].add(jnp.where(owned, g_gathered, 0.0))
        if teacher is not None:
            _, t_prob = _teacher_probs(teacher, teacher_lse, start, fresh, plan)
            d_logits = d_logits + g_cross[:, None] * t_prob
        block = jax.lax.dynamic_slice_in_dim(kernel, start, plan.chunk_size, axis=1)
        d_hidden = d_hidden + d_logits @ block.astype(jnp.float32).T
        d_block = hidden32.T @ d_logits  # [d, chunk]; stale columns have zero gradient
        previous = jax.lax.dynamic_slice_in_dim(d_kernel, start, plan.chunk_size, axis=1)
        d_kernel = jax.lax.dynamic_update_slice_in_dim(d_kernel, previous + d_block, start, 1)
        return (d_hidden, d_kernel), None

    init = (jax.lax.full_like(hidden32, 0.0, shape=(n, d)), jnp.zeros_like(kernel, jnp.float32))
    (d_hidden, d_kernel), _ = jax.lax.scan(body, init, jnp.arange(plan.num_chunks))
    return (d_hidden.astype(hidden.dtype), d_kernel.astype(kernel.dtype), None, None, None)


_chunked_stats.defvjp(_chunked_stats_fwd, _chunked_stats_bwd)


@dataclasses.dataclass(frozen=True)
class VocabSharding:
    """The output kernel's vocabulary dimension is split over mesh axes.

    With it the losses run the chunked pass per vocabulary shard inside `jax.shard_map`: each
    device walks its own `[d, V / num_shards]` columns, and the shards' small statistics are
    combined with collectives, so the `[d, V]` kernel is never all-gathered. Hidden states
    keep whatever sharding they have over the other mesh axes (`shard_map` is manual over
    `axes` only).

    Attributes:
      mesh: the device mesh the kernel lives on.
      axes: the mesh axes the vocabulary dimension is split over (e.g. `("model",)`); a
        single name is accepted and turned into a one-tuple.
    """

    mesh: jax.sharding.Mesh
    axes: tuple[str, ...]

    def __post_init__(self) -> None:
        axes = (self.axes,) if isinstance(self.axes, str) else tuple(self.axes)
        unknown = [a for a in axes if a not in self.mesh.shape]
        if not axes or unknown:
            raise ValueError(
                f"VocabSharding.axes must be a non-empty subset of the mesh axes "
                f"{tuple(self.mesh.shape)}; got {self.axes!r}."
            )
        object.__setattr__(self, "axes", axes)

    @property
    def num_shards(self) -> int:
        return math.prod(self.mesh.shape[a] for a in self.axes)


def _combine_shard_stats(
    local: _ChunkStats, offset: jax.Array, axes: tuple[str, ...]
) -> _ChunkStats:
    """Statistics of the whole vocabulary from each shard's (inside `shard_map`).

    The logsumexp is rescaled by the largest shard's value (a constant for autodiff, as in
    any logsumexp); an id's logit is summed from the one shard that owns it (the others hold
    exactly 0); the argmax is the smallest global column among the shards holding the largest
    logit, i.e. the first index on ties, as `jnp.argmax` picks.
    """
    psum = functools.partial(jax.lax.psum, axis_name=axes)
    top = jax.lax.pmax(jax.lax.stop_gradient(local.lse), axes)
    lse = top + jnp.log(psum(jnp.exp(local.lse - top)))
    max_logit = jax.lax.pmax(jax.lax.stop_gradient(local.max_logit), axes)
    candidate = jnp.where(
        local.max_logit == max_logit, local.argmax + offset, jnp.iinfo(jnp.int32).max
    )
    return _ChunkStats(
        lse,
        psum(local.gathered),
        psum(local.logit_sum),
        jax.lax.pmin(candidate, axes),
        max_logit,
        psum(local.teacher_cross),
        psum(local.teacher_neg_entropy),
    )


def _sharded_stats(
    plan: _ChunkPlan, sharding: VocabSharding, hidden, kernel, ids, teacher, teacher_lse
) -> _ChunkStats:
    """`_chunked_stats` with the vocabulary split over `sharding.axes`, one pass per shard.

    Every input is made varying over the vocabulary axes before the custom-VJP primitive, so
    its backward pass stays per shard: each shard's kernel gradient is its own slice, and the
    hidden-state gradient is summed over the shards by the transpose of that cast.
    """
    axes, shards = sharding.axes, sharding.num_shards
    if plan.vocab_size % shards:
        raise ValueError(
            f"the vocabulary ({plan.vocab_size}) must split evenly over the {shards} shards of "
            f"mesh axes {axes}; pad the output layer to a multiple of {shards} (T5's "
            f"32128 = 2**7 * 251 splits into 2, 4, ..., 128 shards) or shrink those mesh axes."
        )
    local_vocab = plan.vocab_size // shards
    local_plan = dataclasses.replace(
        plan, vocab_size=local_vocab, chunk_size=min(plan.chunk_size, local_vocab)
    )
    with_teacher = teacher is not None

    def per_shard(hidden, kernel, ids, *teacher_args):
        offset = jax.lax.axis_index(axes) * local_vocab
        varying = functools.partial(jax.lax.pcast, axis_name=axes, to="varying")
        teacher_args = (teacher_args[0], varying(teacher_args[1])) if with_teacher else (None, None)
        local = _chunked_stats(
            local_plan, varying(hidden), kernel, varying(ids) - offset, *teacher_args
        )
        return _combine_shard_stats(local, offset, axes)

    columns, whole = PartitionSpec(None, axes), PartitionSpec()
    args: tuple[jax.Array, ...] = (hidden, kernel, ids)
    specs: tuple[PartitionSpec, ...] = (whole, columns, whole)
    if with_teacher:
        args, specs = args + (teacher, teacher_lse), specs + (columns, whole)
    mapped = jax.shard_map(
        per_shard, mesh=sharding.mesh, in_specs=specs, out_specs=whole, axis_names=set(axes)
    )
    return mapped(*args)


def _check_inputs(hidden: jax.Array, kernel: jax.Array, chunk_size: int, temperature: float):
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be [embed, vocab]; got shape {kernel.shape}.")
    if hidden.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"hidden's last dimension ({hidden.shape[-1]}) must equal kernel's first "
            f"dimension ({kernel.shape[0]}); got hidden {hidden.shape}, kernel {kernel.shape}."
        )
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}.")


def _compute_stats(
    hidden,
    kernel,
    ids,
    *,
    temperature=1.0,
    chunk_size=DEFAULT_CHUNK_SIZE,
    teacher_logits=None,
    vocab_sharding=None,
) -> _ChunkStats:
    """Flattens leading dimensions and runs the chunked pass; outputs are `[n]` / `[n, k]`."""
    _check_inputs(hidden, kernel, chunk_size, temperature)
    vocab = kernel.shape[1]
    plan = _ChunkPlan(vocab, min(chunk_size, vocab), 1.0 / float(temperature))
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_ids = ids.reshape(flat_hidden.shape[0], -1).astype(jnp.int32)
    teacher = teacher_lse = None
    if teacher_logits is not None:
        teacher = jax.lax.stop_gradient(teacher_logits.reshape(-1, vocab))
        teacher_lse = jax.nn.logsumexp(teacher.astype(jnp.float32) * plan.inv_temperature, -1)
    if vocab_sharding is None or vocab_sharding.num_shards == 1:
        return _chunked_stats(plan, flat_hidden, kernel, flat_ids, teacher, teacher_lse)
    return _sharded_stats(plan, vocab_sharding, flat_hidden, kernel, flat_ids, teacher, teacher_lse)


def token_logprobs_from_hidden(
    hidden: jax.Array,
    kernel: jax.Array,
    ids: jax.Array,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    vocab_sharding: VocabSharding | None = None,
) -> jax.Array:
    """Chunked log-softmax of `hidden @ kernel / temperature`, read at `ids`.

    Args:
      hidden: final hidden states `[..., d]` (any float dtype; math is f32).
      kernel: output projection `[d, V]`.
      ids: token ids `[..., k]` with the same leading dimensions as `hidden`.
      temperature: divides the logits before the softmax.
      chunk_size: vocabulary columns per chunk (need not divide V).
      vocab_sharding: how the kernel's vocabulary is split over the mesh, to compute per
        shard; None for one pass over the whole kernel.

    Returns:
      f32 log-probabilities `[..., k]`.
    """
    stats = _compute_stats(
        hidden,
        kernel,
        ids,
        temperature=temperature,
        chunk_size=chunk_size,
        vocab_sharding=vocab_sharding,
    )
    logprobs = stats.gathered / temperature - stats.lse[:, None]
    return logprobs.reshape(ids.shape)


def cross_entropy_from_hidden(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    *,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    vocab_sharding: VocabSharding | None = None,
) -> CrossEntropyOutput:
    """Per-token cross-entropy with z-loss and label smoothing, from hidden states.

    Follows the t5x convention: with label smoothing `s` the target puts `1 - s` on the gold
    token and `s / (V - 1)` on every other token, and the entropy of that target is
    subtracted so a perfect prediction scores 0. `loss` includes the z-loss term
    `z_loss * logsumexp(logits)**2`, which is also returned alone.

    Args:
      hidden: final hidden states `[..., d]`.
      kernel: output projection `[d, V]`.
      targets: integer target ids `[...]`.
      z_loss: coefficient of the squared log-partition penalty (t5x uses 1e-4).
      label_smoothing: mass moved from the gold token to the others, in [0, 1).
      chunk_size: vocabulary columns per chunk (need not divide V).
      vocab_sharding: how the kernel's vocabulary is split over the mesh, to compute per
        shard; None for one pass over the whole kernel.

    Returns:
      `CrossEntropyOutput(loss, z_loss, correct)`, each shaped like `targets`, unweighted.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing!r}.")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets shape {targets.shape} must equal hidden's leading "
            f"dimensions {hidden.shape[:-1]}."
        )
    vocab = kernel.shape[-1]
    stats = _compute_stats(
        hidden, kernel, targets[..., None], chunk_size=chunk_size, vocab_sharding=vocab_sharding
    )
    target_logit = stats.gathered[:, 0]
    if label_smoothing > 0.0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        target_entropy = -(
            confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20)
        )
        nll = stats.lse - (confidence - low) * target_logit - low * stats.logit_sum - target_entropy
    else:
        nll = stats.lse - target_logit
    z_term = z_loss * jnp.square(stats.lse)
    correct = stats.argmax == targets.reshape(-1)
    return CrossEntropyOutput(*(x.reshape(targets.shape) for x in (nll + z_term, z_term, correct)))


def _tempered_teacher(
    teacher_logprobs: jax.Array, valid: jax.Array, temperature: float, missing_mass: str
) -> tuple[jax.Array, jax.Array]:
    """Teacher log-probs `[n, k]` (0 where invalid) and residual log-mass `[n]` after tempering.

    The teacher is known only on its top-k plus one "everything else" bucket of mass
    `1 - sum(p_k)`; tempering raises every bucket to `1 / temperature` and renormalises over
    the k + 1 buckets (over the k alone for "renormalize"). At temperature 1 this is the
    identity for "drop" and "residual".
    """
    scaled = jnp.where(valid, teacher_logprobs / temperature, -jnp.inf)
    top_mass = jnp.exp(jax.nn.logsumexp(jnp.where(valid, teacher_logprobs, -jnp.inf), axis=-1))
    residual = jnp.log(jnp.clip(1.0 - top_mass, 0.0, 1.0)) / temperature
    if missing_mass == "renormalize":
        log_norm = jax.nn.logsumexp(scaled, axis=-1)
        residual = jnp.full_like(residual, -jnp.inf)
    elif temperature == 1.0:
        log_norm = jnp.zeros_like(residual)  # the k + 1 buckets already sum to 1
    else:
        log_norm = jnp.logaddexp(jax.nn.logsumexp(scaled, axis=-1), residual)
    log_norm = jnp.where(jnp.isfinite(log_norm), log_norm, 0.0)  # rows without any teacher
    return jnp.where(valid, scaled - log_norm[:, None], 0.0), residual - log_norm


def _log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and near -inf."""
    x = jnp.minimum(x, -1e-30)
    near_zero = x > -0.6931472
    # Each branch gets inputs where it is finite, so the unused one cannot put NaN in the grad.
    return jnp.where(
        near_zero,
        jnp.log(-jnp.expm1(jnp.where(near_zero, x, -1.0))),
        jnp.log1p(-jnp.exp(jnp.where(near_zero, -1.0, x))),
    )


def sparse_kl_from_hidden(
    hidden: jax.Array,
    kernel: jax.Array,
    teacher_ids: jax.Array,
    teacher_logprobs: jax.Array,
    *,
    missing_mass: MissingMass = "drop",
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    vocab_sharding: VocabSharding | None = None,
) -> jax.Array:
    """Forward KL(teacher || student) per token from a sparse top-k teacher.

    The teacher is given as its top-k `(id, log-prob)` per token. Entries whose log-prob is
    `-inf` are padding (rows with fewer than k entries); valid ids in a row must be distinct.
    With p the teacher and q = softmax(logits / temperature) the student:

    * "drop": `sum_k p_k (log p_k - log q_k)`. The mass outside the top-k is ignored, so
      this is not a divergence (it can be negative); it equals the paper's weighted
      cross-entropy `-sum_k p_k log q_k` plus a constant of the teacher, hence the same
      gradients as the published code.
    * "renormalize": the KL from the top-k renormalised to sum to 1, `p_k / sum_j p_j`.
    * "residual": a true KL over k + 1 buckets, the top-k plus "everything else", whose
      teacher mass is `1 - sum p_k` and student mass `1 - sum q_k`.

    Temperature tempers the student and the teacher's buckets (see `_tempered_teacher`); it
    does not multiply the loss by `temperature**2`, which is the caller's choice.

    Args:
      hidden: final hidden states `[..., d]`.
      kernel: output projection `[d, V]`.
      teacher_ids: `[..., k]` teacher top-k ids in the student vocabulary.
      teacher_logprobs: `[..., k]` teacher log-probabilities, `-inf` for padding.
      missing_mass: "drop", "renormalize" or "residual".
      temperature: softening temperature (> 0).
      chunk_size: vocabulary columns per chunk (need not divide V).
      vocab_sharding: how the kernel's vocabulary is split over the mesh, to compute per
        shard; None for one pass over the whole kernel.

    Returns:
      f32 per-token loss `[...]`; 0 for tokens whose k entries are all padding.
    """
    if missing_mass not in MISSING_MASS_MODES:
        raise ValueError(f"missing_mass must be one of {MISSING_MASS_MODES}; got {missing_mass!r}.")
    if teacher_ids.shape != teacher_logprobs.shape or teacher_ids.shape[:-1] != hidden.shape[:-1]:
        raise ValueError(
            f"teacher_ids {teacher_ids.shape} and teacher_logprobs {teacher_logprobs.shape} must "
            f"both be hidden's leading dimensions {hidden.shape[:-1]} plus a top-k axis."
        )
    k = teacher_ids.shape[-1]
    logprobs = jax.lax.stop_gradient(teacher_logprobs.reshape(-1, k).astype(jnp.float32))
    valid = logprobs > -jnp.inf
    teacher_logp, teacher_residual = _tempered_teacher(logprobs, valid, temperature, missing_mass)
    student_logp = token_logprobs_from_hidden(
        hidden,
        kernel,
        teacher_ids,
        temperature=temperature,
        chunk_size=chunk_size,
        vocab_sharding=vocab_sharding,
    ).reshape(-1, k)
    teacher_p = jnp.where(valid, jnp.exp(teacher_logp), 0.0)
    loss = (teacher_p * (teacher_logp - jnp.where(valid, student_logp, 0.0))).sum(-1)
    if missing_mass == "residual":
        student_top = jax.nn.logsumexp(jnp.where(valid, student_logp, -jnp.inf), axis=-1)
        student_residual = _log1mexp(student_top)
        residual_p = jnp.exp(teacher_residual)
        safe_teacher = jnp.where(residual_p > 0, teacher_residual, 0.0)
        loss = loss + jnp.where(residual_p > 0, residual_p * (safe_teacher - student_residual), 0.0)
    return loss.reshape(teacher_ids.shape[:-1])


def dense_kl_from_hidden(
    hidden: jax.Array,
    kernel: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    vocab_sharding: VocabSharding | None = None,
) -> jax.Array:
    """Forward KL(teacher || student) per token from a local teacher's full logits.

    Both distributions are `softmax(logits / temperature)`; the teacher is a constant (no
    gradient flows to `teacher_logits`). The student's logits are never materialised; the
    teacher's are read chunk by chunk alongside.

    Args:
      hidden: student final hidden states `[..., d]`.
      kernel: student output projection `[d, V]`.
      teacher_logits: `[..., V]` teacher logits over the same vocabulary.
      temperature: softening temperature (> 0).
      chunk_size: vocabulary columns per chunk (need not divide V).
      vocab_sharding: how the kernel's vocabulary is split over the mesh, to compute per
        shard; None for one pass over the whole kernel.

    Returns:
      f32 per-token KL `[...]`.
    """
    if teacher_logits.shape != hidden.shape[:-1] + (kernel.shape[-1],):
        raise ValueError(
            f"teacher_logits shape {teacher_logits.shape} must be hidden's leading "
            f"dimensions {hidden.shape[:-1]} plus the vocabulary ({kernel.shape[-1]})."
        )
    no_ids = jnp.zeros(hidden.shape[:-1] + (0,), jnp.int32)
    stats = _compute_stats(
        hidden,
        kernel,
        no_ids,
        temperature=temperature,
        chunk_size=chunk_size,
        teacher_logits=teacher_logits,
        vocab_sharding=vocab_sharding,
    )
    kl = stats.teacher_neg_entropy - (stats.teacher_cross / temperature - stats.lse)
    return kl.reshape(hidden.shape[:-1])
