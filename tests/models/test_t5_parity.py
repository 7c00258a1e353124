"""flan_jax T5 against the transformers PyTorch reference (float32, eval mode)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import t5
from flan_jax.models.hf_convert import hf_state_dict_from_params, params_from_hf_state_dict
from flan_jax.models.layers import relative_position_bucket
from flan_jax.testing.models import (PARITY_CONFIGS, hf_state_dict_numpy, make_hf_reference,
                                     tiny_config)

torch = pytest.importorskip("torch", reason="torch is the reference implementation")
pytest.importorskip("transformers", reason="transformers is the reference implementation")


def _batch(config, *, seed: int = 0, enc_len: int = 23, dec_len: int = 9):
    """Encoder inputs with right padding of varying length, and decoder inputs from 0."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(3, config.vocab_size, size=(3, enc_len))
    for row, pad in enumerate((0, 4, 11)):
        if pad:
            enc[row, -pad:] = 0
    dec = rng.integers(1, config.vocab_size, size=(3, dec_len))
    dec[:, 0] = 0
    return enc.astype(np.int32), dec.astype(np.int32)


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_logits_match_transformers(name):
    config = tiny_config(**PARITY_CONFIGS[name])
    reference = make_hf_reference(config, seed=1)
    params = params_from_hf_state_dict(hf_state_dict_numpy(reference), config)
    enc, dec = _batch(config)
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(enc).long(),
                             attention_mask=torch.from_numpy(enc != 0).long(),
                             decoder_input_ids=torch.from_numpy(dec).long()).logits.numpy()
    logits = t5.EncoderDecoder(config).apply({"params": params}, jnp.asarray(enc),
                                             jnp.asarray(dec))
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bidirectional,num_buckets,max_distance",
                         [(True, 32, 128), (False, 32, 128), (True, 8, 12), (False, 16, 20)])
def test_relative_position_buckets_match_transformers(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = np.arange(-400, 401)
    expected = T5Attention._relative_position_bucket(
        torch.from_numpy(relative), bidirectional=bidirectional, num_buckets=num_buckets,
        max_distance=max_distance).numpy()
    actual = relative_position_bucket(jnp.asarray(relative), bidirectional=bidirectional,
                                      num_buckets=num_buckets, max_distance=max_distance)
    np.testing.assert_array_equal(np.asarray(actual), expected)


@pytest.mark.parametrize("name", ["gated_untied_odd_heads", "relu_tied"])
def test_hf_round_trip_is_exact(name):
    config = tiny_config(**PARITY_CONFIGS[name])
    original = hf_state_dict_numpy(make_hf_reference(config, seed=2))
    exported = hf_state_dict_from_params(params_from_hf_state_dict(original, config), config)
    # The per-stack embedding entries are aliases of shared.weight; T5 1.0 has no lm_head.
    aliases = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if config.tie_word_embeddings:
        aliases.add("lm_head.weight")
    assert set(exported) == set(original) - aliases
    for key, tensor in exported.items():
        np.testing.assert_array_equal(tensor, original[key], err_msg=key)


def test_round_trip_through_scanned_layout_is_exact():
    config = tiny_config(**PARITY_CONFIGS["gated_untied_odd_heads"])
    original = hf_state_dict_numpy(make_hf_reference(config, seed=3))
    scanned = config.replace(scan_layers=True)
    params = params_from_hf_state_dict(original, scanned)
    assert params["encoder"]["layers"]["mlp"]["wo"]["kernel"].shape == (2, 40, 24)
    exported = hf_state_dict_from_params(params, scanned)
    for key, tensor in exported.items():
        np.testing.assert_array_equal(tensor, original[key], err_msg=key)


def test_mismatched_weights_name_the_tensor():
    config = tiny_config(**PARITY_CONFIGS["relu_tied"])
    state = hf_state_dict_numpy(make_hf_reference(config))
    with pytest.raises(ValueError, match="missing encoder.block.3"):
        params_from_hf_state_dict(state, config.replace(num_encoder_layers=4))
    with pytest.raises(ValueError, match="shared.weight has shape"):
        params_from_hf_state_dict(state, config.replace(vocab_size=81))
