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

import dataclasses
from collections.abc import Callable, Mapping
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


InitialParams = Callable[[Any, Any], Params]
"""``(abstract_params, param_shardings) -> params``: where a fresh run's parameters come from."""


@runtime_checkable
class AdaptedModel(Model, Protocol):
    """A model that trains a few parameters added to a frozen base model (LoRA adapters).

    Its parameters are the base model's plus its own; its ``config`` is the base's
    architecture. The trainer updates only the leaves :meth:`trainable_mask` marks, and a
    run started from a checkpoint of the base model reads the base's parameters from it
    and initialises the rest (:meth:`initial_params_from_base`).
    """

    @property
    def base(self) -> Model:
        """The wrapped model."""
        ...

    def trainable_mask(self) -> Params:
        """A tree of Python bools with the parameters' structure: which ones train."""
        ...

    def initial_params_from_base(self, load_base: InitialParams, *, seed: int) -> InitialParams:
        """Initial parameters: the base's from ``load_base``, the added ones from ``seed``."""
        ...

    def replace_config(self, **changes: Any) -> Model:
        """The same wrapper around the base model with ``config`` fields replaced."""
        ...


def get_trainable_mask(model: Model) -> Params | None:
    """Which parameters train (a tree of bools); None when all of them do."""
    return model.trainable_mask() if isinstance(model, AdaptedModel) else None


def replace_config(model: Model, **changes: Any) -> Model:
    """``model`` with fields of its config replaced (e.g. ``dropout_rate``).

    Models are frozen dataclasses with a ``config`` field; a wrapper whose config is its
    base model's (:class:`AdaptedModel`) replaces it there.
    """
    if isinstance(model, AdaptedModel):
        return model.replace_config(**changes)
    config = dataclasses.replace(model.config, **changes)
    return dataclasses.replace(model, config=config)  # type: ignore[type-var]
