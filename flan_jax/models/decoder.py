"""Decoder-only transformers (OPT, Llama, Mistral), read top to bottom: masks, layer, model.

One module covers both families through `DecoderConfig`: OPT (learned positions with
offset 2, LayerNorm with bias, ReLU, biases, optional project_in/out, post-norm for 350m)
and Llama / Mistral (rotary positions with Llama 3 scaling, RMSNorm, SwiGLU, grouped-query
attention, sliding window). The numerics follow transformers' `OPTForCausalLM` and
`LlamaForCausalLM` so converted checkpoints give the same logits.

Parameter tree (unscanned; with `scan_layers` the `layers_{i}` subtrees become one `layers`
subtree whose leaves carry a leading "layers" axis). P is `word_embed_proj_dim` or `emb_dim`:

    token_embedder/embedding                 [vocab, P]         ("vocab", "embed")
    position_embedder/embedding              [max_length + 2, embed]  ("abspos", "embed")
    project_in/kernel                        [P, embed]         ("embed_proj", "embed")
    layers_{i}/attention_norm/{scale,bias}   [embed]            bias: layernorm only
    layers_{i}/attention/query/kernel        [embed, heads, kv]     bias [heads, kv]
    layers_{i}/attention/{key,value}/kernel  [embed, kv_heads, kv]  bias [kv_heads, kv]
    layers_{i}/attention/out/kernel          [heads, kv, embed]     bias [embed]
    layers_{i}/mlp_norm/{scale,bias}         [embed]
    layers_{i}/mlp/{wi_0, wi_1 | wi}/kernel  [embed, mlp]       bias [mlp]
    layers_{i}/mlp/wo/kernel                 [mlp, embed]       bias [embed]
    final_norm/{scale,bias}                  [embed]            pre-norm only
    project_out/kernel                       [embed, P]         ("embed", "embed_proj")
    logits_dense/kernel                      [P, vocab]         ("embed", "vocab"), untied only

The position table exists with learned positions only, project_in / project_out when P
differs from embed.

Projection biases exist only with `use_bias`.

Batches (t5x's decoder feature converter names, built by `flan_jax.data.packing`) hold
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`,
`decoder_segment_ids` (0 = padding; token 0 may be a real token), `decoder_positions` and,
for prefix-LM models, `decoder_causal_attention`. A position sees the keys of its own
segment at or before it, and with prefix-LM also every key of the prefix when it is in the
prefix itself. Worked example, prefix-LM, one segment, causal_attention [1, 1, 0, 0]: rows
(queries) see [1 1 0 0], [1 1 0 0], [1 1 1 0], [1 1 1 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, cast

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from flan_jax.data import packing
from flan_jax.models.config import DecoderConfig
from flan_jax.models.layers import (
    EinsumDense,
    Embed,
    LayerNorm,
    MlpBlock,
    MultiHeadAttention,
    RMSNorm,
    Rotary,
    apply_layer_stack,
    default_positions,
    make_causal_mask,
    make_segment_mask,
    mask_to_bias,
    normal_init,
)

Array = jax.Array
Params = dict[str, Any]

# OPT's learned position table starts its rows at position + 2 (fairseq's padding offset).
OPT_POSITION_OFFSET = 2


# ------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------
def attention_bias(
    config: DecoderConfig, *, segment_ids: Array, causal_attention: Array | None = None
) -> Array:
    """Additive self-attention bias [batch, 1, length, length] of a (packed) batch.

    Causality follows the row index; segments cut a row into examples; with
    `causal_attention` (prefix-LM) the prefix positions also see each other; a sliding
    window hides keys `sliding_window` or more positions back.

    Args:
      config: Supplies `sliding_window` and the activation dtype.
      segment_ids: [batch, length] int, 0 on padding.
      causal_attention: [batch, length], 1 on the prefix (bidirectional) positions.
    """
    index = default_positions(segment_ids)
    visible = make_causal_mask(index, index)
    if causal_attention is not None:
        prefix = causal_attention > 0
        visible = visible | (prefix[:, None, :, None] & prefix[:, None, None, :])
    visible = visible & make_segment_mask(segment_ids, segment_ids)
    if config.sliding_window is not None:
        distance = index[:, :, None] - index[:, None, :]
        visible = visible & (distance < config.sliding_window)[:, None, :, :]
    return mask_to_bias(visible, config.activation_dtype)


def step_bias(config: DecoderConfig, *, cache_index: Array, cache_length: int) -> Array:
    """Bias [batch, 1, 1, cache_length] of one cached step whose token sits at `cache_index`."""
    slots = jnp.arange(cache_length, dtype=jnp.int32)[None, :]
    query = cache_index[:, None]
    visible = slots <= query
    if config.sliding_window is not None:
        visible = visible & (query - slots < config.sliding_window)
    return mask_to_bias(visible[:, None, None, :], config.activation_dtype)


# ------------------------------------------------------------------------------------------
# Layer
# ------------------------------------------------------------------------------------------
def _norm(config: DecoderConfig, name: str) -> nn.Module:
    kind = LayerNorm if config.norm == "layernorm" else RMSNorm
    return kind(config.norm_epsilon, config.activation_dtype, name=name)


def _rotary(config: DecoderConfig) -> Rotary | None:
    if config.positions != "rotary":
        return None
    return Rotary(
        config.rope_theta,
        config.rope_scaling_factor,
        config.rope_low_freq_factor,
        config.rope_high_freq_factor,
        config.rope_original_max_length,
    )


class DecoderOnlyLayer(nn.Module):
    """Self-attention then feed-forward, each a residual block, normed before (pre-norm) or
    after the residual sum (OPT-350m).

    Attributes:
      config: The model config.
      deterministic: Disables dropout.
      decode: Use and update the key/value cache.
      cache_length: Cache slots created by a prefill (decode mode, first call).
      scanned: Return `(x, None)` as `nn.scan` expects of its body.
    """

    config: DecoderConfig
    deterministic: bool = True
    decode: bool = False
    cache_length: int | None = None
    scanned: bool = False

    @nn.compact
    def __call__(
        self, x: Array, bias: Array | None, positions: Array, cache_index: Array | None
    ) -> Array | tuple[Array, None]:
        cfg, dtype, det = self.config, self.config.activation_dtype, self.deterministic
        attention = MultiHeadAttention(
            cfg.num_heads,
            cfg.head_dim,
            dtype,
            cfg.dropout_rate,
            num_kv_heads=cfg.num_kv_heads,
            query_scale=cfg.head_dim**-0.5,
            use_bias=cfg.use_bias,
            rotary=_rotary(cfg),
            name="attention",
        )
        mlp = MlpBlock(
            cfg.mlp_dim, cfg.activation, dtype, cfg.dropout_rate, cfg.use_bias, name="mlp"
        )

        def attend(h: Array) -> Array:
            return attention(
                h,
                h,
                bias,
                deterministic=det,
                decode=self.decode,
                cache_index=cache_index,
                positions=positions,
                cache_length=self.cache_length,
            )

        dropout = nn.Dropout(cfg.dropout_rate)
        blocks = (
            (_norm(cfg, "attention_norm"), attend),
            (_norm(cfg, "mlp_norm"), lambda h: mlp(h, deterministic=det)),
        )
        for norm, block in blocks:
            if cfg.pre_norm:
                x = x + dropout(block(norm(x)), deterministic=det)
            else:
                x = norm(x + dropout(block(x), deterministic=det))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return (x, None) if self.scanned else x


# ------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------
class DecoderOnly(nn.Module):
    """Embeddings, the layer stack, the final norm and the output projection.

    Attributes:
      config: The model config.
    """

    config: DecoderConfig

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        positions: Array,
        bias: Array | None,
        *,
        enable_dropout: bool = False,
        decode: bool = False,
        cache_length: int | None = None,
        cache_index: Array | None = None,
        return_hidden: bool = False,
    ) -> Array:
        """Runs the model on `tokens` [batch, length].

        Args:
          tokens: [batch, length] int input tokens (the start token first).
          positions: [batch, length] int positions (per segment when packed).
          bias: The self-attention bias (`attention_bias` / `step_bias`).
          enable_dropout: Apply dropout (training).
          decode: Use the key/value cache: a prefill when it does not exist yet (it is then
            created with `cache_length` slots), else one step of one token per row written
            at `cache_index` [batch].
          cache_length: Cache slots a prefill creates.
          cache_index: Slot of each row's token in a cached step.
          return_hidden: Return the final hidden states [batch, length, P] (after
            project_out), with `logits == hidden @ output_kernel(params)`.

        Returns:
          float32 logits [batch, length, vocab], or the hidden states.
        """
        cfg, dtype = self.config, self.config.activation_dtype
        deterministic = not enable_dropout
        embed_dim, projected = cfg.embed_dim, cfg.embed_dim != cfg.emb_dim
        embedder = Embed(
            cfg.vocab_size, embed_dim, dtype, stddev=embed_dim**-0.5, name="token_embedder"
        )
        x = embedder(tokens)
        if projected:
            x = EinsumDense(
                (embed_dim, cfg.emb_dim),
                ("embed_proj", "embed"),
                "bld,de->ble",
                embed_dim**-0.5,
                dtype,
                name="project_in",
            )(x)
        if cfg.positions == "learned":
            table = Embed(
                cfg.max_length + OPT_POSITION_OFFSET,
                cfg.emb_dim,
                dtype,
                axes=("abspos", "embed"),
                stddev=cfg.emb_dim**-0.5,
                name="position_embedder",
            )
            # Clipped so padding beyond the table reads a finite row (it is masked anyway).
            x = x + table(jnp.minimum(positions, cfg.max_length - 1) + OPT_POSITION_OFFSET)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = apply_layer_stack(
            DecoderOnlyLayer,
            cfg,
            cfg.num_layers,
            x,
            bias,
            positions,
            cache_index,
            deterministic=deterministic,
            decode=decode,
            cache_length=cache_length,
        )
        if cfg.pre_norm:  # post-norm OPT (350m) ends with its last layer's norm
            x = _norm(cfg, "final_norm")(x)
        if projected:
            x = EinsumDense(
                (cfg.emb_dim, embed_dim),
                ("embed", "embed_proj"),
                "bld,de->ble",
                cfg.emb_dim**-0.5,
                dtype,
                name="project_out",
            )(x)
        if return_hidden:
            return x
        if cfg.tie_word_embeddings:
            logits = embedder.attend(x)
        else:
            logits = nn.Dense(
                cfg.vocab_size,
                use_bias=False,
                dtype=dtype,
                param_dtype=jnp.float32,
                name="logits_dense",
                kernel_init=nn.with_logical_partitioning(
                    normal_init(embed_dim**-0.5), ("embed", "vocab")
                ),
            )(x)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32)


def output_kernel(params: Params) -> Array:
    """The [P, vocab] output projection: `logits == hidden @ output_kernel(params)`."""
    params = params.get("params", params)
    if "logits_dense" in params:
        return params["logits_dense"]["kernel"]
    return params["token_embedder"]["embedding"].T


def _init_variables(config: DecoderConfig, rng: Array) -> Any:
    tokens = jnp.ones((1, 2), jnp.int32)
    return DecoderOnly(config).init(rng, tokens, default_positions(tokens), None)["params"]


def init_params(config: DecoderConfig, rng: Array) -> Params:
    """Randomly initialises the float32 parameters (plain arrays, no partitioning boxes)."""
    return nn.unbox(_init_variables(config, rng))


def abstract_params(config: DecoderConfig) -> Params:
    """Shapes and dtypes of the parameters (`jax.ShapeDtypeStruct` leaves), without compute."""
    return nn.unbox(jax.eval_shape(lambda: _init_variables(config, jax.random.key(0))))


def param_logical_axes(config: DecoderConfig) -> Params:
    """Logical axis names of every parameter, as `PartitionSpec`s of logical names."""
    return nn.get_partition_spec(jax.eval_shape(lambda: _init_variables(config, jax.random.key(0))))


def estimate_train_flops_per_step(config: DecoderConfig, *, batch_size: int, length: int) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3x forward), for MFU.

    Counted on the padded shapes (2 FLOPs per multiply-add).
    """
    d, inner = config.emb_dim, config.num_heads * config.head_dim
    kv_inner = config.num_kv_heads * config.head_dim
    mlp_in = 2 if config.activation == "swiglu" else 1
    per_layer = (
        2 * d * inner  # query and out
        + 2 * d * kv_inner  # key and value
        + 2 * length * inner  # q.k and probs.v
        + (mlp_in + 1) * d * config.mlp_dim
    )
    per_token = config.num_layers * per_layer + config.embed_dim * config.vocab_size
    if config.embed_dim != d:
        per_token += 2 * d * config.embed_dim  # project_in and project_out
    return 3.0 * 2.0 * batch_size * length * per_token


