"""Training losses: per-token losses from hidden states, token weights and normalisation.

A loss is computed in three layers, so that every kind of per-token loss (cross-entropy
here, KL to a teacher in the distillation work) shares the weighting and normalisation and
the fused vocabulary-chunked log-softmax of :mod:`flan_jax.kernels.fused_loss`:

1. :func:`compute_loss_weights` (whole global batch): token weights ``[batch, length]``
   and one scalar normalising factor, from ``decoder_loss_weights`` and the
   ``normalization`` option.
2. A *token loss* from the registry (:func:`register_token_loss`), e.g.
   ``"cross_entropy"``: ``(hidden, kernel, batch, config) -> TokenLosses``, unweighted.
3. :func:`reduce_token_losses`: ``sum(weights * loss) / factor`` plus the statistics the
   train step reports. Because the factor comes from the whole batch, the losses of
   microbatches add up to exactly the loss of the whole batch, for every normalisation.

Normalisations (``LossConfig.normalization``), with ``w`` the loss weights:

- ``"sum"``: ``sum(w * loss)`` (t5x's default).
- ``"num_real_target_tokens"``: divided by ``sum(w)``.
- ``"num_total_target_tokens"``: divided by ``batch * length`` (padding included).
- ``"constant"``: divided by ``normalizing_constant`` (t5x fine-tuning: 233472 = 2048 * 114).
- ``"average_per_sequence"``: each sequence's mean loss, averaged over sequences. With
  packing every *segment* is a sequence: its tokens get weight ``1 / (its token count)``.

Worked example (``"average_per_sequence"``, one packed row, segment 1 with 3 target
tokens, segment 2 with 1, one padding position)::

    decoder_segment_ids  = [[1,   1,   1,   2, 0]]
    decoder_loss_weights = [[1,   1,   1,   1, 0]]
    weights              = [[1/3, 1/3, 1/3, 1, 0]]      factor = 2 (two sequences)
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from flan_jax.errors import ConfigError
from flan_jax.kernels import fused_loss
from flan_jax.training import partitioning

NORMALIZATIONS = (
    "sum",
    "num_real_target_tokens",
    "num_total_target_tokens",
    "constant",
    "average_per_sequence",
)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """What the train step minimises.

    Attributes:
        kind: a registered token loss (``"cross_entropy"``; distillation registers more).
        z_loss: coefficient of ``logsumexp(logits) ** 2`` (t5x: 1e-4).
        label_smoothing: probability mass moved off the gold token, in [0, 1).
        normalization: one of :data:`NORMALIZATIONS`.
        normalizing_constant: the divisor of ``"constant"`` normalisation.
        chunk_size: vocabulary columns per chunk of the fused kernel.
        kind_options: extra keyword arguments for the token loss of ``kind`` (e.g. a KL
            temperature); cross-entropy takes none.
    """

    kind: str = "cross_entropy"
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    normalization: str = "sum"
    normalizing_constant: float | None = None
    chunk_size: int = fused_loss.DEFAULT_CHUNK_SIZE
    kind_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"LossConfig.normalization must be one of {NORMALIZATIONS}; "
                f"got {self.normalization!r}"
            )
        if self.normalization == "constant" and not (self.normalizing_constant or 0) > 0:
            raise ConfigError(
                "LossConfig.normalizing_constant must be > 0 with normalization='constant'; "
                f"got {self.normalizing_constant!r}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"LossConfig.label_smoothing must be in [0, 1); got {self.label_smoothing}"
            )
        if self.z_loss < 0:
            raise ConfigError(f"LossConfig.z_loss must be >= 0; got {self.z_loss}")


class TokenLosses(NamedTuple):
    """Unweighted per-token results of a token loss, each ``[batch, length]``.

    Attributes:
        loss: the per-token loss, auxiliary terms (z-loss) included.
        z_loss: the z-loss part of ``loss`` (zeros if the kind has none).
        correct: whether the model's argmax equals ``decoder_target_tokens``.
    """

    loss: jax.Array
    z_loss: jax.Array
    correct: jax.Array


class LossStats(NamedTuple):
    """Sums over a (micro)batch; they add up across microbatches.

    Attributes:
        loss: normalised loss (what is differentiated).
        z_loss: normalised z-loss part.
        num_correct: real target tokens predicted correctly.
        num_real_target_tokens: target tokens with a positive loss weight.
    """

    loss: jax.Array
    z_loss: jax.Array
    num_correct: jax.Array
    num_real_target_tokens: jax.Array


class TokenLossFn(Protocol):
    """``fn(hidden [b, l, d], kernel [d, V], batch, config, *, vocab_sharding) -> TokenLosses``.

    ``vocab_sharding`` (a :class:`~flan_jax.kernels.fused_loss.VocabSharding` or None) is
    passed on to the fused kernels, so the loss runs per vocabulary shard of the kernel.
    """

    def __call__(
        self,
        hidden: jax.Array,
        kernel: jax.Array,
        batch: Mapping[str, jax.Array],
        config: LossConfig,
        *,
        vocab_sharding: fused_loss.VocabSharding | None,
    ) -> TokenLosses: ...


_TOKEN_LOSSES: dict[str, TokenLossFn] = {}


def register_token_loss(kind: str, fn: TokenLossFn) -> None:
    """Registers a per-token loss under ``kind`` (idempotent for the same function).

    Args:
        kind: the name ``LossConfig.kind`` selects.
        fn: a :class:`TokenLossFn`; it should build on :mod:`flan_jax.kernels.fused_loss`
            (passing ``vocab_sharding`` on) so logits are never materialised, and read its
            options from ``config.kind_options``.

    Raises:
        ValueError: if another function is already registered under ``kind``.
    """
    if _TOKEN_LOSSES.get(kind, fn) is not fn:
        raise ValueError(f"a different token loss is already registered as {kind!r}")
    _TOKEN_LOSSES[kind] = fn


def get_token_loss(kind: str) -> TokenLossFn:
    """Returns the registered token loss ``kind``, naming close matches if unknown."""
    if kind not in _TOKEN_LOSSES:
        close = difflib.get_close_matches(kind, list(_TOKEN_LOSSES), n=3)
        raise ValueError(
            f"unknown loss kind {kind!r}; registered: {sorted(_TOKEN_LOSSES)}"
            + (f" (did you mean {close}?)" if close else "")
        )
    return _TOKEN_LOSSES[kind]


def cross_entropy_token_loss(
    hidden: jax.Array,
    kernel: jax.Array,
    batch: Mapping[str, jax.Array],
    config: LossConfig,
    *,
    vocab_sharding: fused_loss.VocabSharding | None,
) -> TokenLosses:
    """Cross-entropy with z-loss and label smoothing against ``decoder_target_tokens``."""
    if config.kind_options:
        raise ValueError(
            f"loss kind 'cross_entropy' takes no kind_options; got {dict(config.kind_options)}"
        )
    out = fused_loss.cross_entropy_from_hidden(
        hidden,
        kernel,
        batch["decoder_target_tokens"],
        z_loss=config.z_loss,
        label_smoothing=config.label_smoothing,
        chunk_size=config.chunk_size,
        vocab_sharding=vocab_sharding,
    )
    return TokenLosses(out.loss, out.z_loss, out.correct)


register_token_loss("cross_entropy", cross_entropy_token_loss)


def get_target_weights(batch: Mapping[str, jax.Array]) -> jax.Array:
    """``decoder_loss_weights`` as f32, or ``decoder_target_tokens > 0`` when absent."""
    if "decoder_loss_weights" in batch:
        return batch["decoder_loss_weights"].astype(jnp.float32)
    return (batch["decoder_target_tokens"] > 0).astype(jnp.float32)


def _sum_per_segment(values: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """For each position, the sum of ``values`` over its row's positions with its segment id."""
    num_ids = segment_ids.shape[-1] + 1  # ids are at most the row length

    def per_row(row_values, row_ids):
        return jax.ops.segment_sum(row_values, row_ids, num_segments=num_ids)[row_ids]

    return jax.vmap(per_row)(values, segment_ids)


