"""transformers PyTorch T5 holding flan_jax's parameters, for the side-by-side benchmarks.

`model_bench.py` and `eval_bench.py` time flan_jax against
`transformers.T5ForConditionalGeneration` running the same weights: the HF export
(`hf_state_dict_from_params`) of the parameters flan_jax uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flan_jax.models.config import T5Config
from flan_jax.models.hf_convert import hf_state_dict_from_params
from flan_jax.testing.models import build_hf_t5


def torch_device() -> str:
    """ "cuda" on a machine with a CUDA GPU PyTorch can use, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_t5_from_params(config: T5Config, params: Any, *, dtype: str = "float32") -> Any:
    """`T5ForConditionalGeneration` with flan_jax's ``params``, in ``dtype`` on `torch_device`.

    Returned in train mode (as transformers builds it); callers pick ``.eval()`` / dropout.
    """
    import torch

    model = build_hf_t5(config)
    state = {
        k: torch.from_numpy(np.array(v))
        for k, v in hf_state_dict_from_params(params, config).items()
    }
    loaded = model.load_state_dict(state, strict=False)
    # The embed_tokens entries alias shared.weight; any other gap is a conversion bug.
    missing = set(loaded.missing_keys) - {
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
    }
    if missing or loaded.unexpected_keys:
        raise ValueError(
            f"HF export does not fit transformers' T5: missing {sorted(missing)}, "
            f"unexpected {sorted(loaded.unexpected_keys)}."
        )
    model = model.to(getattr(torch, dtype))
    model.to(torch.device(torch_device()))  # in place, like every nn.Module.to
    return model
