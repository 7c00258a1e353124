"""Conversion between Hugging Face T5 / Flan-T5 directories and flan_jax parameters.

A Hugging Face directory holds `config.json`, the weights (`model.safetensors`,
`pytorch_model.bin`, or a sharded variant with an `*.index.json`) and usually `spiece.model`.
Both directions use one table of (Hugging Face name, flan_jax path, layout), so a round trip
reproduces every tensor exactly.

Layouts: torch `nn.Linear` stores weights as [out, in]; flan_jax kernels are [in, out], with
attention kernels split per head: query/key/value [embed, heads, kv], out [heads, kv, embed].
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flan_jax.data import file_io
from flan_jax.errors import UserError
from flan_jax.models.config import T5Config

Params = dict[str, Any]
StateDict = dict[str, np.ndarray]

# Entries Hugging Face stores as aliases of `shared.weight`.
_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class ConversionError(UserError, ValueError):
    """A Hugging Face checkpoint directory that cannot be converted; the message says why."""


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------
def config_from_hf(
    hf_config: Mapping[str, Any], *, source: str = "config.json", **overrides: Any
) -> T5Config:
    """Builds a T5Config from a Hugging Face T5 `config.json` dict.

    Args:
      hf_config: The parsed `config.json`.
      source: Named in error messages.
      **overrides: T5Config fields to set (dtype, scan_layers, remat_policy, ...).
    """
    missing = [
        k
        for k in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers")
        if k not in hf_config
    ]
    if missing:
        raise ConversionError(f"{source}: missing T5 field(s) {missing}.")
    feed_forward = hf_config.get("feed_forward_proj", "relu")
    if feed_forward not in ("gated-gelu", "relu"):
        raise ConversionError(
            f"{source}: feed_forward_proj {feed_forward!r} is not supported; "
            "expected 'gated-gelu' (T5 1.1, Flan-T5) or 'relu' (T5 1.0)."
        )
    # transformers 5 always ties the modules and records the T5 1.0 output rescaling as
    # `scale_decoder_outputs`; older configs express the same with `tie_word_embeddings`.
    tied = hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True))
    values = dict(
        vocab_size=hf_config["vocab_size"],
        emb_dim=hf_config["d_model"],
        num_heads=hf_config["num_heads"],
        head_dim=hf_config["d_kv"],
        mlp_dim=hf_config["d_ff"],
        num_encoder_layers=hf_config["num_layers"],
        num_decoder_layers=hf_config.get("num_decoder_layers") or hf_config["num_layers"],
        relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf_config.get("relative_attention_max_distance", 128),
        dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
        layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)),
        feed_forward=feed_forward,
        tie_word_embeddings=bool(tied),
    )
    values.update(overrides)
    try:
        return T5Config(**values)
    except (TypeError, ValueError) as error:
        raise ConversionError(f"{source}: {error}") from error


def hf_config_from_config(config: T5Config) -> dict[str, Any]:
    """The Hugging Face `config.json` dict for `config`."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "num_heads": config.num_heads,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "feed_forward_proj": config.feed_forward,
        "tie_word_embeddings": config.tie_word_embeddings,
        "is_encoder_decoder": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "initializer_factor": 1.0,
        "use_cache": True,
    }


# ------------------------------------------------------------------------------------------
# The name table
# ------------------------------------------------------------------------------------------
def _attention_entries(hf_prefix: str, path: tuple[str, ...]) -> Iterator[tuple]:
    for hf_name, name in (("q", "query"), ("k", "key"), ("v", "value")):
        yield f"{hf_prefix}.{hf_name}.weight", path + (name, "kernel"), "qkv"
    yield f"{hf_prefix}.o.weight", path + ("out", "kernel"), "out"


def _mlp_entries(config: T5Config, hf_prefix: str, path: tuple[str, ...]) -> Iterator[tuple]:
    names = ("wi_0", "wi_1", "wo") if config.feed_forward == "gated-gelu" else ("wi", "wo")
    for name in names:
        yield f"{hf_prefix}.DenseReluDense.{name}.weight", path + ("mlp", name, "kernel"), "dense"
    yield f"{hf_prefix}.layer_norm.weight", path + ("pre_mlp_layer_norm", "scale"), "copy"


