"""Transformer building blocks shared by the encoder-decoder and decoder-only models.

Everything here is architecture-agnostic: attention takes an additive bias that already holds
the mask (built from segment ids) and the relative position bias, so the same module serves
encoder self-attention, causal decoder self-attention, cross-attention and prefix-LM attention.

Parameters are float32 and carry logical axis names (t5x convention) through
`nn.with_logical_partitioning`; activations are constrained with `nn.with_logical_constraint`,
which is a no-op outside a mesh.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

# Added to attention logits of masked positions. Finite so fully masked rows (padding
# queries) give a uniform softmax instead of NaN.
MASK_BIAS = -1e10


def normal_init(stddev: float) -> Initializer:
    """A normal initializer with standard deviation `stddev` (the T5 initialisation scale)."""
    return nn.initializers.normal(stddev=stddev)


# ------------------------------------------------------------------------------------------
# Masks and positions
# ------------------------------------------------------------------------------------------
def make_segment_mask(query_segment_ids: Array, key_segment_ids: Array) -> Array:
    """Boolean mask letting a query see keys of its own segment; segment 0 is padding.

    Example: query segments [1, 1, 2] and key segments [1, 2, 0] give, per query row,
    [T, F, F], [T, F, F], [F, T, F].

    Args:
      query_segment_ids: [batch, q_len] int.
      key_segment_ids: [batch, k_len] int.

    Returns:
      [batch, 1, q_len, k_len] bool (the 1 broadcasts over heads).
    """
    same = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    valid = (query_segment_ids[:, :, None] > 0) & (key_segment_ids[:, None, :] > 0)
    return (same & valid)[:, None, :, :]


def make_causal_mask(query_positions: Array, key_positions: Array) -> Array:
    """Boolean mask letting a query see keys at the same or earlier positions.

    Args:
      query_positions: [batch, q_len] int positions of the queries.
      key_positions: [batch, k_len] int positions of the keys.

    Returns:
      [batch, 1, q_len, k_len] bool.
    """
    return (key_positions[:, None, :] <= query_positions[:, :, None])[:, None, :, :]


def mask_to_bias(mask: Array, dtype: jnp.dtype) -> Array:
    """Turns a boolean mask into an additive bias (0 where allowed, MASK_BIAS elsewhere)."""
    return jnp.where(mask, 0.0, MASK_BIAS).astype(dtype)


def default_positions(tokens: Array) -> Array:
    """Positions 0..length-1 for every row of `tokens` [batch, length]."""
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


def relative_position_bucket(
    relative_position: Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """Maps relative positions (key - query) to bucket ids, as Mesh TensorFlow T5 does.

    Half of the buckets (per direction) hold exact small distances, the other half
    logarithmically wider ranges up to `max_distance`; larger distances share the last bucket.
    Causal (unidirectional) buckets only distinguish past keys; future keys map to bucket 0.

    Args:
      relative_position: int array of key_position - query_position.
      bidirectional: Whether future keys get their own half of the buckets.
      num_buckets: Total number of buckets.
      max_distance: Distance from which all positions share the outermost bucket.

    Returns:
      int32 array of the same shape with values in [0, num_buckets).
    """
    buckets = jnp.zeros_like(relative_position, dtype=jnp.int32)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # float32 arithmetic in the reference's order, so the truncation matches it bucket for
    # bucket; the maximum avoids log(0) on entries that `is_small` discards anyway.
    ratio = jnp.maximum(distance, 1).astype(jnp.float32) / max_exact
    scaled = (
        jnp.log(ratio)
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact)
    )
    if_large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
    return buckets + jnp.where(is_small, distance.astype(jnp.int32), if_large)


# ------------------------------------------------------------------------------------------
# Modules
# ------------------------------------------------------------------------------------------
class EinsumDense(nn.Module):
    """A bias-free projection `einsum(equation, x, kernel)`.

    Unlike `nn.DenseGeneral`, which initialises a flattened 2-D kernel and reshapes it, the
    kernel is created at its final shape, so its logical axis names are valid under a mesh.

    Attributes:
      kernel_shape: Kernel shape; a 0 entry takes the size of the input's last axis.
      kernel_axes: Logical axis name of each kernel dimension.
      equation: The einsum contracting the input with the kernel.
      stddev: Standard deviation of the normal initialiser.
      dtype: Computation dtype (the float32 kernel is cast to it).
    """

    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    equation: str
    stddev: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = tuple(x.shape[-1] if size == 0 else size for size in self.kernel_shape)
        kernel = cast(  # `param` returns the unboxed array; flax types it as the box.
            Array,
            self.param(
                "kernel",
                nn.with_logical_partitioning(normal_init(self.stddev), self.kernel_axes),
                shape,
                jnp.float32,
            ),
        )
        return jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))


class RMSNorm(nn.Module):
    """T5 layer norm: scale by the root mean square, no mean subtraction and no bias.

    Attributes:
      epsilon: Added to the mean square before the reciprocal square root.
      dtype: Output dtype; the statistics are always computed in float32.
    """

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = cast(  # `param` returns the unboxed array; flax types it as the box.
            Array,
            self.param(
                "scale",
                nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                (x.shape[-1],),
                jnp.float32,
            ),
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(
            jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon
        )
        return (normed * scale).astype(self.dtype)


class RelativePositionBias(nn.Module):
    """Learned per-head bias indexed by bucketed relative position (one table per stack).

    Attributes:
      num_buckets: Number of relative position buckets.
      max_distance: Distance from which positions share the outermost bucket.
      num_heads: Number of attention heads.
      bidirectional: True in the encoder, False (causal buckets) in the decoder.
      dtype: Output dtype.
    """

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array) -> Array:
        """Returns the bias [batch, heads, q_len, k_len] for positions [batch, len]."""
        table = cast(  # [heads, buckets]; `param` returns the unboxed array.
            Array,
            self.param(
                "rel_embedding",
                nn.with_logical_partitioning(normal_init(1.0), ("heads", "relpos_buckets")),
                (self.num_heads, self.num_buckets),
                jnp.float32,
            ),
        )
        relative = key_positions[:, None, :] - query_positions[:, :, None]  # [b, q, k]
        buckets = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = jnp.take(table, buckets, axis=1)  # [heads, b, q, k]
        return jnp.transpose(bias, (1, 0, 2, 3)).astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Dot-product attention without query scaling (T5 folds it into the initialisation).

    With `decode=True` the keys and values are cached in the "cache" collection:
    `cache_mode="append"` (self-attention) writes each step's key/value at `cache_index` and
    attends to the whole cache; `cache_mode="static"` (cross-attention) projects the memory
    once, when the cache is created, and reuses it at every step. The cache is created by a
    first `decode=True` call with the full-length inputs.

    Attributes:
      num_heads: Number of heads.
      head_dim: Width of each head.
      dtype: Activation dtype.
      dropout_rate: Dropout on the attention weights.
      cache_mode: "append" or "static", see above.
    """

    num_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0
    cache_mode: str = "append"

    def _projection(self, name: str, stddev: float) -> EinsumDense:
        return EinsumDense(
            (0, self.num_heads, self.head_dim),
            ("embed", "heads", "kv"),
            "bld,dhk->blhk",
            stddev,
            self.dtype,
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        bias: Array | None,
        *,
        deterministic: bool = True,
        decode: bool = False,
        cache_index: Array | None = None,
    ) -> Array:
        """Attends from `inputs_q` [batch, q_len, embed] to `inputs_kv` [batch, kv_len, embed].

        Args:
          inputs_q: Query-side activations.
          inputs_kv: Memory the keys and values are projected from.
          bias: Additive bias broadcastable to [batch, heads, q_len, kv_len] (mask and
            relative positions); during cached decoding its kv_len is the cache length.
          deterministic: Disables dropout.
          decode: Use and update the key/value cache.
          cache_index: Scalar position written by an "append" cache step.

        Returns:
          [batch, q_len, embed] in `dtype`.
        """
        emb_dim = inputs_q.shape[-1]
        query = self._projection("query", (emb_dim * self.head_dim) ** -0.5)(inputs_q)
        key_proj = self._projection("key", emb_dim**-0.5)
        value_proj = self._projection("value", emb_dim**-0.5)
        if decode:
            key, value = self._cached_key_value(inputs_kv, key_proj, value_proj, cache_index)
        else:
            key, value = key_proj(inputs_kv), value_proj(inputs_kv)
        query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))
        key = nn.with_logical_constraint(key, ("batch", "length", "heads", "kv"))
        value = nn.with_logical_constraint(value, ("batch", "length", "heads", "kv"))

        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)  # [batch, heads, q, k]
        if bias is not None:
            logits = logits + bias.astype(logits.dtype)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, value)  # [batch, q, heads, kv]
        out = EinsumDense(
            (self.num_heads, self.head_dim, emb_dim),
            ("heads", "kv", "embed"),
            "blhk,hkd->bld",
            (self.num_heads * self.head_dim) ** -0.5,
            self.dtype,
            name="out",
        )(mixed)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))

    def _cached_key_value(
        self,
        inputs_kv: Array,
        key_proj: nn.Module,
        value_proj: nn.Module,
        cache_index: Array | None,
    ) -> tuple[Array, Array]:
        """Reads (and for "append", updates) the cache; creates it on the first call."""
        initialized = self.has_variable("cache", "cached_key")
        if self.cache_mode == "static":
            if initialized:
                return (
                    self.get_variable("cache", "cached_key"),
                    self.get_variable("cache", "cached_value"),
                )
            key, value = key_proj(inputs_kv), value_proj(inputs_kv)
            self.put_variable("cache", "cached_key", key)
            self.put_variable("cache", "cached_value", value)
            return key, value
        if self.cache_mode != "append":
            raise ValueError(f"cache_mode must be 'append' or 'static', got {self.cache_mode!r}.")
        key, value = key_proj(inputs_kv), value_proj(inputs_kv)
        if not initialized:
            # The creating call sees the full decode length and only sizes the cache.
            self.put_variable("cache", "cached_key", jnp.zeros_like(key))
            self.put_variable("cache", "cached_value", jnp.zeros_like(value))
            return key, value
        if cache_index is None:
            raise ValueError("An 'append' cache step needs cache_index, the position to write.")
        start = (0, cache_index, 0, 0)
        cached_key = jax.lax.dynamic_update_slice(
            self.get_variable("cache", "cached_key"), key.astype(self.dtype), start
        )
        cached_value = jax.lax.dynamic_update_slice(
            self.get_variable("cache", "cached_value"), value.astype(self.dtype), start
        )
        self.put_variable("cache", "cached_key", cached_key)
        self.put_variable("cache", "cached_value", cached_value)
        return cached_key, cached_value


