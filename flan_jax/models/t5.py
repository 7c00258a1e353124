"""The T5 v1.1 / Flan-T5 encoder-decoder, read top to bottom: layers, stacks, model.

Parameter tree (unscanned; with `scan_layers` the `layers_{i}` subtrees become one `layers`
subtree whose leaves carry a leading "layers" axis):

    token_embedder/embedding                    [vocab, embed]
    encoder/relpos_bias/rel_embedding           [heads, buckets]
    encoder/layers_{i}/pre_attention_layer_norm/scale, attention/{query,key,value,out}/kernel,
                       pre_mlp_layer_norm/scale, mlp/{wi_0,wi_1 | wi,wo}/kernel
    encoder/encoder_norm/scale
    decoder/relpos_bias/rel_embedding
    decoder/layers_{i}/pre_self_attention_layer_norm, self_attention,
                       pre_cross_attention_layer_norm,
                       encoder_decoder_attention, pre_mlp_layer_norm, mlp
    decoder/decoder_norm/scale
    decoder/logits_dense/kernel                 [embed, vocab]   (absent when tied)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, cast

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from flan_jax.data.packing import EncoderDecoderFormat
from flan_jax.models.config import T5Config
from flan_jax.models.layers import (
    Embed,
    MlpBlock,
    MultiHeadAttention,
    RelativePositionBias,
    RMSNorm,
    apply_layer_stack,
    default_positions,
    make_causal_mask,
    make_segment_mask,
    mask_to_bias,
    normal_init,
)

Array = jax.Array
Params = dict[str, Any]


# ------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------
class EncoderLayer(nn.Module):
    """Pre-norm self-attention then feed-forward, each wrapped in a residual connection.

    Attributes:
      config: The model config.
      deterministic: Disables dropout.
      scanned: Return `(x, None)` as `nn.scan` expects of its body.
    """

    config: T5Config
    deterministic: bool = True
    scanned: bool = False

    @nn.compact
    def __call__(self, x: Array, bias: Array) -> Array | tuple[Array, None]:
        cfg, dtype = self.config, self.config.activation_dtype
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        normed = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
        attended = MultiHeadAttention(
            cfg.num_heads, cfg.head_dim, dtype, cfg.dropout_rate, name="attention"
        )(normed, normed, bias, deterministic=self.deterministic)
        x = x + dropout(attended, deterministic=self.deterministic)
        normed = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
        mlp = MlpBlock(cfg.mlp_dim, cfg.feed_forward, dtype, cfg.dropout_rate, name="mlp")
        x = x + dropout(
            mlp(normed, deterministic=self.deterministic), deterministic=self.deterministic
        )
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return (x, None) if self.scanned else x


class DecoderLayer(nn.Module):
    """Self-attention, optional cross-attention, feed-forward; pre-norm residual blocks.

    Without cross-attention this is the layer of a decoder-only (causal or prefix-LM) model:
    the mask inside `self_bias` decides what each position sees.

    Attributes:
      config: The model config.
      deterministic: Disables dropout.
      decode: Use and update the key/value cache (one token per call after the cache exists).
      has_cross_attention: Attend to an encoder's output.
      scanned: Return `(x, None)` as `nn.scan` expects of its body.
    """

    config: T5Config
    deterministic: bool = True
    decode: bool = False
    has_cross_attention: bool = True
    scanned: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        self_bias: Array,
        encoded: Array | None,
        cross_bias: Array | None,
        cache_index: Array | None,
    ) -> Array | tuple[Array, None]:
        cfg, dtype, det = self.config, self.config.activation_dtype, self.deterministic
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        normed = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(x)
        attended = MultiHeadAttention(
            cfg.num_heads,
            cfg.head_dim,
            dtype,
            cfg.dropout_rate,
            cache_mode="append",
            name="self_attention",
        )(normed, normed, self_bias, deterministic=det, decode=self.decode, cache_index=cache_index)
        x = x + dropout(attended, deterministic=det)
        if self.has_cross_attention:
            normed = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(
                x
            )
            if encoded is None:
                raise ValueError("DecoderLayer: has_cross_attention needs the encoder output.")
            attended = MultiHeadAttention(
                cfg.num_heads,
                cfg.head_dim,
                dtype,
                cfg.dropout_rate,
                cache_mode="static",
                name="encoder_decoder_attention",
            )(normed, encoded, cross_bias, deterministic=det, decode=self.decode)
            x = x + dropout(attended, deterministic=det)
        normed = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
        mlp = MlpBlock(cfg.mlp_dim, cfg.feed_forward, dtype, cfg.dropout_rate, name="mlp")
        x = x + dropout(mlp(normed, deterministic=det), deterministic=det)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return (x, None) if self.scanned else x


# ------------------------------------------------------------------------------------------
# Stacks
# ------------------------------------------------------------------------------------------
def _relpos(config: T5Config, bidirectional: bool) -> RelativePositionBias:
    return RelativePositionBias(
        config.relative_attention_num_buckets,
        config.relative_attention_max_distance,
        config.num_heads,
        bidirectional,
        config.activation_dtype,
        name="relpos_bias",
    )


class Encoder(nn.Module):
    """Embedding, bidirectional layers sharing one relative position bias, final norm.

    Attributes:
      config: The model config.
      embedder: The token embedding shared with the decoder.
    """

    config: T5Config
    embedder: Embed

    @nn.compact
    def __call__(
        self, tokens: Array, segment_ids: Array | None, positions: Array | None, deterministic: bool
    ) -> Array:
        cfg = self.config
        if segment_ids is None:
            segment_ids = (tokens > 0).astype(jnp.int32)
        # Unpacked rows share positions, so one [1, heads, q, k] bias serves the batch.
        query_positions = default_positions(tokens[:1]) if positions is None else positions
        bias = _relpos(cfg, True)(query_positions, query_positions)
        bias = bias + mask_to_bias(make_segment_mask(segment_ids, segment_ids), bias.dtype)
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        x = dropout(self.embedder(tokens), deterministic=deterministic)
        x = apply_layer_stack(
            EncoderLayer, cfg, cfg.num_encoder_layers, x, bias, deterministic=deterministic
        )
        x = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(x)
        return dropout(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Embedding, causal layers with cross-attention, final norm, output projection.

    Attributes:
      config: The model config.
      embedder: The token embedding shared with the encoder (and tied output, if configured).
    """

    config: T5Config
    embedder: Embed

    @nn.compact
    def __call__(
        self,
        encoded: Array,
        encoder_segment_ids: Array,
        tokens: Array,
        segment_ids: Array | None,
        positions: Array | None,
        *,
        deterministic: bool,
        decode: bool,
        max_decode_len: int | None,
        return_hidden: bool,
    ) -> Array:
        cfg = self.config
        stepping = decode and self.has_variable("cache", "cache_index")
        cache_index: Array | None
        if stepping:
            self_bias, cache_index = self._step_bias(tokens, max_decode_len)
            query_segments = jnp.ones_like(tokens)
        else:
            self_bias, cache_index = self._full_bias(tokens, segment_ids, positions, decode)
            query_segments = jnp.ones_like(tokens) if segment_ids is None else segment_ids
        cross_bias = mask_to_bias(
            make_segment_mask(query_segments, encoder_segment_ids), cfg.activation_dtype
        )
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        x = dropout(self.embedder(tokens), deterministic=deterministic)
        x = apply_layer_stack(
            DecoderLayer,
            cfg,
            cfg.num_decoder_layers,
            x,
            self_bias,
            encoded,
            cross_bias,
            cache_index,
            deterministic=deterministic,
            decode=decode,
        )
        x = RMSNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="decoder_norm")(x)
        x = dropout(x, deterministic=deterministic)
        if cfg.tie_word_embeddings:
            # T5 1.0 rescales before reusing the embedding as the output projection.
            x = x * cfg.emb_dim**-0.5
        if return_hidden:
            return x
        if cfg.tie_word_embeddings:
            logits = self.embedder.attend(x)
        else:
            logits = nn.Dense(
                cfg.vocab_size,
                use_bias=False,
                dtype=cfg.activation_dtype,
                param_dtype=jnp.float32,
                name="logits_dense",
                kernel_init=nn.with_logical_partitioning(
                    normal_init(cfg.emb_dim**-0.5), ("embed", "vocab")
                ),
            )(x)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32)

    def _full_bias(
        self, tokens: Array, segment_ids: Array | None, positions: Array | None, decode: bool
    ) -> tuple[Array, None]:
        """Causal bias over a whole sequence; in decode mode also creates the step counter."""
        if decode:
            self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        if positions is None:
            positions = default_positions(tokens[:1])
        bias = _relpos(self.config, False)(positions, positions)
        # Causality follows the row index; segments (if packed) cut rows into examples.
        index = default_positions(tokens)
        mask = make_causal_mask(index, index)
        if segment_ids is not None:
            mask = mask & make_segment_mask(segment_ids, segment_ids)
        return bias + mask_to_bias(mask, bias.dtype), None

    def _step_bias(self, tokens: Array, max_decode_len: int | None) -> tuple[Array, Array]:
        """Bias of one cached decoding step: the query sits at `cache_index`."""
        if max_decode_len is None:
            raise ValueError("Decoder: max_decode_len is required for cached decoding steps.")
        if tokens.shape[1] != 1:
            raise ValueError(
                f"Decoder: cached decoding takes one token per step, got {tokens.shape[1]}."
            )
        counter = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        index = counter.value
        counter.value = index + 1
        key_positions = jnp.arange(max_decode_len, dtype=jnp.int32)[None, :]
        query_positions = jnp.full((1, 1), index, jnp.int32)
        bias = _relpos(self.config, False)(query_positions, key_positions)
        mask = (key_positions <= index)[:, None, None, :]  # [1, 1, 1, max_decode_len]
        return bias + mask_to_bias(mask, bias.dtype), index


