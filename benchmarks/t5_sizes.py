"""T5 1.1 layer dimensions the benchmarks train, named as ``gin_configs/models/*.gin`` name them.

The same figures as ``t5_1_1_{tiny,small,base,large,xl}.gin`` (REFERENCE.md), kept as
plain dicts so the benchmarks run where gin is not installed (``accelerator_check.sh``).
"""

from __future__ import annotations

from typing import Any

T5_1_1_DIMS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        emb_dim=128,
        num_heads=4,
        head_dim=32,
        mlp_dim=256,
        num_encoder_layers=2,
        num_decoder_layers=2,
    ),
    "small": dict(
        emb_dim=512,
        num_heads=6,
        head_dim=64,
        mlp_dim=1024,
        num_encoder_layers=8,
        num_decoder_layers=8,
    ),
    "base": dict(
        emb_dim=768,
        num_heads=12,
        head_dim=64,
        mlp_dim=2048,
        num_encoder_layers=12,
        num_decoder_layers=12,
    ),
    "large": dict(
        emb_dim=1024,
        num_heads=16,
        head_dim=64,
        mlp_dim=2816,
        num_encoder_layers=24,
        num_decoder_layers=24,
    ),
    "xl": dict(
        emb_dim=2048,
        num_heads=32,
        head_dim=64,
        mlp_dim=5120,
        num_encoder_layers=24,
        num_decoder_layers=24,
    ),
}
