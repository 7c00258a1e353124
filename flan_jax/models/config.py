"""`T5Config`: every knob of the T5 v1.1 / Flan-T5 encoder-decoder, validated on creation.

The field names follow t5x (`emb_dim`, `mlp_dim`, `head_dim`, ...). Hugging Face names are
translated in `flan_jax.models.hf_convert`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

from flan_jax.errors import ConfigError

FEED_FORWARD_KINDS = ("gated-gelu", "relu")
ACTIVATION_DTYPES = ("bfloat16", "float32")
# "none": keep every activation; "full": recompute the whole layer in the backward pass;
# "dots": keep matmul outputs; "dots_no_batch": keep only matmuls without batch dimensions
# (weights-side products), the usual choice for large models.
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class T5Config:
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

    @property
    def activation_dtype(self) -> jnp.dtype:
        """The jnp dtype of activations (`dtype` as an object)."""
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> T5Config:
        """Returns a copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> T5Config:
        """Builds a config from `to_dict` output, rejecting unknown keys.

        Args:
          values: Field name -> value.
          source: Where `values` came from, named in error messages (e.g. a file path).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown T5Config field(s) {unknown}; known fields are {sorted(known)}."
            )
        return cls(**values)

    def to_json(self) -> str:
        """Returns the config as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "config") -> T5Config:
        """Parses `to_json` output; `source` names the origin in error messages."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source}: not valid JSON ({error}).") from error
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(values).__name__}.")
        return cls.from_dict(values, source=source)