# ------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------
class EncoderDecoder(nn.Module):
    """T5 encoder-decoder returning float32 logits.

    Attributes:
      config: The model config.
    """

    config: T5Config

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(
        self,
        encoder_input_tokens: Array,
        *,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        enable_dropout: bool = False,
    ) -> Array:
        """Encodes [batch, enc_len] tokens into [batch, enc_len, embed] states."""
        return self.encoder(
            encoder_input_tokens, encoder_segment_ids, encoder_positions, not enable_dropout
        )

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        *,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        enable_dropout: bool = False,
        decode: bool = False,
        max_decode_len: int | None = None,
        return_hidden: bool = False,
    ) -> Array:
        """Runs the decoder on `encoded` states.

        With `decode=True` the first call (full-length `decoder_input_tokens`
        [batch, max_decode_len], mutable "cache") creates the key/value cache; every later
        call takes one token [batch, 1] and `max_decode_len`, and returns its logits.

        Args:
          encoded: Encoder output [batch, enc_len, embed].
          encoder_input_tokens: [batch, enc_len]; masks padding when unpacked.
          decoder_input_tokens: [batch, dec_len], starting with 0.
          encoder_segment_ids: Packed encoder segments (they mask the cross-attention).
          decoder_segment_ids: Packed decoder segments.
          decoder_positions: Per-segment decoder positions.
          enable_dropout: Apply dropout (training).
          decode: Use the key/value cache.
          max_decode_len: Cache length, required for cached steps.
          return_hidden: Return the final hidden states instead of logits.

        Returns:
          Logits [batch, dec_len, vocab] float32, or hidden states [batch, dec_len, embed].
        """
        if encoder_segment_ids is None:
            encoder_segment_ids = (encoder_input_tokens > 0).astype(jnp.int32)
        return self.decoder(
            encoded,
            encoder_segment_ids,
            decoder_input_tokens,
            decoder_segment_ids,
            decoder_positions,
            deterministic=not enable_dropout,
            decode=decode,
            max_decode_len=max_decode_len,
            return_hidden=return_hidden,
        )

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        *,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        enable_dropout: bool = False,
        return_hidden: bool = False,
    ) -> Array:
        """Teacher-forced forward pass.

        Args:
          encoder_input_tokens: [batch, enc_len] int.
          decoder_input_tokens: [batch, dec_len] int (targets shifted right, starting at 0).
          encoder_segment_ids: [batch, enc_len] packed segment ids (0 = padding) or None.
          decoder_segment_ids: [batch, dec_len] packed segment ids or None.
          encoder_positions: [batch, enc_len] per-segment positions or None.
          decoder_positions: [batch, dec_len] per-segment positions or None.
          enable_dropout: Apply dropout (training).
          return_hidden: Return final decoder hidden states [batch, dec_len, embed], scaled
            so that `logits == hidden @ output_kernel(params)`.

        Returns:
          float32 logits [batch, dec_len, vocab], or the hidden states.
        """
        encoded = self.encode(
            encoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            encoder_positions=encoder_positions,
            enable_dropout=enable_dropout,
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            decoder_positions=decoder_positions,
            enable_dropout=enable_dropout,
            return_hidden=return_hidden,
        )


