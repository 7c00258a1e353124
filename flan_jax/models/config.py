"""`T5Config`: every knob of the T5 v1.1 / Flan-T5 encoder-decoder, validated on creation.

The field names follow t5x (`emb_dim`, `mlp_dim`, `head_dim`, ...). Hugging Face names are
translated in `flan_jax.models.hf_convert`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Self

import jax.numpy as jnp

from flan_jax.errors import ConfigError

FEED_FORWARD_KINDS = ("gated-gelu", "relu")
ACTIVATION_DTYPES = ("bfloat16", "float32")
# "none": keep every activation; "full": recompute the whole layer in the backward pass;
# "dots": keep matmul outputs; "dots_no_batch": keep only matmuls without batch dimensions
# (weights-side products), the usual choice for large models.
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


class _ConfigMethods:
    """What every model config offers: validated copies and a JSON round trip.

    Subclasses are frozen dataclasses; error messages name the subclass.
    """

    dtype: str

    @property
    def activation_dtype(self) -> jnp.dtype:
        """The jnp dtype of activations (`dtype` as an object)."""
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> Self:
        """Returns a copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> Self:
        """Builds a config from `to_dict` output, rejecting unknown keys.

        Args:
          values: Field name -> value.
          source: Where `values` came from, named in error messages (e.g. a file path).
        """
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown {cls.__name__} field(s) {unknown}; known fields are "
                f"{sorted(known)}."
            )
        return cls(**values)

    def to_json(self) -> str:
        """Returns the config as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "config") -> Self:
        """Parses `to_json` output; `source` names the origin in error messages."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source}: not valid JSON ({error}).") from error
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(values).__name__}.")
        return cls.from_dict(values, source=source)


@dataclasses.dataclass(frozen=True)
class T5Config(_ConfigMethods):
    """Architecture and numerics of a T5 encoder-decoder.

    Attributes:
      vocab_size: Number of rows of the token embedding (32128 for the T5 vocabulary).
      emb_dim: Model width (`d_model`).
      num_heads: Attention heads per attention layer.
      head_dim: Width of each head (`d_kv`); need not equal `emb_dim // num_heads`.
      mlp_dim: Hidden width of the feed-forward block (`d_ff`).
      num_encoder_layers: Number of encoder layers.
      num_decoder_layers: Number of decoder layers.
      relative_attention_num_buckets: Buckets of the relative position bias.
      relative_attention_max_distance: Distance beyond which relative positions share a bucket.
      dropout_rate: Dropout probability applied when dropout is enabled.
      layer_norm_epsilon: Epsilon of the RMS norms.
      feed_forward: "gated-gelu" (T5 1.1, Flan-T5) or "relu" (T5 1.0).
      tie_word_embeddings: Share the input embedding with the output projection (T5 1.0); the
        decoder output is then scaled by `emb_dim ** -0.5` before the projection.
      dtype: Activation dtype, "bfloat16" or "float32". Parameters are always float32.
      scan_layers: Stack the layers' parameters and run them with `nn.scan` (faster compiles
        for deep models); parameters then carry a leading "layers" axis.
      remat_policy: Rematerialisation of each layer in the backward pass, one of
        REMAT_POLICIES.
    """

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    head_dim: int = 64
    mlp_dim: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    feed_forward: str = "gated-gelu"
    tie_word_embeddings: bool = False
    dtype: str = "bfloat16"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "emb_dim",
            "num_heads",
            "head_dim",
            "mlp_dim",
            "num_encoder_layers",
            "num_decoder_layers",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"T5Config.{name} must be a positive int, got {value!r}.")
        if self.relative_attention_num_buckets % 2:
            # Bidirectional buckets are split in two halves (past / future).
            raise ConfigError(
                "T5Config.relative_attention_num_buckets must be even, got "
                f"{self.relative_attention_num_buckets}."
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(
                f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate!r}."
            )
        if not self.layer_norm_epsilon > 0:
            raise ConfigError(
                f"T5Config.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}."
            )
        choices = (
            ("feed_forward", FEED_FORWARD_KINDS),
            ("dtype", ACTIVATION_DTYPES),
            ("remat_policy", REMAT_POLICIES),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"T5Config.{name} must be one of {allowed}, got {getattr(self, name)!r}."
                )
        for name in ("tie_word_embeddings", "scan_layers"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"T5Config.{name} must be a bool, got {getattr(self, name)!r}.")


