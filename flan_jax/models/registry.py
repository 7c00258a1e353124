"""The model kinds a checkpoint can hold: kind name -> (config class, model class).

A checkpoint's `flan_jax_config.json` names its kind (`"model_kind": "t5" | "decoder"`;
absent means "t5", which is what checkpoints written before decoder-only models hold). The
loaders build the config and the :class:`~flan_jax.models.interface.Model` from this one
table, so a new model family is one new row.
"""

from __future__ import annotations

from typing import Any

from flan_jax.errors import ConfigError
from flan_jax.models.config import DecoderConfig, T5Config
from flan_jax.models.decoder import DecoderModel
from flan_jax.models.interface import Model
from flan_jax.models.t5 import T5Model

ModelConfig = T5Config | DecoderConfig

MODEL_KINDS: dict[str, tuple[type[Any], type[Any]]] = {
    "t5": (T5Config, T5Model),
    "decoder": (DecoderConfig, DecoderModel),
}
DEFAULT_KIND = "t5"


def kind_of(config: ModelConfig) -> str:
    """The kind name of a model config."""
    for kind, (config_cls, _) in MODEL_KINDS.items():
        if type(config) is config_cls:
            return kind
    raise ConfigError(
        f"{type(config).__name__} is not a registered model config; known kinds: "
        f"{ {kind: cls.__name__ for kind, (cls, _) in MODEL_KINDS.items()} }."
    )


def config_from_dict(kind: str, values: dict[str, Any], *, source: str) -> ModelConfig:
    """Builds the config of `kind` from its `to_dict` output (`source` names the origin)."""
    if kind not in MODEL_KINDS:
        raise ConfigError(
            f"{source}: unknown model_kind {kind!r}; known kinds are {sorted(MODEL_KINDS)}."
        )
    return MODEL_KINDS[kind][0].from_dict(values, source=source)


def build_model(config: ModelConfig) -> Model:
    """The model interface of `config` (a T5Model or a DecoderModel)."""
    return MODEL_KINDS[kind_of(config)][1](config)
