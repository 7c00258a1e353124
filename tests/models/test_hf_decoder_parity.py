"""flan_jax's decoder-only model against transformers OPT / Llama / Mistral (float32, eval mode).

Every config of `HF_PARITY_CONFIGS` is converted from a random-initialised transformers
model; logits, greedy decoding and target scoring are compared with the PyTorch reference,
and HF -> flan_jax -> HF is checked tensor for tensor through sharded safetensors.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import decoder, decoding, hf_convert, hf_convert_decoder
from flan_jax.models.layers import default_positions
from flan_jax.testing.hf_decoders import HF_PARITY_CONFIGS, hf_state_dict_numpy, make_hf_decoder

torch = pytest.importorskip("torch", reason="torch is the reference implementation")
transformers = pytest.importorskip("transformers", reason="the reference implementation")

NAMES = sorted(HF_PARITY_CONFIGS)
LENGTH = 24  # longer than the Mistral window (5) and the llama3 original context (16)


def _convert(name: str, *, seed: int = 1, **overrides):
    reference = make_hf_decoder(HF_PARITY_CONFIGS[name], seed=seed)
    config = hf_convert_decoder.config_from_hf(
        HF_PARITY_CONFIGS[name], dtype="float32", **overrides
    )
    params = hf_convert_decoder.params_from_hf_state_dict(hf_state_dict_numpy(reference), config)
    return reference, config, params


def _tokens(config, *, rows: int = 2, length: int = LENGTH, seed: int = 0) -> np.ndarray:
    """Random ids in [3, vocab): no special token, so token 0 never ends a prompt."""
    return np.random.default_rng(seed).integers(3, config.vocab_size, size=(rows, length))


def _flan_logits(config, params, tokens: np.ndarray) -> np.ndarray:
    ids = jnp.asarray(tokens, jnp.int32)
    bias = decoder.attention_bias(config, segment_ids=jnp.ones_like(ids))
    module = decoder.DecoderOnly(config)
    return np.asarray(module.apply({"params": params}, ids, default_positions(ids), bias))


def _hf_logits(reference, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return reference(input_ids=torch.from_numpy(tokens).long()).logits.numpy()


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name):
    reference, config, params = _convert(name)
    tokens = _tokens(config)
    expected = _hf_logits(reference, tokens)
    np.testing.assert_allclose(_flan_logits(config, params, tokens), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "name,ignored",
    [
        ("mistral_gqa_sliding_window", dict(sliding_window=None)),
        ("llama_gqa_llama3_untied", dict(rope_scaling_factor=None)),
        ("opt_post_norm_projected", dict(pre_norm=True)),
    ],
)
def test_the_tested_feature_changes_the_logits(name, ignored):
    # The parity above would also hold for a model that ignored these features if they
    # did not matter at the tested length; they do.
    reference, config, params = _convert(name)
    tokens = _tokens(config)
    if "pre_norm" in ignored:  # a pre-norm tree needs the final norm it lacks: identity
        params = {**params, "final_norm": {"scale": np.ones(config.emb_dim, np.float32)}}
        params["final_norm"]["bias"] = np.zeros(config.emb_dim, np.float32)
    changed = _flan_logits(config.replace(**ignored), params, tokens)
    assert np.abs(changed - _hf_logits(reference, tokens)).max() > 1e-3  # 10x the tolerance


def _prompts(config, lengths=(7, 4, 11)) -> np.ndarray:
    """Right-padded prompts of different lengths, each ending with a nonzero token."""
    inputs = np.zeros((len(lengths), max(lengths)), np.int32)
    for row, n in enumerate(lengths):
        inputs[row, :n] = _tokens(config, rows=1, length=n, seed=10 + row)[0]
    return inputs


@pytest.mark.parametrize("name", NAMES)
def test_greedy_decoding_equals_transformers_generate(name):
    reference, config, params = _convert(name)
    inputs = _prompts(config)
    steps = 12  # prompt + steps reaches past the Mistral window and the rope original context
    # eos_id -1: neither side stops early, so every step is compared.
    result = decoding.greedy_decode(
        decoder.DecoderModel(config), params, inputs, max_decode_len=steps, eos_id=-1
    )
    for row, prompt in enumerate(inputs):
        prompt = prompt[prompt != 0]
        ids = torch.tensor([[config.start_token_id, *prompt]])
        with torch.no_grad():
            generated = reference.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=steps,
                min_new_tokens=steps,
                eos_token_id=None,
                pad_token_id=0,
            )
        expected = generated[0, ids.shape[1] :].numpy()
        np.testing.assert_array_equal(np.asarray(result.tokens[row]), expected, err_msg=str(row))


@pytest.mark.parametrize("name", NAMES)
def test_scores_equal_transformers_log_likelihood(name):
    reference, config, params = _convert(name)
    inputs = _prompts(config)
    target_lengths = (5, 9, 3)
    targets = np.zeros((3, max(target_lengths)), np.int32)
    for row, n in enumerate(target_lengths):
        targets[row, :n] = _tokens(config, rows=1, length=n, seed=20 + row)[0]
    scores = decoding.score_targets(decoder.DecoderModel(config), params, inputs, targets)
    for row in range(3):
        prompt, target = inputs[row][inputs[row] != 0], targets[row][targets[row] != 0]
        ids = np.array([[config.start_token_id, *prompt, *target]])
        log_probs = torch.log_softmax(torch.from_numpy(_hf_logits(reference, ids)[0]), -1).numpy()
        # The token at sequence position t is predicted at t - 1.
        first = 1 + len(prompt)
        expected = sum(log_probs[first + j - 1, t] for j, t in enumerate(target))
        np.testing.assert_allclose(float(scores[row]), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_hf_round_trip_through_sharded_directories_is_exact(name, tmp_path):
    reference = make_hf_decoder(HF_PARITY_CONFIGS[name], seed=2)
    reference.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    params, config, _ = hf_convert.load_hf_directory(
        tmp_path / "hf", dtype="float32", scan_layers=True
    )
    hf_convert.save_hf_directory(
        tmp_path / "back", params=params, config=config, max_shard_bytes=40_000
    )
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert hf_convert_decoder.config_from_hf(exported, dtype="float32", scan_layers=True) == config
    reloaded = getattr(transformers, exported["architectures"][0]).from_pretrained(
        tmp_path / "back",
        attn_implementation="eager",  # as the reference, for equal logits
    )
    expected = hf_state_dict_numpy(reference)
    actual = hf_state_dict_numpy(reloaded)
    assert sorted(actual) == sorted(expected)
    for key, tensor in actual.items():
        np.testing.assert_array_equal(tensor, expected[key], err_msg=key)
    tokens = _tokens(config, rows=1)
    np.testing.assert_array_equal(
        _hf_logits(reloaded.eval(), tokens), _hf_logits(reference, tokens)
    )
