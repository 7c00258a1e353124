"""The distribution-matching token loss: KL(teacher || student) on sparse aligned targets.

Importing this module registers the token loss ``"sparse_kl"`` with
:mod:`flan_jax.training.losses`, so a distillation run is a normal run of the trainer's
train step with ``LossConfig(kind="sparse_kl", kind_options={...})``: the same weighting,
normalisation, microbatching and optimizer as cross-entropy training.

The batch carries two extra features next to the feature-converter ones::

    teacher_ids       [batch, length, k] int32   student-vocabulary ids of the teacher top-k
    teacher_logprobs  [batch, length, k] f32     their log-probs, -inf marks padding

A position without a usable teacher distribution (the alignment's fallback, the appended EOS,
every token of an answer-only target) holds the one-hot row ``ids [t, 0, ...]``,
``logprobs [0, -inf, ...]``; with it the KL is exactly ``-log q(t)``, the cross-entropy on
the student token (at temperature 1; at another temperature it is the cross-entropy of the
tempered student). Padding positions hold only ``-inf`` and contribute 0, and their
``decoder_loss_weights`` are 0 anyway.

``kind_options`` (all optional):

- ``missing_mass``: ``"drop"`` (the paper's loss), ``"renormalize"`` or ``"residual"``; see
  :func:`flan_jax.kernels.fused_loss.sparse_kl_from_hidden`.
- ``temperature``: softening temperature of both distributions.

The z-loss of ``LossConfig.z_loss`` is added as in cross-entropy training, and the accuracy
metric compares the student's argmax with ``decoder_target_tokens``; both come from one extra
chunked pass of :func:`~flan_jax.kernels.fused_loss.cross_entropy_from_hidden`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax

from flan_jax.kernels import fused_loss
from flan_jax.training import losses

SPARSE_KL = "sparse_kl"
TEACHER_IDS = "teacher_ids"
TEACHER_LOGPROBS = "teacher_logprobs"
_OPTIONS = ("missing_mass", "temperature")


def sparse_kl_token_loss(
    hidden: jax.Array,
    kernel: jax.Array,
    batch: Mapping[str, jax.Array],
    config: losses.LossConfig,
    *,
    vocab_sharding: fused_loss.VocabSharding | None,
) -> losses.TokenLosses:
    """Per-token KL(teacher || student) from ``batch["teacher_ids"/"teacher_logprobs"]``.

    Args:
      hidden: ``[batch, length, embed]`` final decoder states.
      kernel: ``[embed, vocab]`` output projection.
      batch: features including :data:`TEACHER_IDS` and :data:`TEACHER_LOGPROBS`.
      config: the loss options; ``kind_options`` as in the module docstring.
      vocab_sharding: how the kernel's vocabulary is split over the mesh (None: not split).

    Returns:
      Unweighted :class:`~flan_jax.training.losses.TokenLosses` (KL plus z-loss).
    """
    unknown = sorted(set(config.kind_options) - set(_OPTIONS))
    if unknown:
        raise ValueError(
            f"loss kind {SPARSE_KL!r} takes kind_options {_OPTIONS}; got unknown {unknown}"
        )
    missing = [name for name in (TEACHER_IDS, TEACHER_LOGPROBS) if name not in batch]
    if missing:
        raise ValueError(
            f"loss kind {SPARSE_KL!r} needs batch features {missing}; build the "
            "batches with flan_jax.distill.targets"
        )
    kl = fused_loss.sparse_kl_from_hidden(
        hidden,
        kernel,
        batch[TEACHER_IDS],
        batch[TEACHER_LOGPROBS],
        missing_mass=config.kind_options.get("missing_mass", "drop"),
        temperature=float(config.kind_options.get("temperature", 1.0)),
        chunk_size=config.chunk_size,
        vocab_sharding=vocab_sharding,
    )
    ce = fused_loss.cross_entropy_from_hidden(
        hidden,
        kernel,
        batch["decoder_target_tokens"],
        z_loss=config.z_loss,
        chunk_size=config.chunk_size,
        vocab_sharding=vocab_sharding,
    )
    return losses.TokenLosses(kl + ce.z_loss, ce.z_loss, ce.correct)


losses.register_token_loss(SPARSE_KL, sparse_kl_token_loss)
