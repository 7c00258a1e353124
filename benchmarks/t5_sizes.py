"""T5 1.1 layer dimensions the benchmarks train, named as ``gin_configs/models/*.gin`` name them.

The same figures as ``t5_1_1_tiny.gin`` and ``t5_1_1_small.gin`` (REFERENCE.md), kept as
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
}
