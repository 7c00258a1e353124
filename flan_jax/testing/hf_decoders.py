"""Test helpers for decoder conversion: tiny transformers OPT / Llama / Mistral, a tokenizer.

Nothing downloads: the reference models are random-initialised from configs, and the
tokenizer is a byte-level BPE trained on a few generated sentences by the `tokenizers`
package. torch and transformers are imported inside the functions (test references only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from flan_jax.data import file_io
from flan_jax.testing.models import random_sentences

# Hugging Face configs of the parity tests: odd head counts, kv_heads < heads, tied and
# untied output, Llama with biases on every projection, OPT's post-norm with
# word_embed_proj_dim != hidden_size, llama3 rope scaling with a short original context
# (so positions past it are scaled), and a Mistral sliding window shorter than the test
# sequences.
HF_PARITY_CONFIGS: dict[str, dict[str, Any]] = {
    "opt_pre_norm_odd_heads": dict(
        model_type="opt",
        vocab_size=320,
        hidden_size=30,
        num_attention_heads=3,
        num_hidden_layers=2,
        ffn_dim=44,
        max_position_embeddings=40,
        word_embed_proj_dim=30,
        do_layer_norm_before=True,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    ),
    "opt_post_norm_projected": dict(
        model_type="opt",
        vocab_size=320,
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        ffn_dim=48,
        max_position_embeddings=40,
        word_embed_proj_dim=20,
        do_layer_norm_before=False,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    ),
    "llama_gqa_llama3_untied": dict(
        model_type="llama",
        vocab_size=320,
        hidden_size=40,
        num_attention_heads=5,
        num_key_value_heads=1,
        head_dim=6,
        num_hidden_layers=2,
        intermediate_size=56,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=2,
    ),
    "llama_gqa_tied_biases": dict(
        model_type="llama",
        vocab_size=320,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=48,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=2,
    ),
    "mistral_gqa_sliding_window": dict(
        model_type="mistral",
        vocab_size=320,
        hidden_size=36,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=12,
        num_hidden_layers=2,
        intermediate_size=50,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        sliding_window=5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=2,
    ),
}

_CONFIG_CLASSES = {"opt": "OPTConfig", "llama": "LlamaConfig", "mistral": "MistralConfig"}
_MODEL_CLASSES = {
    "opt": "OPTForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
}


def make_hf_decoder(hf_config: dict[str, Any], *, seed: int = 0) -> Any:
    """A random-initialised transformers causal LM of `hf_config` (a config.json dict), f32, eval.

    Norm scales and biases are drawn away from their (1, 0) init, so a wrongly mapped norm
    or bias cannot pass unnoticed; every other weight keeps the transformers init.
    """
    import torch
    import transformers

    fields = {k: v for k, v in hf_config.items() if k != "model_type"}
    model_type = hf_config["model_type"]
    config = getattr(transformers, _CONFIG_CLASSES[model_type])(**fields)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, _MODEL_CLASSES[model_type])(config)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                tensor.uniform_(-0.2, 0.2)
    return model.float().eval()


def hf_state_dict_numpy(model: Any) -> dict[str, np.ndarray]:
    """The float32 numpy tensors of a torch model, keyed by state-dict name."""
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


def write_test_tokenizer(
    out_dir: str | os.PathLike, *, vocab_size: int = 300, with_config: bool = True
) -> Path:
    """Trains a byte-level BPE `tokenizer.json` (ids 0-3: <s>, <pad>, </s>, <unk>).

    Args:
      out_dir: Directory that receives `tokenizer.json` (and `tokenizer_config.json`).
      vocab_size: Target size; byte-level BPE holds at least 256 + 4 entries.
      with_config: Also write `tokenizer_config.json` naming the special tokens.

    Returns:
      The path of `tokenizer.json`.
    """
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    rng = np.random.default_rng(0)
    sentences = random_sentences(rng, 500)
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sentences, trainer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.json"
    tokenizer.save(str(path))
    if with_config:
        special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
        file_io.write_json_atomically(out_dir / "tokenizer_config.json", special, indent=None)
    return path