class MlpBlock(nn.Module):
    """Feed-forward block: gated GELU (T5 1.1) or ReLU (T5 1.0), no biases.

    Attributes:
      mlp_dim: Hidden width.
      kind: "gated-gelu" or "relu".
      dtype: Activation dtype.
      dropout_rate: Dropout on the hidden activations.
    """

    mlp_dim: int
    kind: str = "gated-gelu"
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0

    def _dense(self, features: int, axes: tuple[str, str], fan_in: int, name: str) -> nn.Dense:
        return nn.Dense(
            features,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
            kernel_init=nn.with_logical_partitioning(normal_init(fan_in**-0.5), axes),
        )

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        """Maps [batch, length, embed] to the same shape."""
        emb_dim = x.shape[-1]
        if self.kind == "gated-gelu":
            # The tanh approximation of GELU, as the published T5 1.1 checkpoints use.
            gate = jax.nn.gelu(
                self._dense(self.mlp_dim, ("embed", "mlp"), emb_dim, "wi_0")(x), approximate=True
            )
            hidden = gate * self._dense(self.mlp_dim, ("embed", "mlp"), emb_dim, "wi_1")(x)
        elif self.kind == "relu":
            hidden = jax.nn.relu(self._dense(self.mlp_dim, ("embed", "mlp"), emb_dim, "wi")(x))
        else:
            raise ValueError(f"MlpBlock.kind must be 'gated-gelu' or 'relu', got {self.kind!r}.")
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
        out = self._dense(emb_dim, ("mlp", "embed"), self.mlp_dim, "wo")(hidden)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class Embed(nn.Module):
    """Token embedding table [vocab, embed], also usable as a tied output projection.

    Attributes:
      num_embeddings: Vocabulary size.
      features: Embedding width.
      dtype: Activation dtype of the looked-up vectors.
    """

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        self.embedding = cast(  # `param` returns the unboxed array; flax types it as the box.
            Array,
            self.param(
                "embedding",
                nn.with_logical_partitioning(normal_init(1.0), ("vocab", "embed")),
                (self.num_embeddings, self.features),
                jnp.float32,
            ),
        )

    def __call__(self, tokens: Array) -> Array:
        """Looks up [batch, length] int tokens -> [batch, length, embed]."""
        out = jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))

    def attend(self, hidden: Array) -> Array:
        """Projects hidden states [..., embed] onto the vocabulary with the same table."""
        return jnp.einsum("...d,vd->...v", hidden, self.embedding.astype(self.dtype))