def output_kernel(params: Params) -> Array:
    """The [embed, vocab] output projection: `logits == hidden @ output_kernel(params)`."""
    params = params.get("params", params)
    decoder = params["decoder"]
    if "logits_dense" in decoder:
        return decoder["logits_dense"]["kernel"]
    return params["token_embedder"]["embedding"].T


def _dummy_inputs(batch: int = 1, length: int = 2) -> tuple[Array, Array]:
    return jnp.ones((batch, length), jnp.int32), jnp.ones((batch, length), jnp.int32)


def init_params(config: T5Config, rng: Array) -> Params:
    """Randomly initialises the float32 parameters (plain arrays, no partitioning boxes)."""
    boxed = EncoderDecoder(config).init(rng, *_dummy_inputs())["params"]
    return nn.unbox(boxed)


def abstract_params(config: T5Config) -> Params:
    """Shapes and dtypes of the parameters (`jax.ShapeDtypeStruct` leaves), without compute."""
    boxed = jax.eval_shape(
        lambda: EncoderDecoder(config).init(jax.random.key(0), *_dummy_inputs())["params"]
    )
    return nn.unbox(boxed)


def param_logical_axes(config: T5Config) -> Params:
    """Logical axis names of every parameter, as `PartitionSpec`s of logical names."""
    boxed = jax.eval_shape(
        lambda: EncoderDecoder(config).init(jax.random.key(0), *_dummy_inputs())["params"]
    )
    return nn.get_partition_spec(boxed)