# ------------------------------------------------------------------------------------------
# The model interface (flan_jax.models.interface.Model) for the trainer and the predictor
# ------------------------------------------------------------------------------------------
def _row_lengths(tokens: Array) -> Array:
    """[batch] lengths of 0-padded rows: 1 + the index of the last nonzero token (0 if none)."""
    index = jnp.arange(1, tokens.shape[1] + 1, dtype=jnp.int32)
    return jnp.max(jnp.where(tokens != 0, index, 0), axis=1)


@flax.struct.dataclass
class DecoderDecodeState:
    """What one cached decoding step of the decoder-only model reads.

    The prefill fills the cache with `[start] ++ prompt` of every row (right-padded). The
    first step re-feeds each row's last prompt token at its own slot (rewriting the same
    key and value) so that it yields the logits of the first generated token; every later
    step writes the fed token at the row's next slot.

    Attributes:
      cache: The layers' key/value caches ([batch, cache_length, kv_heads, kv] leaves).
      index: [batch] slot (= position) of the token the next step feeds.
      last_prompt_token: [batch] the prompt's last token, fed by the first step.
      started: Whether the first step is done (scalar bool).
      cache_length: The cache slots (static).
    """

    cache: Any
    index: Array
    last_prompt_token: Array
    started: Array
    cache_length: int = flax.struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class DecoderModel:
    """The decoder-only transformer behind :class:`flan_jax.models.interface.Model`.

    Attributes:
      config: the architecture.
    """

    config: DecoderConfig

    @property
    def module(self) -> DecoderOnly:
        return DecoderOnly(self.config)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def feature_format(self) -> packing.DecoderOnlyFormat:
        """The pipeline's row format: inputs and targets in one decoder row."""
        return packing.DecoderOnlyFormat(
            start_token_id=self.config.start_token_id, prefix_lm=self.config.prefix_lm
        )

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
        tokens = batch["decoder_input_tokens"]
        segment_ids = batch.get("decoder_segment_ids")
        if segment_ids is None:  # one unpadded example per row
            segment_ids = jnp.ones_like(tokens)
        positions = batch.get("decoder_positions")
        if positions is None:
            positions = default_positions(tokens)
        causal_attention = None
        if self.config.prefix_lm:
            if "decoder_causal_attention" not in batch:
                raise ValueError(
                    "DecoderModel: a prefix_lm model needs 'decoder_causal_attention' in the "
                    f"batch (features: {sorted(batch)}); build batches with the model's "
                    "feature_format."
                )
            causal_attention = batch["decoder_causal_attention"]
        bias = attention_bias(
            self.config, segment_ids=segment_ids, causal_attention=causal_attention
        )
        hidden = self.module.apply(
            {"params": params},
            tokens,
            positions,
            bias,
            enable_dropout=dropout_rng is not None,
            return_hidden=True,
            rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        )
        return cast(Array, hidden)  # not mutable, so `apply` returns the output alone

    def train_flops_per_step(self, *, batch_size: int, feature_lengths: Mapping[str, int]) -> float:
        # Decoder rows hold inputs and targets (t5x's PrefixLM lengths: L = inputs + targets).
        length = feature_lengths["inputs"] + feature_lengths["targets"]
        return estimate_train_flops_per_step(self.config, batch_size=batch_size, length=length)

    def make_scoring_batch(self, inputs: Array, targets: Array) -> dict[str, Array]:
        """One row per pair: `[start] ++ inputs ++ targets`, the loss on the targets.

        Rows are `input_len + target_len` long; row i holds its own inputs (up to their last
        nonzero token) followed directly by its targets, then padding (segment id 0).
        """
        inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
        batch, input_len = inputs.shape
        target_len = targets.shape[1]
        n = _row_lengths(inputs)[:, None]
        m = _row_lengths(targets)[:, None]
        col = default_positions(jnp.zeros((batch, input_len + target_len), jnp.int32))
        from_inputs = jnp.take_along_axis(inputs, jnp.clip(col, 0, input_len - 1), axis=1)
        from_targets = jnp.take_along_axis(targets, jnp.clip(col - n, 0, target_len - 1), axis=1)
        real = col < n + m
        sequence = jnp.where(col < n, from_inputs, jnp.where(real, from_targets, 0))
        start = jnp.full((batch, 1), self.config.start_token_id, sequence.dtype)
        shifted = jnp.concatenate([start, sequence[:, :-1]], axis=1)
        features = {
            "decoder_input_tokens": jnp.where(real, shifted, 0),
            "decoder_target_tokens": sequence,
            "decoder_loss_weights": ((col >= n) & real).astype(jnp.float32),
            "decoder_segment_ids": real.astype(jnp.int32),
            "decoder_positions": jnp.where(real, col, 0),
        }
        if self.config.prefix_lm:
            features["decoder_causal_attention"] = ((col <= n) & real).astype(jnp.int32)
        return features

    def init_decode_state(
        self, params: Params, inputs: Array, *, max_decode_len: int
    ) -> DecoderDecodeState:
        batch, input_len = inputs.shape
        tokens = jnp.concatenate(
            [jnp.full((batch, 1), self.config.start_token_id, inputs.dtype), inputs], axis=1
        )
        lengths = _row_lengths(inputs) + 1  # the start token and the prompt
        positions = default_positions(tokens)
        real = (positions < lengths[:, None]).astype(jnp.int32)
        bias = attention_bias(
            self.config,
            segment_ids=real,
            causal_attention=real if self.config.prefix_lm else None,
        )
        cache_length = input_len + 1 + max_decode_len
        _, variables = self.module.apply(
            {"params": params},
            tokens,
            positions,
            bias,
            decode=True,
            cache_length=cache_length,
            return_hidden=True,
            mutable=["cache"],
        )
        last = jnp.take_along_axis(tokens, (lengths - 1)[:, None], axis=1)[:, 0]
        return DecoderDecodeState(
            variables["cache"], lengths - 1, last, jnp.zeros((), bool), cache_length
        )

    def decode_step(
        self, params: Params, state: DecoderDecodeState, tokens: Array
    ) -> tuple[Array, DecoderDecodeState]:
        fed = jnp.where(state.started, tokens, state.last_prompt_token)
        bias = step_bias(self.config, cache_index=state.index, cache_length=state.cache_length)
        hidden, variables = self.module.apply(
            {"params": params, "cache": state.cache},
            fed[:, None],
            state.index[:, None],
            bias,
            decode=True,
            cache_index=state.index,
            return_hidden=True,
            mutable=["cache"],
        )
        kernel = output_kernel(params).astype(hidden.dtype)
        logits = jnp.einsum("bd,dv->bv", hidden[:, 0], kernel).astype(jnp.float32)
        return logits, dataclasses.replace(
            state,
            cache=variables["cache"],
            index=state.index + 1,
            started=jnp.ones((), bool),
        )

    def reorder_decode_state(self, state: DecoderDecodeState, indices: Array) -> DecoderDecodeState:
        scanned = self.config.scan_layers

        def gather(leaf: Array) -> Array:
            # Scanned layers stack the cache along a leading layer axis.
            return jnp.take(leaf, indices, axis=1 if scanned else 0)

        return dataclasses.replace(
            state,
            cache=jax.tree_util.tree_map(gather, state.cache),
            index=state.index[indices],
            last_prompt_token=state.last_prompt_token[indices],
        )
