"""Transformer building blocks shared by the encoder-decoder and decoder-only models.

Everything here is architecture-agnostic: attention takes an additive bias that already holds
the mask (built from segment ids) and the relative position bias, so the same module serves
encoder self-attention, causal decoder self-attention, cross-attention and prefix-LM attention.

Parameters are float32 and carry logical axis names (t5x convention) through
`nn.with_logical_partitioning`; activations are constrained with `nn.with_logical_constraint`,
which is a no-op outside a mesh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, cast

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
    """A projection `einsum(equation, x, kernel)`, with an optional bias.

    Unlike `nn.DenseGeneral`, which initialises a flattened 2-D kernel and reshapes it, the
    kernel is created at its final shape, so its logical axis names are valid under a mesh.
    The bias (`use_bias`) spans the kernel dimensions that reach the output, e.g. `[heads,
    kv]` for "bld,dhk->blhk" and `[embed]` for "blhk,hkd->bld", with the same axis names.

    Attributes:
      kernel_shape: Kernel shape; a 0 entry takes the size of the input's last axis.
      kernel_axes: Logical axis name of each kernel dimension.
      equation: The einsum contracting the input with the kernel.
      stddev: Standard deviation of the normal initialiser.
      dtype: Computation dtype (the float32 kernel is cast to it).
      use_bias: Add a zero-initialised bias.
    """

    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    equation: str
    stddev: float
    dtype: jnp.dtype = jnp.float32
    use_bias: bool = False

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
        out = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
        if not self.use_bias:
            return out
        kernel_letters, out_letters = self.equation.split(",")[1].split("->")
        kept = [i for i, letter in enumerate(kernel_letters) if letter in out_letters]
        bias = cast(
            Array,
            self.param(
                "bias",
                nn.with_logical_partitioning(
                    nn.initializers.zeros, tuple(self.kernel_axes[i] for i in kept)
                ),
                tuple(shape[i] for i in kept),
                jnp.float32,
            ),
        )
        return out + bias.astype(self.dtype)


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


class LayerNorm(nn.Module):
    """Layer norm with mean subtraction, scale and bias (OPT), statistics in float32.

    Attributes:
      epsilon: Added to the variance before the reciprocal square root.
      dtype: Output dtype.
    """

    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (x.shape[-1],)
        scale, bias = (
            cast(  # `param` returns the unboxed array; flax types it as the box.
                Array,
                self.param(
                    name, nn.with_logical_partitioning(init, ("embed",)), features, jnp.float32
                ),
            )
            for name, init in (("scale", nn.initializers.ones), ("bias", nn.initializers.zeros))
        )
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        normed = centred * jax.lax.rsqrt(
            jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + self.epsilon
        )
        return (normed * scale + bias).astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class Rotary:
    """Rotary position embeddings in Hugging Face's `rotate_half` layout, with Llama 3 scaling.

    Head dimension `i < head_dim / 2` pairs with `i + head_dim / 2` (not with `i + 1` as in
    the original paper), so HF query/key kernels convert without a permutation.

    Attributes:
      theta: Base of the frequencies `theta ** (-2i / head_dim)`.
      scaling_factor: Llama 3 scaling factor (None: plain rotary).
      low_freq_factor: Wavelengths above `original_max_length / low_freq_factor` are
        divided by `scaling_factor`.
      high_freq_factor: Wavelengths below `original_max_length / high_freq_factor` are
        kept; those between are interpolated.
      original_max_length: The pre-training context length of the scaled model.
    """

    theta: float = 10000.0
    scaling_factor: float | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_length: int = 8192

    def inverse_frequencies(self, head_dim: int) -> np.ndarray:
        """The float32 `[head_dim / 2]` angular frequencies, in transformers' order of ops."""
        exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
        inv_freq = (1.0 / (np.float32(self.theta) ** exponents)).astype(np.float32)
        if self.scaling_factor is None:
            return inv_freq
        factor = np.float32(self.scaling_factor)
        low_wavelen = self.original_max_length / self.low_freq_factor
        high_wavelen = self.original_max_length / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (self.original_max_length / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)

    def apply(self, x: Array, positions: Array) -> Array:
        """Rotates `x` [batch, length, heads, head_dim] by `positions` [batch, length]."""
        inv_freq = jnp.asarray(self.inverse_frequencies(x.shape[-1]))
        angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, hd/2]
        angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
        first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
        rotated = jnp.concatenate([-second, first], axis=-1)
        out = x.astype(jnp.float32) * jnp.cos(angles) + rotated * jnp.sin(angles)
        return out.astype(x.dtype)


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
    """Dot-product attention, with grouped-query heads, biases and rotary positions as options.

    The T5 defaults (no query scaling, folded into the initialisation; no biases; as many
    key/value heads as query heads) keep T5's parameter tree. Decoder-only models set
    `num_kv_heads` (keys and values then carry the "kv_heads" axis and query head `j` reads
    key/value head `j // (num_heads // num_kv_heads)`, as transformers' `repeat_kv`),
    `query_scale`, `use_bias` and `rotary`.

    With `decode=True` the keys and values are cached in the "cache" collection:
    `cache_mode="append"` (self-attention) writes each step's key/value at `cache_index` and
    attends to the whole cache; `cache_mode="static"` (cross-attention) projects the memory
    once, when the cache is created, and reuses it at every step. The cache is created by a
    first `decode=True` call: with the full-length inputs (zeros), or with a prompt and a
    `cache_length` (a prefill: the prompt's keys and values fill the cache's first slots).

    Attributes:
      num_heads: Number of query heads.
      head_dim: Width of each head.
      dtype: Activation dtype.
      dropout_rate: Dropout on the attention weights.
      cache_mode: "append" or "static", see above.
      num_kv_heads: Key/value heads (grouped-query attention); None: `num_heads`, with the
        "heads" axis name (T5).
      query_scale: Multiplies the queries (1.0: none, T5).
      use_bias: Biases on the four projections.
      rotary: Rotary position embedding of queries and keys (needs `positions`).
    """

    num_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0
    cache_mode: str = "append"
    num_kv_heads: int | None = None
    query_scale: float = 1.0
    use_bias: bool = False
    rotary: Rotary | None = None

    def _projection(self, name: str, heads: int, heads_axis: str, stddev: float) -> EinsumDense:
        return EinsumDense(
            (0, heads, self.head_dim),
            ("embed", heads_axis, "kv"),
            "bld,dhk->blhk",
            stddev,
            self.dtype,
            self.use_bias,
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
        positions: Array | None = None,
        cache_length: int | None = None,
    ) -> Array:
        """Attends from `inputs_q` [batch, q_len, embed] to `inputs_kv` [batch, kv_len, embed].

        Args:
          inputs_q: Query-side activations.
          inputs_kv: Memory the keys and values are projected from.
          bias: Additive bias broadcastable to [batch, heads, q_len, kv_len] (mask and
            relative positions); during cached decoding its kv_len is the cache length.
          deterministic: Disables dropout.
          decode: Use and update the key/value cache.
          cache_index: Where an "append" cache step writes: a scalar slot, or one slot per
            row [batch] (rows at different lengths).
          positions: [batch, len] positions of the (self-attention) inputs, for `rotary`.
          cache_length: Slots of a cache created by a prefill (see above).

        Returns:
          [batch, q_len, embed] in `dtype`.
        """
        emb_dim = inputs_q.shape[-1]
        kv_heads = self.num_kv_heads or self.num_heads
        kv_axis = "heads" if self.num_kv_heads is None else "kv_heads"
        # T5 folds the 1/sqrt(head_dim) query scale into the query initialisation.
        query_stddev = (emb_dim * (self.head_dim if self.query_scale == 1.0 else 1)) ** -0.5
        query = self._projection("query", self.num_heads, "heads", query_stddev)(inputs_q)
        key_module = self._projection("key", kv_heads, kv_axis, emb_dim**-0.5)
        value_proj = self._projection("value", kv_heads, kv_axis, emb_dim**-0.5)
        rotary = self.rotary
        if rotary is not None:
            if positions is None:
                raise ValueError("MultiHeadAttention: rotary positions need `positions`.")
            query = rotary.apply(query, positions)

        def key_proj(x: Array) -> Array:
            key = key_module(x)
            return key if rotary is None else rotary.apply(key, cast(Array, positions))

        if self.query_scale != 1.0:
            query = query * jnp.asarray(self.query_scale, query.dtype)
        if decode:
            key, value = self._cached_key_value(
                inputs_kv, key_proj, value_proj, cache_index, cache_length
            )
        else:
            key, value = key_proj(inputs_kv), value_proj(inputs_kv)
        query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))
        key = nn.with_logical_constraint(key, ("batch", "length", kv_axis, "kv"))
        value = nn.with_logical_constraint(value, ("batch", "length", kv_axis, "kv"))

        batch, q_len = query.shape[:2]
        group = self.num_heads // kv_heads
        if group == 1:
            # One key/value head per query head (T5): the plain einsums. The grouped form
            # below is the same sum but compiles to other reductions, which changes T5's
            # float rounding (and the demo's trained numbers).
            logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)  # [batch, heads, q, k]
        else:
            # [batch, q, kv_heads, group, kv]: query head j reads key/value head j // group.
            grouped = query.reshape(batch, q_len, kv_heads, group, -1)
            logits = jnp.einsum("bqhgd,bkhd->bhgqk", grouped, key)
            logits = logits.reshape(batch, self.num_heads, q_len, -1)
        if bias is not None:
            logits = logits + bias.astype(logits.dtype)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        if group == 1:
            mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, value)  # [batch, q, heads, kv]
        else:
            weights = weights.reshape(batch, kv_heads, group, q_len, weights.shape[-1])
            mixed = jnp.einsum("bhgqk,bkhd->bqhgd", weights, value)
            mixed = mixed.reshape(batch, q_len, self.num_heads, -1)
        out = EinsumDense(
            (self.num_heads, self.head_dim, emb_dim),
            ("heads", "kv", "embed"),
            "blhk,hkd->bld",
            (self.num_heads * self.head_dim) ** -0.5,
            self.dtype,
            self.use_bias,
            name="out",
        )(mixed)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))

    def _cached_key_value(
        self,
        inputs_kv: Array,
        key_proj: Callable[[Array], Array],
        value_proj: Callable[[Array], Array],
        cache_index: Array | None,
        cache_length: int | None,
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
            for name, array in (("cached_key", key), ("cached_value", value)):
                if cache_length is None:
                    # The creating call sees the full decode length and only sizes the cache.
                    cache = jnp.zeros_like(array)
                else:  # a prefill: the prompt fills the first slots
                    shape = (array.shape[0], cache_length) + array.shape[2:]
                    cache = jax.lax.dynamic_update_slice(
                        jnp.zeros(shape, self.dtype), array.astype(self.dtype), (0, 0, 0, 0)
                    )
                self.put_variable("cache", name, cache)
            return key, value
        if cache_index is None:
            raise ValueError("An 'append' cache step needs cache_index, the position to write.")
        cached = []
        for name, array in (("cached_key", key), ("cached_value", value)):
            cache = self.get_variable("cache", name)
            if jnp.ndim(cache_index) == 0:
                cache = jax.lax.dynamic_update_slice(
                    cache, array.astype(self.dtype), (0, cache_index, 0, 0)
                )
            else:  # one slot per row; the step holds one token per row
                rows = jnp.arange(cache.shape[0])
                cache = cache.at[rows, cache_index].set(array[:, 0].astype(self.dtype))
            self.put_variable("cache", name, cache)
            cached.append(cache)
        return cached[0], cached[1]


class MlpBlock(nn.Module):
    """Feed-forward block: gated GELU (T5 1.1), ReLU (T5 1.0, OPT) or SwiGLU (Llama).

    Attributes:
      mlp_dim: Hidden width.
      kind: "gated-gelu", "relu" or "swiglu"; the gated kinds have a gate `wi_0` and an
        up projection `wi_1`, "relu" one input projection `wi`.
      dtype: Activation dtype.
      dropout_rate: Dropout on the hidden activations.
      use_bias: Biases on the projections (OPT).
    """

    mlp_dim: int
    kind: str = "gated-gelu"
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0
    use_bias: bool = False

    def _dense(self, features: int, axes: tuple[str, str], fan_in: int, name: str) -> nn.Dense:
        return nn.Dense(
            features,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
            kernel_init=nn.with_logical_partitioning(normal_init(fan_in**-0.5), axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
        )

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        """Maps [batch, length, embed] to the same shape."""
        emb_dim = x.shape[-1]
        gates = {
            # The tanh approximation of GELU, as the published T5 1.1 checkpoints use.
            "gated-gelu": lambda gate: jax.nn.gelu(gate, approximate=True),
            "swiglu": jax.nn.silu,
        }
        if self.kind in gates:
            gate = gates[self.kind](self._dense(self.mlp_dim, ("embed", "mlp"), emb_dim, "wi_0")(x))
            hidden = gate * self._dense(self.mlp_dim, ("embed", "mlp"), emb_dim, "wi_1")(x)
        elif self.kind == "relu":
            hidden = jax.nn.relu(self._dense(self.mlp_dim, ("embed", "mlp"), emb_dim, "wi")(x))
        else:
            raise ValueError(
                f"MlpBlock.kind must be 'gated-gelu', 'relu' or 'swiglu', got {self.kind!r}."
            )
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
        out = self._dense(emb_dim, ("mlp", "embed"), self.mlp_dim, "wo")(hidden)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class Embed(nn.Module):
    """An embedding table [num_embeddings, features], also usable as a tied output projection.

    Attributes:
      num_embeddings: Vocabulary size (or position table size).
      features: Embedding width.
      dtype: Activation dtype of the looked-up vectors.
      axes: Logical axis names of the table.
      stddev: Standard deviation of the normal initialiser.
    """

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32
    axes: tuple[str, str] = ("vocab", "embed")
    stddev: float = 1.0

    def setup(self) -> None:
        self.embedding = cast(  # `param` returns the unboxed array; flax types it as the box.
            Array,
            self.param(
                "embedding",
                nn.with_logical_partitioning(normal_init(self.stddev), self.axes),
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


# ------------------------------------------------------------------------------------------
# Layer stacks
# ------------------------------------------------------------------------------------------
_REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def apply_layer_stack(
    layer_cls: type[nn.Module],
    config: Any,
    num_layers: int,
    x: Array,
    *args: Any,
    **attributes: Any,
) -> Array:
    """Runs `num_layers` copies of `layer_cls` over `x`, scanned and/or rematerialised.

    Must be called from inside a compact method; the layers are named `layers_{i}`, or
    `layers` when scanned. `args` are passed unchanged to every layer.

    Args:
      layer_cls: A layer module taking `config` and `scanned` attributes and `(x, *args)`;
        with `scanned=True` it returns `(x, None)`.
      config: A model config (T5Config, DecoderConfig); supplies `scan_layers` and
        `remat_policy`, and is passed to every layer.
      num_layers: Depth of the stack.
      x: Input activations [batch, length, embed].
      *args: Further positional arguments of the layer, shared by all layers.
      **attributes: Module attributes of every layer (deterministic, decode, ...).
    """
    if config.remat_policy != "none":
        layer_cls = nn.remat(
            layer_cls,
            policy=_REMAT_POLICIES[config.remat_policy],
            prevent_cse=not config.scan_layers,
        )
    if config.scan_layers:
        stack = nn.scan(
            layer_cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(args),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(config=config, scanned=True, name="layers", **attributes)(x, *args)
        return x
    for i in range(num_layers):
        x = layer_cls(config=config, name=f"layers_{i}", **attributes)(x, *args)
    return x
