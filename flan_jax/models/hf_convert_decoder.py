"""Conversion between Hugging Face OPT / Llama / Mistral causal LMs and flan_jax's DecoderOnly.

`OPTForCausalLM`, `LlamaForCausalLM` and `MistralForCausalLM` map onto one `DecoderConfig`
(Mistral is the llama family with a sliding window) and one parameter tree
(`flan_jax.models.decoder`). Attention projections need no permutation: flan_jax's rotary
embedding uses Hugging Face's `rotate_half` layout (the two halves of each head), so q/k
kernels are only reshaped to [embed, heads, kv].

Hugging Face options with no flan_jax equivalent are refused with a `ConversionError`
naming config.json and the field (other rope types than "default" / "llama3", attention
biases without MLP biases, OPT without elementwise-affine norms, ...), never silently
dropped. Directory reading and writing, layouts and the error type are shared with T5
(`flan_jax.models.hf_convert`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flan_jax.models.config import DecoderConfig
from flan_jax.models.hf_convert import (
    ConversionError,
    NameTable,
    Params,
    StateDict,
    params_from_table,
    stack_layers,
    state_dict_from_table,
    unstack_layers,
)

_ARCHITECTURES = {
    "opt": "OPTForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
}
# Rope types whose frequencies flan_jax computes (layers.Rotary).
_ROPE_TYPES = ("default", "llama3")
# OPT's LayerNorm is torch's default nn.LayerNorm (config.json has no epsilon field).
_OPT_NORM_EPSILON = 1e-5


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------
def _require(hf_config: Mapping[str, Any], fields: tuple[str, ...], source: str) -> None:
    missing = [k for k in fields if k not in hf_config]
    if missing:
        model_type = hf_config.get("model_type")
        raise ConversionError(f"{source}: missing {model_type} field(s) {missing}.")


def _refuse(source: str, field: str, value: Any, supported: str) -> ConversionError:
    return ConversionError(f"{source}: {field}={value!r} is not supported; {supported}.")


def _opt_fields(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    _require(
        hf,
        (
            "vocab_size",
            "hidden_size",
            "num_attention_heads",
            "num_hidden_layers",
            "ffn_dim",
            "max_position_embeddings",
        ),
        source,
    )
    activation = hf.get("activation_function", "relu")
    if activation != "relu":
        raise _refuse(source, "activation_function", activation, "OPT models use 'relu'")
    if not hf.get("layer_norm_elementwise_affine", True):
        raise _refuse(source, "layer_norm_elementwise_affine", False, "norms need scale and bias")
    pre_norm = bool(hf.get("do_layer_norm_before", True))
    if pre_norm and hf.get("_remove_final_layer_norm", False):
        raise _refuse(
            source, "_remove_final_layer_norm", True, "a pre-norm OPT keeps its final norm"
        )
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hidden % heads:
        raise ConversionError(
            f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}."
        )
    projection = hf.get("word_embed_proj_dim") or hidden
    return dict(
        family="opt",
        vocab_size=hf["vocab_size"],
        emb_dim=hidden,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        mlp_dim=hf["ffn_dim"],
        num_layers=hf["num_hidden_layers"],
        max_length=hf["max_position_embeddings"],
        norm="layernorm",
        norm_epsilon=_OPT_NORM_EPSILON,
        pre_norm=pre_norm,
        activation="relu",
        use_bias=bool(hf.get("enable_bias", True)),
        positions="learned",
        word_embed_proj_dim=None if projection == hidden else projection,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dropout_rate=float(hf.get("dropout", 0.0)),
    )


def _rope_fields(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Rotary fields from transformers 5's `rope_parameters` or the older `rope_scaling`."""
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    spec = dict(hf.get(key) or {})
    theta = float(spec.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = spec.get("rope_type", spec.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise _refuse(source, f"{key}.rope_type", rope_type, f"supported: {list(_ROPE_TYPES)}")
    if rope_type == "default":
        return dict(rope_theta=theta)
    _require(
        spec,
        ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
        f"{source} {key}",
    )
    return dict(
        rope_theta=theta,
        rope_scaling_factor=float(spec["factor"]),
        rope_low_freq_factor=float(spec["low_freq_factor"]),
        rope_high_freq_factor=float(spec["high_freq_factor"]),
        rope_original_max_length=int(spec["original_max_position_embeddings"]),
    )


def _llama_fields(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    _require(
        hf,
        (
            "vocab_size",
            "hidden_size",
            "num_attention_heads",
            "num_hidden_layers",
            "intermediate_size",
        ),
        source,
    )
    activation = hf.get("hidden_act", "silu")
    if activation != "silu":
        raise _refuse(source, "hidden_act", activation, "Llama / Mistral MLPs use 'silu'")
    attention_bias = bool(hf.get("attention_bias", False))
    if attention_bias != bool(hf.get("mlp_bias", False)):
        raise ConversionError(
            f"{source}: attention_bias={attention_bias} with mlp_bias={not attention_bias} is "
            "not supported; flan_jax puts biases on all projections or on none."
        )
    heads = hf["num_attention_heads"]
    sliding_window = hf.get("sliding_window") if hf.get("model_type") == "mistral" else None
    return dict(
        family="llama",
        vocab_size=hf["vocab_size"],
        emb_dim=hf["hidden_size"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        max_length=hf.get("max_position_embeddings", 2048),
        norm="rmsnorm",
        norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        activation="swiglu",
        use_bias=attention_bias,
        positions="rotary",
        sliding_window=sliding_window,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout_rate=float(hf.get("attention_dropout", 0.0)),
        **_rope_fields(hf, source),
    )


def config_from_hf(
    hf_config: Mapping[str, Any], *, source: str = "config.json", **overrides: Any
) -> DecoderConfig:
    """Builds a DecoderConfig from an OPT, Llama or Mistral `config.json` dict.

    Args:
      hf_config: The parsed `config.json` (its `model_type` picks the family).
      source: Named in error messages.
      **overrides: DecoderConfig fields to set (dtype, scan_layers, start_token_id, ...).

    Raises:
      ConversionError: a missing field, or an option flan_jax does not implement.
    """
    model_type = hf_config.get("model_type")
    if model_type == "opt":
        values = _opt_fields(hf_config, source)
    elif model_type in ("llama", "mistral"):
        values = _llama_fields(hf_config, source)
    else:
        raise _refuse(source, "model_type", model_type, f"supported: {sorted(_ARCHITECTURES)}")
    bos = hf_config.get("bos_token_id")
    if bos is None and "start_token_id" not in overrides:
        raise ConversionError(
            f"{source}: bos_token_id is missing; it is the token fed before the prompt "
            "(DecoderConfig.start_token_id): add it to config.json."
        )
    values["start_token_id"] = bos
    values.update(overrides)
    try:
        return DecoderConfig(**values)
    except (TypeError, ValueError) as error:
        raise ConversionError(f"{source}: {error}") from error


def _check_exportable(config: DecoderConfig) -> None:
    if config.family == "opt":
        expected = dict(norm="layernorm", activation="relu", positions="learned")
        if config.num_heads * config.head_dim != config.emb_dim:
            raise ConversionError(
                f"DecoderConfig num_heads * head_dim ({config.num_heads} * {config.head_dim}) "
                f"!= emb_dim ({config.emb_dim}): OPTForCausalLM cannot express it."
            )
    else:
        expected = dict(norm="rmsnorm", activation="swiglu", positions="rotary")
    wrong = {k: getattr(config, k) for k, v in expected.items() if getattr(config, k) != v}
    if wrong:
        raise ConversionError(
            f"DecoderConfig family {config.family!r} with {wrong} has no Hugging Face "
            f"architecture; that family exports with {expected}."
        )
    if config.prefix_lm:
        raise ConversionError(
            "DecoderConfig.prefix_lm=True has no Hugging Face causal-LM equivalent: the "
            "exported model would attend causally over the prompt."
        )


def hf_config_from_config(config: DecoderConfig, *, eos_token_id: int | None) -> dict[str, Any]:
    """The `config.json` dict of `config` (Mistral when it has a sliding window).

    Args:
      config: The architecture.
      eos_token_id: The vocabulary's EOS id (generation stops there); None: not written.
    """
    _check_exportable(config)
    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.emb_dim,
        num_attention_heads=config.num_heads,
        num_hidden_layers=config.num_layers,
        max_position_embeddings=config.max_length,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.start_token_id,
        eos_token_id=eos_token_id,
        use_cache=True,
    )
    if config.family == "opt":
        model_type = "opt"
        specific: dict[str, Any] = dict(
            ffn_dim=config.mlp_dim,
            word_embed_proj_dim=config.embed_dim,
            do_layer_norm_before=config.pre_norm,
            _remove_final_layer_norm=False,
            activation_function="relu",
            enable_bias=config.use_bias,
            layer_norm_elementwise_affine=True,
            dropout=config.dropout_rate,
            attention_dropout=0.0,
        )
    else:
        model_type = "llama" if config.sliding_window is None else "mistral"
        rope_scaling = None
        if config.rope_scaling_factor is not None:
            rope_scaling = dict(
                rope_type="llama3",
                factor=config.rope_scaling_factor,
                low_freq_factor=config.rope_low_freq_factor,
                high_freq_factor=config.rope_high_freq_factor,
                original_max_position_embeddings=config.rope_original_max_length,
            )
        specific = dict(
            intermediate_size=config.mlp_dim,
            num_key_value_heads=config.num_kv_heads,
            head_dim=config.head_dim,
            rms_norm_eps=config.norm_epsilon,
            hidden_act="silu",
            rope_theta=config.rope_theta,
            rope_scaling=rope_scaling,
            attention_dropout=config.dropout_rate,
        )
        if model_type == "mistral":
            specific["sliding_window"] = config.sliding_window
        else:
            specific.update(attention_bias=config.use_bias, mlp_bias=config.use_bias)
    return {"architectures": [_ARCHITECTURES[model_type]], "model_type": model_type} | (
        common | specific
    )


# ------------------------------------------------------------------------------------------
# The name tables
# ------------------------------------------------------------------------------------------
def _linear(hf_name: str, path: tuple[str, ...], layout: str, bias_layout: str | None) -> NameTable:
    """A torch Linear: its weight, and its bias when `bias_layout` is given."""
    rows = [(f"{hf_name}.weight", path + ("kernel",), layout)]
    if bias_layout is not None:
        rows.append((f"{hf_name}.bias", path + ("bias",), bias_layout))
    return rows


def _norm_rows(config: DecoderConfig, hf_name: str, path: tuple[str, ...]) -> NameTable:
    rows = [(f"{hf_name}.weight", path + ("scale",), "copy")]
    if config.norm == "layernorm":
        rows.append((f"{hf_name}.bias", path + ("bias",), "copy"))
    return rows


@dataclasses.dataclass(frozen=True)
class _HfNames:
    """Where a Hugging Face family keeps each tensor (relative to `prefix` / a layer)."""

    prefix: str
    attention: tuple[tuple[str, str], ...]  # (HF projection, flan_jax name)
    attention_norm: str
    mlp: tuple[tuple[str, str], ...]  # (HF projection, flan_jax name)
    mlp_norm: str
    final_norm: str


_HF_NAMES = {
    "opt": _HfNames(
        prefix="model.decoder",
        attention=(
            ("self_attn.q_proj", "query"),
            ("self_attn.k_proj", "key"),
            ("self_attn.v_proj", "value"),
            ("self_attn.out_proj", "out"),
        ),
        attention_norm="self_attn_layer_norm",
        mlp=(("fc1", "wi"), ("fc2", "wo")),
        mlp_norm="final_layer_norm",
        final_norm="final_layer_norm",
    ),
    "llama": _HfNames(
        prefix="model",
        attention=(
            ("self_attn.q_proj", "query"),
            ("self_attn.k_proj", "key"),
            ("self_attn.v_proj", "value"),
            ("self_attn.o_proj", "out"),
        ),
        attention_norm="input_layernorm",
        mlp=(("mlp.gate_proj", "wi_0"), ("mlp.up_proj", "wi_1"), ("mlp.down_proj", "wo")),
        mlp_norm="post_attention_layernorm",
        final_norm="norm",
    ),
}


def _layer_rows(config: DecoderConfig, names: _HfNames, i: int) -> NameTable:
    layer, path = f"{names.prefix}.layers.{i}", (f"layers_{i}",)
    use_bias = config.use_bias
    rows: NameTable = []
    for hf_proj, name in names.attention:
        layout, bias = ("out", "copy") if name == "out" else ("qkv", "head_bias")
        rows += _linear(
            f"{layer}.{hf_proj}", path + ("attention", name), layout, bias if use_bias else None
        )
    rows += _norm_rows(config, f"{layer}.{names.attention_norm}", path + ("attention_norm",))
    for hf_proj, name in names.mlp:
        rows += _linear(
            f"{layer}.{hf_proj}", path + ("mlp", name), "dense", "copy" if use_bias else None
        )
    rows += _norm_rows(config, f"{layer}.{names.mlp_norm}", path + ("mlp_norm",))
    return rows


def name_table(config: DecoderConfig) -> NameTable:
    """(Hugging Face name, unscanned flan_jax path, layout) of every tensor of `config`."""
    names = _HF_NAMES[config.family]
    table: NameTable = [(_embedding_name(config), ("token_embedder", "embedding"), "copy")]
    if config.positions == "learned":
        table.append(
            (f"{names.prefix}.embed_positions.weight", ("position_embedder", "embedding"), "copy")
        )
    if config.embed_dim != config.emb_dim:
        table += _linear(f"{names.prefix}.project_in", ("project_in",), "transpose", None)
        table += _linear(f"{names.prefix}.project_out", ("project_out",), "transpose", None)
    for i in range(config.num_layers):
        table += _layer_rows(config, names, i)
    if config.pre_norm:  # HF's post-norm OPT (350m) has no final norm either
        table += _norm_rows(config, f"{names.prefix}.{names.final_norm}", ("final_norm",))
    if not config.tie_word_embeddings:
        table.append(("lm_head.weight", ("logits_dense", "kernel"), "transpose"))
    return table


def _embedding_name(config: DecoderConfig) -> str:
    return f"{_HF_NAMES[config.family].prefix}.embed_tokens.weight"


# ------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------
def _normalize_names(state_dict: Mapping[str, np.ndarray]) -> StateDict:
    """Names as `*ForCausalLM.state_dict()` gives them.

    Base-model checkpoints (facebook/opt-* store `OPTModel`: `decoder.layers.0...`) lack the
    `model.` prefix, and older transformers saved rotary `inv_freq` buffers, which are
    recomputed from the config.
    """
    normalized = {}
    for name, tensor in state_dict.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name != "lm_head.weight" and not name.startswith("model."):
            name = f"model.{name}"
        normalized[name] = tensor
    return normalized


def params_from_hf_state_dict(
    state_dict: Mapping[str, np.ndarray], config: DecoderConfig, *, source: str = "state dict"
) -> Params:
    """Converts Hugging Face tensors (numpy) into a flan_jax DecoderOnly parameter tree.

    A tied model's `lm_head.weight` may be absent (as `save_pretrained` writes it) or
    present and equal to the embedding (as `state_dict()` returns it).

    Raises:
      ConversionError: a tensor is missing, unexpected, has the wrong shape for `config`,
        or a tied output layer differs from the embedding.
    """
    from flan_jax.models.decoder import abstract_params  # Deferred: pulls in flax.

    state_dict = _normalize_names(state_dict)
    if config.tie_word_embeddings and "lm_head.weight" in state_dict:
        lm_head = state_dict.pop("lm_head.weight")
        embedding = state_dict.get(_embedding_name(config))
        if embedding is None or not np.array_equal(lm_head, embedding):
            raise ConversionError(
                f"{source}: config.json ties the output layer to the embedding "
                f"(tie_word_embeddings) but lm_head.weight differs from {_embedding_name(config)}."
            )
    params = params_from_table(
        state_dict,
        name_table(config),
        abstract=abstract_params(config.replace(scan_layers=False)),
        head_dim=config.head_dim,
        source=source,
    )
    if config.scan_layers:
        stack_layers(params, config.num_layers)
    return params


def hf_state_dict_from_params(params: Params, config: DecoderConfig) -> StateDict:
    """Converts a flan_jax DecoderOnly parameter tree into Hugging Face tensors (float32).

    A tied model has no `lm_head.weight` (transformers ties it to the embedding on load).
    """
    if config.scan_layers:
        params = unstack_layers(params, config.num_layers)
    return state_dict_from_table(params, name_table(config))


def write_hf_files(
    out_dir: Path, *, config: DecoderConfig, vocab_path: str | os.PathLike | None
) -> None:
    """Writes `config.json` and the tokenizer of an export into `out_dir` (not the weights).

    A `tokenizer.json` is copied under its name with its `tokenizer_config.json`; a
    SentencePiece model becomes `tokenizer.model`. The vocabulary's EOS id goes into
    `config.json`.
    """
    from flan_jax.data import vocabularies  # Deferred: seqio pulls in TensorFlow.

    eos_id = None
    if vocab_path is not None:
        eos_id = vocabularies.get_vocabulary(str(vocab_path)).eos_id
        if str(vocab_path).endswith(".json"):
            vocabularies.copy_vocabulary(vocab_path, out_dir)
        else:
            shutil.copyfile(vocab_path, out_dir / "tokenizer.model")
    hf_config = hf_config_from_config(config, eos_token_id=eos_id)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
