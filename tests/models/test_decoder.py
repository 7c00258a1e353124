"""The decoder-only model against independent computations: packing, masks, decoding, scoring.

Every test builds tiny float32 models; the references are full forward passes over one
example at a time (no cache, no packing) computed in the test.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.errors import ConfigError
from flan_jax.models import decoder, decoding
from flan_jax.models.config import DecoderConfig
from flan_jax.testing.models import DECODER_TEST_CONFIGS as CONFIGS
from flan_jax.testing.models import make_tiny_decoder_config

make_config = make_tiny_decoder_config


def make_model(name: str, seed: int = 0, **overrides):
    model = decoder.DecoderModel(make_config(name, **overrides))
    params = model.init_params(jax.random.key(seed))
    # Non-trivial norm parameters and biases, so a misplaced one cannot pass unnoticed.
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    perturbed = [
        leaf + 0.3 * jax.random.normal(key, leaf.shape)
        if any(getattr(k, "key", None) in ("scale", "bias") for k in path)
        else leaf
        for (path, leaf), key in zip(leaves, keys)
    ]
    return model, jax.tree_util.tree_unflatten(tree, perturbed)


REFERENCE_LENGTH = 16


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, tokens, causal_attention):
    bias = decoder.attention_bias(
        model.config, segment_ids=jnp.ones_like(tokens), causal_attention=causal_attention
    )
    return model.module.apply({"params": params}, tokens, decoder.default_positions(tokens), bias)


def full_logits(model, params, tokens, causal_attention=None):
    """Logits [len(tokens), vocab] of one row: a plain forward pass, no cache, no segments.

    The row is right-padded to REFERENCE_LENGTH (one compilation per model); causal
    attention keeps the padding out of the positions read.
    """
    padded = np.zeros((1, REFERENCE_LENGTH), np.int32)
    padded[0, : len(tokens)] = tokens
    prefix = None
    if causal_attention is not None:
        prefix = np.zeros((1, REFERENCE_LENGTH), np.int32)
        prefix[0, : len(causal_attention)] = causal_attention
    logits = _forward(model, params, jnp.asarray(padded), prefix)
    return np.asarray(logits[0, : len(tokens)])


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_kv_heads=3), "num_kv_heads"),
        (dict(norm="batchnorm"), "norm"),
        (dict(start_token_id=50), "start_token_id"),
        (dict(head_dim=5), "head_dim"),
        (dict(sliding_window=0), "sliding_window"),
    ],
)
def test_bad_config_fields_are_named(overrides, field):
    with pytest.raises(ConfigError, match=f"DecoderConfig.{field}"):
        make_config("llama_gqa_scaled_rope", **overrides)


def test_config_round_trips_through_a_dict():
    config = make_config("opt_post_norm_projected")
    assert DecoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown DecoderConfig field"):
        DecoderConfig.from_dict({**config.to_dict(), "hidden_size": 3})


def test_parameter_tree_and_logical_axes():
    model, _ = make_model("llama_gqa_scaled_rope")
    shapes = jax.tree.map(lambda x: x.shape, model.abstract_params())
    axes = model.param_logical_axes()
    layer = shapes["layers_0"]["attention"]
    assert layer["query"]["kernel"] == (16, 4, 6) and layer["key"]["kernel"] == (16, 2, 6)
    assert tuple(axes["layers_0"]["attention"]["key"]["kernel"]) == ("embed", "kv_heads", "kv")
    assert "logits_dense" in shapes and "position_embedder" not in shapes
    opt, _ = make_model("opt_post_norm_projected")
    shapes = jax.tree.map(lambda x: x.shape, opt.abstract_params())
    assert shapes["position_embedder"]["embedding"] == (66, 16)  # 64 positions + offset 2
    assert shapes["project_in"]["kernel"] == (12, 16)
    assert shapes["token_embedder"]["embedding"] == (50, 12)
    assert shapes["layers_0"]["attention"]["query"]["bias"] == (4, 6)
    assert "final_norm" not in shapes and "logits_dense" not in shapes


# ------------------------------------------------------------------------------------------
# Packing and masks
# ------------------------------------------------------------------------------------------
EXAMPLES = ([5, 0, 7, 9], [11, 12, 0], [20, 21, 22, 23, 24])  # token 0 is a real token


def _packed_batch(examples, prefix_lengths=None):
    tokens = np.concatenate(examples)[None]
    segments = np.concatenate([np.full(len(e), i + 1) for i, e in enumerate(examples)])[None]
    positions = np.concatenate([np.arange(len(e)) for e in examples])[None]
    batch = {
        "decoder_input_tokens": tokens,
        "decoder_segment_ids": segments,
        "decoder_positions": positions,
    }
    if prefix_lengths is not None:
        batch["decoder_causal_attention"] = np.concatenate(
            [np.arange(len(e)) < n for e, n in zip(examples, prefix_lengths)]
        )[None].astype(np.int32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _unpacked_batch(examples, length, prefix_lengths=None):
    rows = len(examples)
    batch = {
        "decoder_input_tokens": np.zeros((rows, length), np.int32),
        "decoder_segment_ids": np.zeros((rows, length), np.int32),
        "decoder_positions": np.zeros((rows, length), np.int32),
        "decoder_causal_attention": np.zeros((rows, length), np.int32),
    }
    for i, example in enumerate(examples):
        n = len(example)
        batch["decoder_input_tokens"][i, :n] = example
        batch["decoder_segment_ids"][i, :n] = 1
        batch["decoder_positions"][i, :n] = np.arange(n)
        if prefix_lengths is not None:
            batch["decoder_causal_attention"][i, : prefix_lengths[i]] = 1
    if prefix_lengths is None:
        del batch["decoder_causal_attention"]
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("prefix_lm", [False, True])
def test_packed_equals_unpacked(name, prefix_lm):
    model, params = make_model(name, prefix_lm=prefix_lm)
    prefix = (2, 1, 3) if prefix_lm else None
    packed = model.hidden_states(params, _packed_batch(EXAMPLES, prefix))[0]
    length = sum(map(len, EXAMPLES))
    unpacked = model.hidden_states(params, _unpacked_batch(EXAMPLES, length, prefix))
    start = 0
    for i, example in enumerate(EXAMPLES):
        n = len(example)
        np.testing.assert_allclose(packed[start : start + n], unpacked[i, :n], atol=1e-5)
        start += n


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tokens_of_one_example_never_reach_another(name):
    model, params = make_model(name)
    changed = (EXAMPLES[0], [11, 40, 0], EXAMPLES[2])  # the middle example's token 2
    before = model.hidden_states(params, _packed_batch(EXAMPLES))[0]
    after = model.hidden_states(params, _packed_batch(changed))[0]
    np.testing.assert_array_equal(before[:4], after[:4])
    np.testing.assert_array_equal(before[7:], after[7:])
    np.testing.assert_array_equal(before[4], after[4])  # before the change: causal
    assert not np.allclose(before[5:7], after[5:7])


@pytest.mark.parametrize("prefix_lm", [False, True])
def test_prefix_lm_sees_later_inputs_and_causal_does_not(prefix_lm):
    model, params = make_model("llama_gqa_scaled_rope", prefix_lm=prefix_lm)
    row, changed = [5, 6, 7, 8, 9, 10], [5, 6, 30, 8, 9, 10]  # an input token changes
    prefix = (4,) if prefix_lm else None  # start + 3 input tokens
    before = model.hidden_states(params, _packed_batch([row], prefix))[0]
    after = model.hidden_states(params, _packed_batch([changed], prefix))[0]
    earlier_changed = not np.allclose(before[:2], after[:2])
    assert earlier_changed == prefix_lm
    assert not np.allclose(before[2:], after[2:])


# ------------------------------------------------------------------------------------------
# Decoding and scoring
# ------------------------------------------------------------------------------------------
PROMPTS = ([7, 8, 9, 10, 1], [12, 1], [14, 15, 16, 1])  # different lengths, ending with EOS
NO_EOS = -1  # generation runs to max_decode_len, as the reference loops do


def _padded(rows, length=6):
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return jnp.asarray(out)


def _reference_greedy(model, params, prompt, steps):
    """Argmax loop over full forward passes of `[start] ++ prompt ++ generated`."""
    row, out = [model.config.start_token_id, *prompt], []
    n = len(row)
    for _ in range(steps):
        causal = [1] * n + [0] * (len(row) - n) if model.config.prefix_lm else None
        token = int(np.argmax(full_logits(model, params, row, causal)[-1]))
        out.append(token)
        row.append(token)
    return out


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("llama_gqa_scaled_rope", {}),
        ("llama_gqa_scaled_rope", dict(scan_layers=True, prefix_lm=True)),
        ("mistral_window", {}),
        ("opt_post_norm_projected", {}),
    ],
)
def test_cached_greedy_decoding_equals_full_forward_argmax(name, overrides):
    model, params = make_model(name, **overrides)
    steps = 6
    result = decoding.greedy_decode(
        model, params, _padded(PROMPTS), max_decode_len=steps, eos_id=NO_EOS
    )
    for i, prompt in enumerate(PROMPTS):
        assert result.tokens[i].tolist() == _reference_greedy(model, params, prompt, steps)


def _reference_score(model, params, inputs, targets):
    row = [model.config.start_token_id, *inputs, *targets]
    causal = [1] * (len(inputs) + 1) + [0] * len(targets) if model.config.prefix_lm else None
    logits = full_logits(model, params, row[:-1], causal and causal[:-1]).astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return sum(log_probs[len(inputs) + j, t] for j, t in enumerate(targets))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("prefix_lm", [False, True])
def test_score_targets_equals_the_log_softmax_sum_of_a_full_forward(name, prefix_lm):
    model, params = make_model(name, prefix_lm=prefix_lm)
    targets = ([21, 22, 1], [0, 1], [30, 1])  # token 0 is scored like any other
    got = decoding.score_targets(model, params, _padded(PROMPTS), _padded(targets, 4))
    want = [_reference_score(model, params, p, t) for p, t in zip(PROMPTS, targets)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_beam_search_and_sampling_agree_with_scoring_and_greedy():
    model, params = make_model("llama_gqa_scaled_rope")
    inputs = _padded(PROMPTS)
    greedy = decoding.greedy_decode(model, params, inputs, max_decode_len=5, eos_id=NO_EOS)
    sampled = decoding.temperature_sample(
        model, params, inputs, rng=jax.random.key(1), max_decode_len=5, top_k=1, eos_id=NO_EOS
    )
    np.testing.assert_array_equal(sampled.tokens, greedy.tokens)  # top-1 sampling is greedy
    beams = decoding.beam_search(
        model, params, inputs, max_decode_len=5, num_beams=3, alpha=0.0, eos_id=NO_EOS
    )
    best = beams.tokens[:, 0]
    # With alpha 0 a beam's score is its log-likelihood; score it independently.
    scored = [
        _reference_score(model, params, p, [int(t) for t in best[i]]) for i, p in enumerate(PROMPTS)
    ]
    np.testing.assert_allclose(beams.scores[:, 0], scored, rtol=1e-4, atol=1e-4)
    assert np.all(beams.scores[:, 0] >= greedy.scores - 1e-4)  # at least as likely as greedy


@pytest.mark.parametrize("remat_policy", ["none", "dots"])
def test_scanned_layers_equal_unscanned(remat_policy):
    model, params = make_model("opt_post_norm_projected")
    scanned = decoder.DecoderModel(
        model.config.replace(scan_layers=True, remat_policy=remat_policy)
    )
    stacked = {k: v for k, v in params.items() if not k.startswith("layers_")}
    stacked["layers"] = jax.tree.map(
        lambda *leaves: jnp.stack(leaves), *(params[f"layers_{i}"] for i in range(2))
    )
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(
        lambda x: x.shape, scanned.abstract_params()
    )
    batch = _packed_batch(EXAMPLES)
    np.testing.assert_allclose(
        scanned.hidden_states(stacked, batch), model.hidden_states(params, batch), atol=1e-5
    )

    def loss(model, params):
        return jnp.sum(model.hidden_states(params, batch) ** 2)

    grads = jax.grad(loss, argnums=1)(scanned, stacked)
    reference = jax.grad(loss, argnums=1)(model, params)
    np.testing.assert_allclose(
        grads["layers"]["mlp"]["wo"]["kernel"][1],
        reference["layers_1"]["mlp"]["wo"]["kernel"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_output_kernel_gives_the_logits():
    for name in ("llama_gqa_scaled_rope", "opt_post_norm_projected"):
        model, params = make_model(name)
        batch = _packed_batch(EXAMPLES)
        hidden = model.hidden_states(params, batch)
        logits = full_logits(model, params, np.concatenate(EXAMPLES[:1]).tolist())
        np.testing.assert_allclose(
            (hidden @ model.output_kernel(params))[0, :4], logits, rtol=1e-5, atol=1e-5
        )