def _name_table(config: T5Config) -> list[tuple[str, tuple[str, ...], str]]:
    """(Hugging Face name, unscanned flan_jax path, layout) for every tensor."""
    table: list[tuple[str, tuple[str, ...], str]] = [
        ("shared.weight", ("token_embedder", "embedding"), "copy")
    ]
    for stack in ("encoder", "decoder"):
        table.append(
            (
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                (stack, "relpos_bias", "rel_embedding"),
                "transpose",
            )
        )
        norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
        table.append((f"{stack}.final_layer_norm.weight", (stack, norm, "scale"), "copy"))
    for i in range(config.num_encoder_layers):
        hf, path = f"encoder.block.{i}.layer", ("encoder", f"layers_{i}")
        table += _attention_entries(f"{hf}.0.SelfAttention", path + ("attention",))
        table.append(
            (f"{hf}.0.layer_norm.weight", path + ("pre_attention_layer_norm", "scale"), "copy")
        )
        table += _mlp_entries(config, f"{hf}.1", path)
    for i in range(config.num_decoder_layers):
        hf, path = f"decoder.block.{i}.layer", ("decoder", f"layers_{i}")
        table += _attention_entries(f"{hf}.0.SelfAttention", path + ("self_attention",))
        table.append(
            (f"{hf}.0.layer_norm.weight", path + ("pre_self_attention_layer_norm", "scale"), "copy")
        )
        table += _attention_entries(
            f"{hf}.1.EncDecAttention", path + ("encoder_decoder_attention",)
        )
        table.append(
            (
                f"{hf}.1.layer_norm.weight",
                path + ("pre_cross_attention_layer_norm", "scale"),
                "copy",
            )
        )
        table += _mlp_entries(config, f"{hf}.2", path)
    if not config.tie_word_embeddings:
        table.append(("lm_head.weight", ("decoder", "logits_dense", "kernel"), "transpose"))
    return table


def _to_flax(tensor: np.ndarray, layout: str, config: T5Config) -> np.ndarray:
    if layout == "copy":
        return tensor
    if layout in ("transpose", "dense"):
        return tensor.T
    if layout == "qkv":  # [heads*kv, embed] -> [embed, heads, kv]
        return tensor.T.reshape(config.emb_dim, config.num_heads, config.head_dim)
    if layout == "out":  # [embed, heads*kv] -> [heads, kv, embed]
        return tensor.T.reshape(config.num_heads, config.head_dim, config.emb_dim)
    raise AssertionError(f"unknown layout {layout}")


