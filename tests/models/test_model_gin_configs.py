"""Every shipped model gin file parses and gives the published T5 1.1 sizes."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import gin
import jax
import pytest

from flan_jax.models import t5
from flan_jax.models.config import T5Config

MODEL_DIR = Path(resources.files("flan_jax.gin_configs")) / "models"
# (emb_dim, num_heads, layers per stack, mlp_dim, published parameter count)
PUBLISHED = {
    "small": (512, 6, 8, 1024, 76_961_152),
    "base": (768, 12, 12, 2048, 247_577_856),
    "large": (1024, 16, 24, 2816, 783_150_080),
    "xl": (2048, 32, 24, 5120, 2_849_757_184),
    "xxl": (4096, 64, 24, 10240, 11_135_332_352),
}


def _parse(path: Path) -> T5Config:
    gin.clear_config()
    try:
        gin.parse_config_file(str(path))
        return gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    finally:
        gin.clear_config()


@pytest.mark.parametrize("path", sorted(MODEL_DIR.glob("*.gin")), ids=lambda p: p.stem)
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
