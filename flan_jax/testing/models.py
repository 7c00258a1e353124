"""Test helpers for the models: tiny T5 and decoder configs, a reference PyTorch T5, a vocabulary.

Nothing here downloads anything: the Hugging Face reference model is built from a config with
random weights, and the SentencePiece model is trained on a few generated sentences.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flan_jax.models.config import DecoderConfig, T5Config

# Configurations that stress the parts of the architecture parity tests should cover:
# odd head counts, head_dim != emb_dim / num_heads, unequal depths, tied / untied,
# T5 1.0 relu and T5 1.1 gated-gelu, a small bucket range so long distances are exercised.
PARITY_CONFIGS: dict[str, dict[str, Any]] = {
    "gated_untied_odd_heads": dict(
        vocab_size=96,
        emb_dim=24,
        num_heads=3,
        head_dim=5,
        mlp_dim=40,
        num_encoder_layers=2,
        num_decoder_layers=3,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
    ),
    "relu_tied": dict(
        vocab_size=80,
        emb_dim=32,
        num_heads=4,
        head_dim=8,
        mlp_dim=48,
        num_encoder_layers=3,
        num_decoder_layers=2,
        feed_forward="relu",
        tie_word_embeddings=True,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
    ),
    "gated_tied_small_buckets": dict(
        vocab_size=64,
        emb_dim=20,
        num_heads=5,
        head_dim=7,
        mlp_dim=36,
        num_encoder_layers=1,
        num_decoder_layers=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        tie_word_embeddings=True,
    ),
    "relu_untied_one_head": dict(
        vocab_size=72,
        emb_dim=16,
        num_heads=1,
        head_dim=12,
        mlp_dim=30,
        num_encoder_layers=2,
        num_decoder_layers=1,
        feed_forward="relu",
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
    ),
}


# Configurations that stress the two families: grouped-query heads, Llama 3 rope scaling,
# a sliding window shorter than the rows, tied output; OPT's learned positions, biases,
# post-norm and project_in / project_out.
DECODER_TEST_CONFIGS: dict[str, dict[str, Any]] = {
    "llama_gqa_scaled_rope": dict(
        family="llama",
        num_heads=4,
        num_kv_heads=2,
        rope_scaling_factor=8.0,
        rope_original_max_length=8,
        rope_theta=500.0,
    ),
    "mistral_window": dict(family="llama", num_heads=4, num_kv_heads=1, sliding_window=3),
    "opt_post_norm_projected": dict(
        family="opt",
        num_heads=4,
        num_kv_heads=4,
        positions="learned",
        norm="layernorm",
        activation="relu",
        use_bias=True,
        pre_norm=False,
        word_embed_proj_dim=12,
        tie_word_embeddings=True,
        max_length=64,
        start_token_id=2,
    ),
}


def make_tiny_decoder_config(name: str, **overrides: Any) -> DecoderConfig:
    """A tiny f32 decoder of family case `name` (a key of DECODER_TEST_CONFIGS)."""
    fields: dict[str, Any] = dict(
        vocab_size=50,
        emb_dim=16,
        head_dim=6,
        mlp_dim=24,
        num_layers=2,
        dtype="float32",
        start_token_id=3,
    )
    fields.update(DECODER_TEST_CONFIGS[name])
    fields.update(overrides)
    return DecoderConfig(**fields)


def make_tiny_t5_config(**overrides: Any) -> T5Config:
    """The tiny f32 T5 1.1 of every CPU test: 1+1 layers, dims all even (shardable 2 ways).

    Tests pass overrides for what they exercise, for example
    ``make_tiny_t5_config(num_encoder_layers=2, num_decoder_layers=2)`` where a bug could
    hide in one layer's output feeding the next (scanned layers, packing).
    """
    fields: dict[str, Any] = dict(
        vocab_size=128,
        emb_dim=32,
        num_heads=4,
        head_dim=8,
        mlp_dim=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        dtype="float32",
    )
    fields.update(overrides)
    return T5Config(**fields)


def build_hf_t5(config: T5Config) -> Any:
    """`transformers.T5ForConditionalGeneration` of `config`, initialised by transformers.

    Untied configs get an output layer that is its own tensor: transformers 5 ties lm_head
    to the embedding whatever the config says, so loading lm_head.weight would otherwise
    overwrite the embedding.
    """
    import torch
    import transformers

    from flan_jax.models.hf_convert import hf_config_from_config

    hf_config = transformers.T5Config(
        **{
            k: v
            for k, v in hf_config_from_config(config).items()
            if k not in ("architectures", "model_type")
        }
    )
    model = transformers.T5ForConditionalGeneration(hf_config)
    if not config.tie_word_embeddings:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return model


def make_hf_reference(config: T5Config, *, seed: int = 0) -> Any:
    """A randomly initialised `transformers.T5ForConditionalGeneration` in eval mode.

    Untied configs get an output layer independent of the embedding (transformers 5 ties
    the modules by default, so the lm_head gets its own fresh parameter here).
    """
    import torch

    torch.manual_seed(seed)
    model = build_hf_t5(config)
    if not config.tie_word_embeddings:
        model.lm_head.weight = torch.nn.Parameter(
            torch.randn(config.vocab_size, config.emb_dim) * config.emb_dim**-0.5
        )
    # Non-trivial norm scales, so a wrongly mapped norm cannot pass unnoticed.
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "layer_norm" in name:
                tensor.uniform_(0.5, 1.5)
    return model.eval()


def hf_state_dict_numpy(model: Any) -> dict[str, np.ndarray]:
    """The float32 numpy tensors of a torch model, keyed by state-dict name."""
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


_WORDS = (
    "the a model learns to answer questions about numbers and words quickly "
    "seven eight nine ten cat dog bird tree river mountain question answer yes no "
    "because therefore first then finally translate summarize"
).split()


def random_sentences(
    rng: np.random.Generator, count: int, words: Sequence[str] = tuple(_WORDS)
) -> list[str]:
    """`count` sentences of 3 to 11 words drawn from `words`: tokenizer training text."""
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 12)))) for _ in range(count)]


def write_test_sentencepiece(
    out_dir: str | os.PathLike, *, vocab_size: int = 96, seed: int = 0
) -> Path:
    """Trains a tiny SentencePiece model with the T5 id layout (pad 0, eos 1, unk 2).

    Args:
      out_dir: Directory that receives `test_spiece.model`.
      vocab_size: Pieces in the model.
      seed: Seed of the generated training sentences.

    Returns:
      The path of the model file.
    """
    # Imported here: seqio pulls in TensorFlow, which the tiny-config users (the sharded
    # training subprocesses) do not need.
    from flan_jax.data import vocabularies

    rng = np.random.default_rng(seed)
    # Real words plus made-up ones from random syllables, so there are enough distinct
    # pieces to reach `vocab_size`.
    syllables = [
        "".join(rng.choice(list("bdfgklmnprstvz"))) + rng.choice(list("aeiou")) for _ in range(60)
    ]
    invented = ["".join(rng.choice(syllables, size=int(rng.integers(1, 4)))) for _ in range(300)]
    words = list(_WORDS) + invented
    sentences = random_sentences(rng, 2000, words)
    return Path(
        vocabularies.build_sentencepiece_model(
            sentences, str(Path(out_dir) / "test_spiece"), vocab_size
        )
    )


def save_tiny_demo_decoder_checkpoint(root: Path, *, step: int) -> tuple[Path, Any, DecoderConfig]:
    """A random tiny f32 decoder checkpoint over the demo vocabulary, under ``root``.

    Returns (checkpoint directory, params, config); the vocabulary is built in
    ``root / "vocab"``.
    """
    import jax

    from flan_jax import checkpoints
    from flan_jax.models import decoder
    from flan_jax.tasks import demo

    config = DecoderConfig(
        vocab_size=1024,  # the demo vocabulary's 1000 ids
        emb_dim=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=48,
        num_layers=2,
        tie_word_embeddings=True,
        dtype="float32",
    )
    vocabulary = demo.get_demo_vocabulary(str(root / "vocab"))
    params = decoder.init_params(config, jax.random.key(0))
    ckpt = checkpoints.save_model_checkpoint(
        root / "ckpt",
        params=params,
        config=config,
        vocab_path=vocabulary.sentencepiece_model_file,
        extra_ids=0,
        step=step,
    )
    return Path(ckpt), params, config
