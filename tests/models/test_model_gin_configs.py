"""Every shipped model gin file parses and gives the published sizes (T5 1.1, OPT, Llama 3,
Mistral)."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import gin
import jax
import pytest

from flan_jax.models import decoder, t5
from flan_jax.models.config import DecoderConfig, T5Config

MODEL_DIR = Path(resources.files("flan_jax.gin_configs")) / "models"
# (emb_dim, num_heads, layers per stack, mlp_dim, published parameter count)
PUBLISHED = {
    "small": (512, 6, 8, 1024, 76_961_152),
    "base": (768, 12, 12, 2048, 247_577_856),
    "large": (1024, 16, 24, 2816, 783_150_080),
    "xl": (2048, 32, 24, 5120, 2_849_757_184),
    "xxl": (4096, 64, 24, 10240, 11_135_332_352),
}


def _parse(path: Path) -> T5Config | DecoderConfig:
    gin.clear_config()
    try:
        gin.parse_config_file(str(path))
        return gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    finally:
        gin.clear_config()


@pytest.mark.parametrize("path", sorted(MODEL_DIR.glob("t5_*.gin")), ids=lambda p: p.stem)
def test_model_gin_file_builds_a_valid_config(path):
    config = _parse(path)
    assert isinstance(config, T5Config)
    assert config.vocab_size == 32128 and config.feed_forward == "gated-gelu"


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_published_sizes_and_parameter_counts(size):
    emb_dim, heads, layers, mlp_dim, count = PUBLISHED[size]
    config = _parse(MODEL_DIR / f"t5_1_1_{size}.gin")
    assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim) == (
        emb_dim,
        heads,
        64,
        mlp_dim,
    )
    assert config.num_encoder_layers == config.num_decoder_layers == layers
    shapes = jax.tree_util.tree_leaves(t5.abstract_params(config))
    assert sum(math.prod(x.shape) for x in shapes) == count


# Published parameter counts of the decoder-only sizes, each file checked within 0.5%.
# OPT: the sizes of Zhang et al. 2022 (arXiv 2205.01068, Table 1), counted exactly as the
# facebook/opt-* Hugging Face checkpoints hold them (the shapes their config.json gives,
# the tied lm_head once). Llama: the meta-llama model cards and Hub counts (Llama 3.2 1B
# "1.23B", 3B "3.21B"; Llama 3.1 8B "8.03B", 70B "70.6B"), to the precision of the shapes
# of their config.json. Mistral: mistralai/Mistral-7B-v0.1 ("7.24B" on the Hub).
DECODER_PUBLISHED = {
    "opt_125m": 125.2e6,
    "opt_350m": 331.2e6,
    "opt_1_3b": 1.316e9,
    "opt_2_7b": 2.652e9,
    "opt_6_7b": 6.658e9,
    "opt_13b": 12.853e9,
    "opt_30b": 29.975e9,
    "opt_66b": 65.7e9,
    "llama3_1b": 1.236e9,
    "llama3_3b": 3.213e9,
    "llama3_8b": 8.030e9,
    "llama3_70b": 70.554e9,
    "mistral_7b": 7.242e9,
}


def test_every_decoder_gin_file_is_checked():
    shipped = {p.stem for p in MODEL_DIR.glob("*.gin") if not p.stem.startswith("t5_")}
    assert shipped == set(DECODER_PUBLISHED) | {"decoder_tiny"}


@pytest.mark.parametrize("name", sorted(DECODER_PUBLISHED))
def test_decoder_parameter_counts_match_the_published_figures(name):
    config = _parse(MODEL_DIR / f"{name}.gin")
    assert isinstance(config, DecoderConfig)
    shapes = jax.tree_util.tree_leaves(decoder.abstract_params(config))
    count = sum(math.prod(x.shape) for x in shapes)
    assert count == pytest.approx(DECODER_PUBLISHED[name], rel=5e-3)


def test_decoder_family_details():
    opt_350m = _parse(MODEL_DIR / "opt_350m.gin")
    assert not opt_350m.pre_norm and opt_350m.word_embed_proj_dim == 512
    assert "final_norm" not in decoder.abstract_params(opt_350m)
    llama_8b, llama_1b = _parse(MODEL_DIR / "llama3_8b.gin"), _parse(MODEL_DIR / "llama3_1b.gin")
    assert llama_8b.rope_scaling_factor == 8.0 and not llama_8b.tie_word_embeddings
    assert llama_1b.tie_word_embeddings and llama_1b.num_kv_heads == 8
    assert _parse(MODEL_DIR / "mistral_7b.gin").sliding_window == 4096
    tiny = _parse(MODEL_DIR / "decoder_tiny.gin")
    assert tiny.vocab_size == 32128 and tiny.family == "llama"