DECODER_FAMILIES = ("opt", "llama")
DECODER_NORMS = ("layernorm", "rmsnorm")
DECODER_ACTIVATIONS = ("relu", "swiglu")
DECODER_POSITIONS = ("learned", "rotary")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(_ConfigMethods):
    """Architecture and numerics of a decoder-only transformer (OPT, Llama, Mistral).

    The field names follow `T5Config` where the two share a knob; Hugging Face names are
    translated in `flan_jax.models.hf_convert`.

    Attributes:
      family: "opt" (learned positions, LayerNorm, ReLU, biases) or "llama" (rotary
        positions, RMSNorm, SwiGLU, grouped-query attention; Mistral is llama with
        `sliding_window`). It fixes the position scheme; the other fields say the rest.
      vocab_size: Rows of the token embedding.
      emb_dim: Model width (HF `hidden_size`).
      num_heads: Query heads per layer.
      num_kv_heads: Key/value heads (grouped-query attention); divides `num_heads`.
      head_dim: Width of each head.
      mlp_dim: Hidden width of the feed-forward block (HF `intermediate_size` / `ffn_dim`).
      num_layers: Number of layers.
      max_length: Rows of OPT's learned position table, without OPT's offset of 2 (HF
        `max_position_embeddings`); informational for rotary positions.
      norm: "layernorm" (mean-subtracted, with bias) or "rmsnorm".
      norm_epsilon: Epsilon of the norms.
      pre_norm: Norm before each block (True) or after its residual sum (OPT-350m).
      activation: "relu" (one input projection `wi`) or "swiglu" (`wi_0` gate, `wi_1` up).
      use_bias: Biases on the attention and feed-forward projections (OPT).
      positions: "learned" (OPT, offset 2) or "rotary".
      rope_theta: Base of the rotary frequencies.
      rope_scaling_factor: Llama 3's frequency scaling factor (None: no scaling).
      rope_low_freq_factor: Llama 3 scaling: wavelengths above
        `rope_original_max_length / rope_low_freq_factor` are divided by the factor.
      rope_high_freq_factor: Llama 3 scaling: wavelengths below
        `rope_original_max_length / rope_high_freq_factor` are kept.
      rope_original_max_length: Llama 3 scaling: the pre-training context length.
      sliding_window: Attend only to the last `sliding_window` positions (Mistral v0.1).
      word_embed_proj_dim: OPT's embedding width when it differs from `emb_dim`
        (project_in / project_out); None: the embedding has `emb_dim` columns.
      tie_word_embeddings: Use the token embedding as the output projection.
      start_token_id: Token fed before the first input token (HF `bos_token_id`).
      prefix_lm: Bidirectional attention over the inputs (needs
        `decoder_causal_attention` in the batch).
      dropout_rate: Dropout probability applied when dropout is enabled.
      dtype: Activation dtype, "bfloat16" or "float32". Parameters are always float32.
      scan_layers: Stack the layers' parameters and run them with `nn.scan`.
      remat_policy: Rematerialisation of each layer, one of REMAT_POLICIES.
    """

    family: str = "llama"
    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 8
    head_dim: int = 64
    mlp_dim: int = 1408
    num_layers: int = 8
    max_length: int = 2048
    norm: str = "rmsnorm"
    norm_epsilon: float = 1e-5
    pre_norm: bool = True
    activation: str = "swiglu"
    use_bias: bool = False
    positions: str = "rotary"
    rope_theta: float = 10000.0
    rope_scaling_factor: float | None = None
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_length: int = 8192
    sliding_window: int | None = None
    word_embed_proj_dim: int | None = None
    tie_word_embeddings: bool = False
    start_token_id: int = 0
    prefix_lm: bool = False
    dropout_rate: float = 0.0
    dtype: str = "bfloat16"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "emb_dim",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "mlp_dim",
            "num_layers",
            "max_length",
            "rope_original_max_length",
        )
        for name in positive:
            _check_positive_int(self, name)
        for name in ("sliding_window", "word_embed_proj_dim"):
            if getattr(self, name) is not None:
                _check_positive_int(self, name, note=" or None")
        choices = (
            ("family", DECODER_FAMILIES),
            ("norm", DECODER_NORMS),
            ("activation", DECODER_ACTIVATIONS),
            ("positions", DECODER_POSITIONS),
            ("dtype", ACTIVATION_DTYPES),
            ("remat_policy", REMAT_POLICIES),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"DecoderConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}."
                )
        for name in ("pre_norm", "use_bias", "tie_word_embeddings", "prefix_lm", "scan_layers"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"DecoderConfig.{name} must be a bool, got {getattr(self, name)!r}."
                )
        self._check_numbers()
        self._check_family()

    def _check_numbers(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"DecoderConfig.num_kv_heads ({self.num_kv_heads}) must divide num_heads "
                f"({self.num_heads}): each key/value head serves a whole group of query heads."
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(
                f"DecoderConfig.dropout_rate must be in [0, 1), got {self.dropout_rate!r}."
            )
        for name in ("norm_epsilon", "rope_theta"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"DecoderConfig.{name} must be > 0, got {getattr(self, name)!r}.")
        if self.rope_scaling_factor is not None and not self.rope_scaling_factor > 0:
            raise ConfigError(
                "DecoderConfig.rope_scaling_factor must be > 0 or None, got "
                f"{self.rope_scaling_factor!r}."
            )
        if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
            raise ConfigError(
                "DecoderConfig needs 0 < rope_low_freq_factor < rope_high_freq_factor, got "
                f"{self.rope_low_freq_factor!r} and {self.rope_high_freq_factor!r}."
            )
        if not isinstance(self.start_token_id, int) or not 0 <= self.start_token_id < (
            self.vocab_size
        ):
            raise ConfigError(
                f"DecoderConfig.start_token_id must be an id in [0, vocab_size={self.vocab_size}), "
                f"got {self.start_token_id!r}."
            )

    def _check_family(self) -> None:
        if self.family == "opt":
            if self.positions != "learned" or self.num_kv_heads != self.num_heads:
                raise ConfigError(
                    "DecoderConfig.family 'opt' needs positions='learned' and num_kv_heads == "
                    f"num_heads, got positions={self.positions!r}, num_kv_heads="
                    f"{self.num_kv_heads} and num_heads={self.num_heads}."
                )
        else:
            if self.positions != "rotary" or self.word_embed_proj_dim is not None:
                raise ConfigError(
                    "DecoderConfig.family 'llama' needs positions='rotary' and "
                    f"word_embed_proj_dim=None, got positions={self.positions!r} and "
                    f"word_embed_proj_dim={self.word_embed_proj_dim!r}."
                )
            if self.head_dim % 2:
                raise ConfigError(
                    "DecoderConfig.head_dim must be even for rotary positions, got "
                    f"{self.head_dim}."
                )

    @property
    def embed_dim(self) -> int:
        """Width of the token embedding: `word_embed_proj_dim`, or `emb_dim` when None."""
        return self.emb_dim if self.word_embed_proj_dim is None else self.word_embed_proj_dim


def _check_positive_int(config: Any, name: str, *, note: str = "") -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(
            f"{type(config).__name__}.{name} must be a positive int{note}, got {value!r}."
        )
