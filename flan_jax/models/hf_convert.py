"""Conversion between Hugging Face directories and flan_jax parameters: the shared parts and T5.

A Hugging Face directory holds `config.json`, the weights (`model.safetensors`,
`pytorch_model.bin`, or a sharded variant with an `*.index.json`) and usually a tokenizer.
`load_hf_directory` / `save_hf_directory` dispatch on the architecture: T5 / Flan-T5 here,
OPT / Llama / Mistral in `hf_convert_decoder`. Each model has one table of (Hugging Face
name, flan_jax path, layout), used in both directions, so a round trip reproduces every
tensor exactly.

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
from flan_jax.models.config import DecoderConfig, T5Config

Params = dict[str, Any]
StateDict = dict[str, np.ndarray]
# (Hugging Face name, unscanned flan_jax path, layout) of every tensor of a model.
NameTable = list[tuple[str, tuple[str, ...], str]]

# config.json model types converted by `hf_convert_decoder`, and the vocabulary files read
# from their directories, in order of preference.
DECODER_MODEL_TYPES = ("opt", "llama", "mistral")
DECODER_VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model")
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


def _name_table(config: T5Config) -> NameTable:
    """(Hugging Face name, unscanned flan_jax path, layout) for every tensor."""
    table: NameTable = [("shared.weight", ("token_embedder", "embedding"), "copy")]
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


def to_flax(tensor: np.ndarray, layout: str, *, head_dim: int) -> np.ndarray:
    """A Hugging Face tensor in flan_jax's layout (see the module docstring)."""
    if layout == "copy":
        return tensor
    if layout in ("transpose", "dense"):
        return tensor.T
    if layout == "qkv":  # [heads*kv, embed] -> [embed, heads, kv]
        return tensor.T.reshape(tensor.shape[1], -1, head_dim)
    if layout == "out":  # [embed, heads*kv] -> [heads, kv, embed]
        return tensor.T.reshape(-1, head_dim, tensor.shape[0])
    if layout == "head_bias":  # [heads*kv] -> [heads, kv]
        return tensor.reshape(-1, head_dim)
    raise AssertionError(f"unknown layout {layout}")


def to_torch(array: np.ndarray, layout: str) -> np.ndarray:
    """The inverse of `to_flax`."""
    if layout == "copy":
        return array
    if layout in ("transpose", "dense"):
        return array.T
    if layout == "qkv":
        return array.reshape(array.shape[0], -1).T
    if layout == "out":
        return array.reshape(-1, array.shape[-1]).T
    if layout == "head_bias":
        return array.reshape(-1)
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


def stack_layers(stack: Params, num_layers: int) -> Params:
    """Turns `layers_{i}` subtrees into one `layers` subtree with a leading layer axis."""
    import jax  # Deferred: conversion of unscanned checkpoints needs no JAX.

    layers = [stack.pop(f"layers_{i}") for i in range(num_layers)]
    stack["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)
    return stack


def unstack_layers(stack: Params, num_layers: int) -> Params:
    """The inverse of `stack_layers` (returns a new dict)."""
    import jax

    stack = dict(stack)
    layers = stack.pop("layers")
    for i in range(num_layers):
        stack[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), layers)
    return stack


def params_from_table(
    state_dict: Mapping[str, np.ndarray],
    table: NameTable,
    *,
    abstract: Params,
    head_dim: int,
    source: str,
) -> Params:
    """The unscanned flan_jax tree of `table`'s tensors, after checking names and shapes.

    Args:
      state_dict: Hugging Face name -> tensor (aliases and tied entries already removed).
      table: (Hugging Face name, flan_jax path, layout) of every tensor.
      abstract: The model's unscanned abstract parameters (expected shapes).
      head_dim: Width of an attention head (to split projections per head).
      source: Named in error messages.
    """
    known = {name for name, _, _ in table}
    problems = [f"unexpected {name}" for name in sorted(state_dict) if name not in known]
    for name, path, layout in table:
        expected = to_torch(np.empty(_get_path(abstract, path).shape), layout).shape
        if name not in state_dict:
            problems.append(f"missing {name} {expected}")
        elif tuple(state_dict[name].shape) != expected:
            problems.append(
                f"{name} has shape {tuple(state_dict[name].shape)}, config expects {expected}"
            )
    if problems:
        more = f"; ... {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ConversionError(
            f"{source}: the weights do not match the config: " + "; ".join(problems[:8]) + more
        )
    params: Params = {}
    for name, path, layout in table:
        tensor = np.asarray(state_dict[name], dtype=np.float32)
        _set_path(params, path, to_flax(tensor, layout, head_dim=head_dim))
    return params


def state_dict_from_table(params: Params, table: NameTable) -> StateDict:
    """The Hugging Face tensors (float32, contiguous) of an unscanned flan_jax tree."""
    return {
        name: np.ascontiguousarray(
            to_torch(np.asarray(_get_path(params, path), dtype=np.float32), layout)
        )
        for name, path, layout in table
    }


def params_from_hf_state_dict(
    state_dict: Mapping[str, np.ndarray], config: T5Config, *, source: str = "state dict"
) -> Params:
    """Converts Hugging Face T5 tensors (numpy, float32) into a flan_jax parameter tree.

    Raises:
      ConversionError: a tensor is missing, unexpected, or has the wrong shape for `config`.
    """
    from flan_jax.models.t5 import abstract_params  # Deferred: pulls in flax.

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
    params = params_from_table(
        state_dict,
        _name_table(config),
        abstract=abstract_params(config.replace(scan_layers=False)),
        head_dim=config.head_dim,
        source=source,
    )
    if config.scan_layers:
        stack_layers(params["encoder"], config.num_encoder_layers)
        stack_layers(params["decoder"], config.num_decoder_layers)
    return params


