"""The model interface: what the trainer and the predictor need from a model family.

A model family (the T5 encoder-decoder today, decoder-only models next) implements
:class:`Model` once; the one trainer (:mod:`flan_jax.training.trainer`) and the one
inference path (:mod:`flan_jax.inference`) then work with it unchanged. Implementations are
frozen dataclasses holding their config, so they are hashable and can be static arguments
of ``jax.jit``.

Training needs five things: parameters (fresh, abstract, and their logical axis names, which
drive sharding and Adafactor's factoring), the final hidden states of a feature-converted
batch, and the output kernel, with ``logits == hidden @ output_kernel(params)`` so that the
fused loss kernel never materialises ``[batch, length, vocab]`` logits.

Decoding needs three hooks over an opaque per-row *decode state* (a pytree whose leaves
carry the batch on one axis): build it from the inputs (the encoder pass and an empty
cache, or a prompt prefill), advance it by one token, and reorder its rows for beam search.
Scoring needs a teacher-forced batch built from inputs and targets.

Batches are dicts of ``[batch, length]`` arrays named as t5x's feature converters name them
(``encoder_input_tokens``, ``decoder_input_tokens``, ``decoder_target_tokens``,
``decoder_loss_weights`` and, packed, segment ids and positions), laid out as the model's
``feature_format`` says (:mod:`flan_jax.data.packing`). The loss reads
``decoder_target_tokens`` and ``decoder_loss_weights`` whatever the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import jax

from flan_jax.data import packing

Array = jax.Array
Params = Any
Batch = Mapping[str, Array]
DecodeState = Any


@runtime_checkable
class Model(Protocol):
    """A model family as the trainer and the predictor see it."""

    @property
    def config(self) -> Any:
        """The architecture (a frozen, hashable config dataclass with ``to_dict``)."""
        ...

    @property
    def vocab_size(self) -> int:
        """Rows of the output kernel's vocabulary dimension."""
        ...

    @property
    def feature_format(self) -> packing.FeatureFormat:
        """The layout of the training and evaluation rows this model reads (an encoder and
        a decoder stream, or one decoder stream of inputs and targets)."""
        ...

    def init_params(self, rng: Array) -> Params:
        """Fresh float32 parameters (plain arrays)."""
        ...

    def abstract_params(self) -> Params:
        """``jax.ShapeDtypeStruct`` leaves of the parameters, without compute."""
        ...

    def param_logical_axes(self) -> Params:
        """Logical axis names of every parameter, as ``PartitionSpec`` leaves."""
        ...

    def hidden_states(
        self, params: Params, batch: Batch, *, dropout_rng: Array | None = None
    ) -> Array:
        """Final hidden states ``[batch, length, embed]`` aligned with the targets.

        Dropout is applied when ``dropout_rng`` is given (training) and not otherwise.
        """
        ...

    def output_kernel(self, params: Params) -> Array:
        """The ``[embed, vocab]`` projection: ``logits == hidden @ output_kernel(params)``."""
        ...

    def train_flops_per_step(self, *, batch_size: int, feature_lengths: Mapping[str, int]) -> float:
        """Matmul FLOPs of one training step (forward + backward), for MFU."""
        ...

    def make_scoring_batch(self, inputs: Array, targets: Array) -> Batch:
        """A teacher-forced batch whose loss positions score ``targets`` given ``inputs``.

        Args:
          inputs: ``[batch, input_len]`` 0-padded token ids.
          targets: ``[batch, target_len]`` 0-padded ids, EOS included.
        """
        ...

    def init_decode_state(
        self, params: Params, inputs: Array, *, max_decode_len: int
    ) -> DecodeState:
        """The decode state before the first generated token (row i serves ``inputs[i]``)."""
        ...

    def decode_step(
        self, params: Params, state: DecodeState, tokens: Array
    ) -> tuple[Array, DecodeState]:
        """Feeds ``tokens`` ``[batch]`` (the start id 0 first); returns f32 ``[batch, vocab]``
        logits of the next token and the advanced state."""
        ...

    def reorder_decode_state(self, state: DecodeState, indices: Array) -> DecodeState:
        """Row ``i`` of the result is row ``indices[i]`` of ``state`` (beam search).

        ``indices`` only move rows among the beams of the same input.
        """
        ...