def _forward_flops_per_token(
    config: T5Config, own_length: int, cross_length: int, *, decoder: bool
) -> float:
    """Forward matmul FLOPs of one token through one layer stack (2 FLOPs per MAC)."""
    d, inner = config.emb_dim, config.num_heads * config.head_dim
    mlp_in = 2 if config.feed_forward == "gated-gelu" else 1
    attention_proj = 4 * d * inner  # q, k, v, o
    attention_scores = 2 * own_length * inner  # q.k and probs.v
    mlp = (mlp_in + 1) * d * config.mlp_dim
    per_layer = attention_proj + attention_scores + mlp
    if decoder:
        per_layer += 4 * d * inner + 2 * cross_length * inner
        layers = config.num_decoder_layers
        return 2.0 * (layers * per_layer + d * config.vocab_size)
    return 2.0 * config.num_encoder_layers * per_layer


def estimate_train_flops_per_step(
    config: T5Config, *, batch_size: int, inputs_length: int, targets_length: int
) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3x forward), for MFU.

    Counted on the padded shapes: padding costs as much as real tokens.

    Args:
        config: the model.
        batch_size: rows per step (global).
        inputs_length: encoder length per row.
        targets_length: decoder length per row.
    """
    encoder = _forward_flops_per_token(config, inputs_length, 0, decoder=False)
    decoder = _forward_flops_per_token(config, targets_length, inputs_length, decoder=True)
    forward = batch_size * (inputs_length * encoder + targets_length * decoder)
    return 3.0 * forward


# ------------------------------------------------------------------------------------------
# The model interface (flan_jax.models.interface.Model) for the trainer and the predictor
# ------------------------------------------------------------------------------------------
_PACKING_FEATURES = (
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
)


@flax.struct.dataclass
class T5DecodeState:
    """What one cached decoding step of the encoder-decoder reads.

    Attributes:
      cache: the decoder's key/value cache and step counter.
      encoded: encoder output [batch, enc_len, embed].
      encoder_input_tokens: [batch, enc_len]; masks the cross-attention to padding.
      max_decode_len: the cache length (static).
    """

    cache: Any
    encoded: Array
    encoder_input_tokens: Array
    max_decode_len: int = flax.struct.field(pytree_node=False)


# How many T5Models this process built: tests assert that a bad config fails before one is.
_models_built = 0


def models_built() -> int:
    """The number of `T5Model`s built so far in this process."""
    return _models_built


@dataclasses.dataclass(frozen=True)
class T5Model:
    """The T5 encoder-decoder behind :class:`flan_jax.models.interface.Model`.

    Attributes:
      config: the architecture.
    """

    config: T5Config

    def __post_init__(self) -> None:
        global _models_built
        _models_built += 1

    @property
    def module(self) -> EncoderDecoder:
        return EncoderDecoder(self.config)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def feature_format(self) -> EncoderDecoderFormat:
        return EncoderDecoderFormat()

    def init_params(self, rng: Array) -> Params:
        return init_params(self.config, rng)

    def abstract_params(self) -> Params:
        return abstract_params(self.config)

    def param_logical_axes(self) -> Params:
        return param_logical_axes(self.config)

    def output_kernel(self, params: Params) -> Array:
        return output_kernel(params)

    def hidden_states(
        self, params: Params, batch: Mapping[str, Array], *, dropout_rng: Array | None = None
    ) -> Array:
        # Any: flax types `apply`'s named options, which **packing would otherwise match.
        packing: dict[str, Any] = {name: batch[name] for name in _PACKING_FEATURES if name in batch}
        hidden = self.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            enable_dropout=dropout_rng is not None,
            return_hidden=True,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
            **packing,
        )
        return cast(Array, hidden)  # not mutable, so `apply` returns the output alone

    def train_flops_per_step(self, *, batch_size: int, feature_lengths: Mapping[str, int]) -> float:
        return estimate_train_flops_per_step(
            self.config,
            batch_size=batch_size,
            inputs_length=feature_lengths["inputs"],
            targets_length=feature_lengths["targets"],
        )

    def make_scoring_batch(self, inputs: Array, targets: Array) -> dict[str, Array]:
        targets = jnp.asarray(targets)
        return {
            "encoder_input_tokens": jnp.asarray(inputs),
            "decoder_input_tokens": jnp.pad(targets[:, :-1], ((0, 0), (1, 0))),
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets > 0).astype(jnp.float32),
        }

    def init_decode_state(
        self, params: Params, inputs: Array, *, max_decode_len: int
    ) -> T5DecodeState:
        module = self.module
        encoded = cast(  # not mutable, so `apply` returns the output alone
            Array, module.apply({"params": params}, inputs, method=EncoderDecoder.encode)
        )
        dummy = jnp.zeros((inputs.shape[0], max_decode_len), jnp.int32)
        _, variables = module.apply(
            {"params": params},
            encoded,
            inputs,
            dummy,
            decode=True,
            method=EncoderDecoder.decode,
            mutable=["cache"],
        )
        return T5DecodeState(variables["cache"], encoded, inputs, max_decode_len)

    def decode_step(
        self, params: Params, state: T5DecodeState, tokens: Array
    ) -> tuple[Array, T5DecodeState]:
        logits, variables = self.module.apply(
            {"params": params, "cache": state.cache},
            state.encoded,
            state.encoder_input_tokens,
            tokens[:, None],
            decode=True,
            max_decode_len=state.max_decode_len,
            method=EncoderDecoder.decode,
            mutable=["cache"],
        )
        return logits[:, 0, :], dataclasses.replace(state, cache=variables["cache"])

    def reorder_decode_state(self, state: T5DecodeState, indices: Array) -> T5DecodeState:
        # Beams of one input share its encoder rows, so only the self-attention cache moves.
        scanned = self.config.scan_layers

        def gather(path: tuple, leaf: Array) -> Array:
            if leaf.ndim == 0:
                return leaf
            # Scanned layers stack the cache along a leading layer axis.
            stacked = scanned and any(getattr(k, "key", None) == "layers" for k in path)
            return jnp.take(leaf, indices, axis=1 if stacked else 0)

        return dataclasses.replace(
            state, cache=jax.tree_util.tree_map_with_path(gather, state.cache)
        )