def hf_state_dict_from_params(params: Params, config: T5Config) -> StateDict:
    """Converts a flan_jax T5 parameter tree into Hugging Face tensors (numpy, float32)."""
    params = dict(params)
    if config.scan_layers:
        params["encoder"] = unstack_layers(params["encoder"], config.num_encoder_layers)
        params["decoder"] = unstack_layers(params["decoder"], config.num_decoder_layers)
    return state_dict_from_table(params, _name_table(config))


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


def read_hf_config(hf_dir: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The parsed `config.json` of a Hugging Face directory, and its path."""
    config_path = Path(hf_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} is missing: {hf_dir} is not a Hugging Face model directory."
        )
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{config_path}: not valid JSON ({error}).") from error
    if not isinstance(hf_config, dict):
        raise ConversionError(f"{config_path}: expected a JSON object.")
    return hf_config, config_path


def find_vocabulary_file(hf_dir: Path, names: tuple[str, ...]) -> Path | None:
    """The first of `names` that `hf_dir` holds, or None."""
    return next((hf_dir / n for n in names if (hf_dir / n).is_file()), None)


def load_hf_directory(
    hf_dir: str | os.PathLike, **overrides: Any
) -> tuple[Params, T5Config | DecoderConfig, Path | None]:
    """Imports a Hugging Face directory, by its `config.json` `model_type`.

    "t5" (T5, Flan-T5) becomes a T5Config model; "opt", "llama" and "mistral" a
    DecoderConfig one (`hf_convert_decoder`).

    Args:
      hf_dir: Directory with `config.json`, the weights and (usually) the tokenizer.
      **overrides: Config fields to set on the imported config (dtype, scan_layers, ...).

    Returns:
      (params, config, the vocabulary file or None when the directory has none): T5's
      `spiece.model`; for decoders `tokenizer.json`, else a SentencePiece `tokenizer.model`.
    """
    hf_dir = Path(hf_dir)
    hf_config, config_path = read_hf_config(hf_dir)
    model_type = hf_config.get("model_type", "t5")
    if model_type in DECODER_MODEL_TYPES:
        # Deferred: hf_convert_decoder imports this module's helpers.
        from flan_jax.models import hf_convert_decoder

        config = hf_convert_decoder.config_from_hf(hf_config, source=str(config_path), **overrides)
        state_dict = _read_weight_files(hf_dir)
        params = hf_convert_decoder.params_from_hf_state_dict(
            state_dict, config, source=str(hf_dir)
        )
        return params, config, find_vocabulary_file(hf_dir, DECODER_VOCABULARY_FILES)
    if model_type != "t5":
        raise ConversionError(
            f"{config_path}: model_type is {model_type!r}; supported: "
            f"{', '.join(('t5',) + DECODER_MODEL_TYPES)}."
        )
    t5_config = config_from_hf(hf_config, source=str(config_path), **overrides)
    params = params_from_hf_state_dict(_read_weight_files(hf_dir), t5_config, source=str(hf_dir))
    return params, t5_config, find_vocabulary_file(hf_dir, ("spiece.model",))


def write_weight_files(
    out_dir: Path, state_dict: Mapping[str, np.ndarray], *, max_shard_bytes: int | None = None
) -> list[str]:
    """Writes `model.safetensors`, or shards and `model.safetensors.index.json`.

    Args:
      out_dir: The destination directory.
      state_dict: Name -> float32 tensor.
      max_shard_bytes: Shard when the tensors exceed it (a shard holds whole tensors, so
        one may exceed it alone); None: one file.

    Returns:
      The weight file names written.
    """
    from safetensors.numpy import save_file

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, tensor in state_dict.items():
        if max_shard_bytes is not None and shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.nbytes for t in state_dict.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


def save_hf_directory(
    out_dir: str | os.PathLike,
    *,
    params: Params,
    config: T5Config | DecoderConfig,
    vocab_path: str | os.PathLike | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Exports a directory that transformers' `from_pretrained` loads.

    A T5Config exports `T5ForConditionalGeneration`; a DecoderConfig `OPTForCausalLM`,
    `LlamaForCausalLM` or, with a sliding window, `MistralForCausalLM`. The directory is
    written under a temporary name and renamed into place, so an interrupted export leaves
    nothing half-written at `out_dir`.

    Args:
      out_dir: Destination; must not exist or be an empty directory.
      params: flan_jax parameters matching `config`.
      config: The model architecture.
      vocab_path: The vocabulary copied in (skipped when None): T5's SentencePiece model
        as `spiece.model`; a decoder's `tokenizer.json` (with its `tokenizer_config.json`)
        under its name, or its SentencePiece model as `tokenizer.model`. Its EOS id goes
        into a decoder's `config.json`.
      max_shard_bytes: Shard the weights above this size (see `write_weight_files`).

    Raises:
      FileExistsError: `out_dir` exists and is not an empty directory.
    """
    with file_io.atomic_output_directory(out_dir) as temp_dir:
        if isinstance(config, DecoderConfig):
            from flan_jax.models import hf_convert_decoder  # Deferred: imports this module.

            hf_convert_decoder.write_hf_files(temp_dir, config=config, vocab_path=vocab_path)
            state_dict = hf_convert_decoder.hf_state_dict_from_params(params, config)
        else:
            (temp_dir / "config.json").write_text(
                json.dumps(hf_config_from_config(config), indent=2) + "\n"
            )
            if vocab_path is not None:
                shutil.copyfile(vocab_path, temp_dir / "spiece.model")
            state_dict = hf_state_dict_from_params(params, config)
        write_weight_files(temp_dir, state_dict, max_shard_bytes=max_shard_bytes)
    return Path(out_dir)