def count_sequences(batch: Mapping[str, jax.Array]) -> jax.Array:
    """Number of sequences (packed segments, or rows with targets) in a batch, f32."""
    weights = get_target_weights(batch)
    if "decoder_segment_ids" not in batch:
        return jnp.sum(jnp.any(weights > 0, axis=-1)).astype(jnp.float32)
    seg = batch["decoder_segment_ids"]
    previous = jnp.pad(seg[:, :-1], ((0, 0), (1, 0)))
    return jnp.sum((seg != 0) & (seg != previous)).astype(jnp.float32)


def compute_loss_weights(
    batch: Mapping[str, jax.Array], config: LossConfig
) -> tuple[jax.Array, jax.Array]:
    """Token weights and the normalising factor of a whole (global) batch.

    Returns:
        ``(weights [batch, length] f32, factor scalar f32)``; the loss is
        ``sum(weights * token_loss) / factor``. A zero factor (a batch without targets) is
        replaced by 1 so the loss is 0, not NaN.
    """
    weights = get_target_weights(batch)
    norm = config.normalization
    if norm == "sum":
        factor = jnp.ones((), jnp.float32)
    elif norm == "num_real_target_tokens":
        factor = jnp.sum(weights)
    elif norm == "num_total_target_tokens":
        factor = jnp.asarray(weights.size, jnp.float32)
    elif norm == "constant":
        factor = jnp.asarray(config.normalizing_constant, jnp.float32)
    else:  # average_per_sequence
        if "decoder_segment_ids" in batch:
            per_sequence = _sum_per_segment(weights, batch["decoder_segment_ids"])
        else:
            per_sequence = jnp.sum(weights, axis=-1, keepdims=True)
        # A sequence without weight has only zero weights: dividing them by 1 keeps them 0.
        weights = weights / jnp.where(per_sequence > 0, per_sequence, 1.0)
        factor = jnp.sum(weights)
    return weights, jnp.where(factor > 0, factor, 1.0)