def _to_torch(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "copy":
        return array
    if layout in ("transpose", "dense"):
        return array.T
    if layout == "qkv":
        return array.reshape(array.shape[0], -1).T
    if layout == "out":
        return array.reshape(-1, array.shape[-1]).T
    raise AssertionError(f"unknown layout {layout}")


# ------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------
def _set_path(tree: Params, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get_path(tree: Params, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _stack_layers(stack: Params, num_layers: int) -> Params:
    """Turns `layers_{i}` subtrees into one `layers` subtree with a leading layer axis."""
    import jax  # Deferred: conversion of unscanned checkpoints needs no JAX.

    layers = [stack.pop(f"layers_{i}") for i in range(num_layers)]
    stack["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)
    return stack


def _unstack_layers(stack: Params, num_layers: int) -> Params:
    import jax

    stack = dict(stack)
    layers = stack.pop("layers")
    for i in range(num_layers):
        stack[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), layers)
    return stack


def params_from_hf_state_dict(
    state_dict: Mapping[str, np.ndarray], config: T5Config, *, source: str = "state dict"
) -> Params:
    """Converts Hugging Face tensors (numpy, float32) into a flan_jax parameter tree.

    Raises:
      ValueError: a tensor is missing, unexpected, or has the wrong shape for `config`.
    """
    state_dict = dict(state_dict)
    for alias in _EMBEDDING_ALIASES:
        state_dict.pop(alias, None)
    if config.tie_word_embeddings:
        lm_head = state_dict.pop("lm_head.weight", None)
        shared = state_dict.get("shared.weight")
        if lm_head is not None and (shared is None or not np.array_equal(lm_head, shared)):
            raise ConversionError(
                f"{source}: the config ties the output layer to the embedding "
                "(T5 1.0) but lm_head.weight differs from shared.weight."
            )
    elif "lm_head.weight" not in state_dict and "shared.weight" in state_dict:
        # transformers 5 saves untied T5 1.1 models with a tied (absent) lm_head.
        state_dict["lm_head.weight"] = state_dict["shared.weight"]
    table = _name_table(config)
    problems = _state_dict_problems(state_dict, table, config)
    if problems:
        more = f"; ... {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ConversionError(
            f"{source}: the weights do not match the config: " + "; ".join(problems[:8]) + more
        )
    params: Params = {}
    for name, path, layout in table:
        tensor = np.asarray(state_dict[name], dtype=np.float32)
        _set_path(params, path, _to_flax(tensor, layout, config))
    if config.scan_layers:
        _stack_layers(params["encoder"], config.num_encoder_layers)
        _stack_layers(params["decoder"], config.num_decoder_layers)
    return params


def _state_dict_problems(
    state_dict: Mapping[str, np.ndarray], table: list[tuple], config: T5Config
) -> list[str]:
    """Missing, unexpected and wrongly shaped tensors, as readable strings."""
    from flan_jax.models.t5 import abstract_params  # Deferred: pulls in flax.

    unscanned = abstract_params(config.replace(scan_layers=False))
    known = {name for name, _, _ in table}
    problems = [f"unexpected {name}" for name in sorted(state_dict) if name not in known]
    for name, path, layout in table:
        expected = _to_torch(np.empty(_get_path(unscanned, path).shape), layout).shape
        if name not in state_dict:
            problems.append(f"missing {name} {expected}")
        elif tuple(state_dict[name].shape) != expected:
            problems.append(
                f"{name} has shape {tuple(state_dict[name].shape)}, config expects {expected}"
            )
    return problems


def hf_state_dict_from_params(params: Params, config: T5Config) -> StateDict:
    """Converts a flan_jax parameter tree into Hugging Face tensors (numpy, float32)."""
    params = dict(params)
    if config.scan_layers:
        params["encoder"] = _unstack_layers(params["encoder"], config.num_encoder_layers)
        params["decoder"] = _unstack_layers(params["decoder"], config.num_decoder_layers)
    return {
        name: np.ascontiguousarray(
            _to_torch(np.asarray(_get_path(params, path), dtype=np.float32), layout)
        )
        for name, path, layout in _name_table(config)
    }


# ------------------------------------------------------------------------------------------
# Directories
# ------------------------------------------------------------------------------------------
def _read_weight_files(hf_dir: Path) -> StateDict:
    """Reads the tensors of a Hugging Face directory as float32 numpy arrays."""
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (hf_dir / index_name).is_file():
            try:
                weight_map = json.loads((hf_dir / index_name).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as error:
                raise ConversionError(
                    f"{hf_dir / index_name}: malformed index ({error!r})."
                ) from error
            files = sorted(set(weight_map.values()))
            break
        if (hf_dir / single_name).is_file():
            files = [single_name]
            break
    else:
        raise FileNotFoundError(
            f"{hf_dir} holds no model.safetensors or pytorch_model.bin "
            "(nor a sharded *.index.json)."
        )
    state_dict: StateDict = {}
    for name in files:
        state_dict.update(_read_one_weight_file(hf_dir / name))
    return state_dict


def _read_one_weight_file(path: Path) -> StateDict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed in the weight index but does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            # The flax framework reads bfloat16, which numpy alone cannot.
            with safe_open(str(path), framework="flax") as f:
                return {k: np.asarray(f.get_tensor(k), dtype=np.float32) for k in f.keys()}
        import torch  # A .bin checkpoint is a torch pickle; only then is torch needed.

        loaded = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in loaded.items()}
    except (OSError, RuntimeError, ValueError) as error:
        raise ConversionError(f"{path}: cannot read the weights ({error}).") from error


def load_hf_directory(
    hf_dir: str | os.PathLike, **overrides: Any
) -> tuple[Params, T5Config, Path | None]:
    """Imports a Hugging Face T5 / Flan-T5 directory.

    Args:
      hf_dir: Directory with `config.json`, the weights and (usually) `spiece.model`.
      **overrides: T5Config fields to set on the imported config (dtype, scan_layers, ...).

    Returns:
      (params, config, path of spiece.model or None when the directory has none).
    """
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} is missing: {hf_dir} is not a Hugging Face model directory."
        )
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{config_path}: not valid JSON ({error}).") from error
    if hf_config.get("model_type", "t5") != "t5":
        raise ConversionError(
            f"{config_path}: model_type is {hf_config.get('model_type')!r}, only 't5' is supported."
        )
    config = config_from_hf(hf_config, source=str(config_path), **overrides)
    params = params_from_hf_state_dict(_read_weight_files(hf_dir), config, source=str(hf_dir))
    vocab_path = hf_dir / "spiece.model"
    return params, config, vocab_path if vocab_path.is_file() else None


def save_hf_directory(
    out_dir: str | os.PathLike,
    *,
    params: Params,
    config: T5Config,
    vocab_path: str | os.PathLike | None = None,
) -> Path:
    """Exports a directory that `T5ForConditionalGeneration.from_pretrained` loads.

    The directory is written under a temporary name and renamed into place, so an
    interrupted export leaves nothing half-written at `out_dir`.

    Args:
      out_dir: Destination; must not exist or be an empty directory.
      params: flan_jax parameters matching `config`.
      config: The model architecture.
      vocab_path: SentencePiece model copied in as `spiece.model` (skipped when None).

    Raises:
      FileExistsError: `out_dir` exists and is not an empty directory.
    """
    from safetensors.numpy import save_file

    with file_io.atomic_output_directory(out_dir) as temp_dir:
        save_file(
            hf_state_dict_from_params(params, config),
            str(temp_dir / "model.safetensors"),
            metadata={"format": "pt"},
        )
        (temp_dir / "config.json").write_text(
            json.dumps(hf_config_from_config(config), indent=2) + "\n"
        )
        if vocab_path is not None:
            shutil.copyfile(vocab_path, temp_dir / "spiece.model")
    return Path(out_dir)