def reduce_token_losses(
    token_losses: TokenLosses,
    weights: jax.Array,
    factor: jax.Array,
    target_weights: jax.Array,
) -> LossStats:
    """Weights, sums and normalises per-token losses.

    Args:
        token_losses: unweighted per-token results.
        weights: from :func:`compute_loss_weights` (the matching rows).
        factor: the whole batch's normalising factor.
        target_weights: :func:`get_target_weights` of the same rows (marks real tokens).
    """
    real = target_weights > 0
    return LossStats(
        loss=jnp.sum(weights * token_losses.loss) / factor,
        z_loss=jnp.sum(weights * token_losses.z_loss) / factor,
        num_correct=jnp.sum(token_losses.correct & real).astype(jnp.float32),
        num_real_target_tokens=jnp.sum(real).astype(jnp.float32),
    )


def get_vocab_sharding(
    mesh: Mesh, rules: partitioning.LogicalRules
) -> fused_loss.VocabSharding | None:
    """How ``rules`` split the output kernel's vocabulary over ``mesh``; None if not split."""
    axes = partitioning.get_vocab_mesh_axes(rules)
    sharding = fused_loss.VocabSharding(mesh=mesh, axes=axes) if axes else None
    return sharding if sharding is not None and sharding.num_shards > 1 else None


def compute_loss(
    hidden: jax.Array,
    kernel: jax.Array,
    batch: Mapping[str, jax.Array],
    config: LossConfig,
    *,
    weights: jax.Array | None = None,
    factor: jax.Array | None = None,
    mesh: Mesh | None = None,
    rules: partitioning.LogicalRules | None = None,
) -> LossStats:
    """The loss of ``batch`` from the final hidden states and the output kernel.

    Args:
        hidden: ``[batch, length, embed]`` final decoder states.
        kernel: ``[embed, vocab]`` output projection.
        batch: the features of the same rows.
        config: the loss options.
        weights, factor: precomputed by :func:`compute_loss_weights` on the whole batch
            when ``batch`` is one microbatch of it; computed from ``batch`` if omitted.
        mesh, rules: the device mesh and logical-axis rules of a sharded run (both or
            neither). When the rules split ``vocab`` over mesh axes of size > 1, the fused
            kernels run per vocabulary shard (no all-gather of the kernel); the numbers are
            those of the unsharded computation.

    Returns:
        The :class:`LossStats`; differentiate ``.loss``.

    Raises:
        ValueError: if only one of ``mesh`` and ``rules`` is given.
    """
    if (mesh is None) != (rules is None):
        raise ValueError(
            "compute_loss needs both mesh and rules (to shard the vocabulary) or neither; "
            f"got mesh={mesh!r}, rules={rules!r}"
        )
    if weights is None or factor is None:
        weights, factor = compute_loss_weights(batch, config)
    vocab_sharding = None if mesh is None or rules is None else get_vocab_sharding(mesh, rules)
    token_losses = get_token_loss(config.kind)(
        hidden, kernel, batch, config, vocab_sharding=vocab_sharding
    )
    return reduce_token_losses(token_losses, weights, factor, get_target_weights(batch))
