"""Decoding with the KV cache: greedy, sampling, beam search (brute force), scoring."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import decoding, t5
from flan_jax.models.hf_convert import hf_state_dict_from_params, params_from_hf_state_dict
from flan_jax.testing.models import make_tiny_t5_config

ENC = np.array(
    [[5, 9, 13, 4, 30, 1, 0, 0], [6, 22, 31, 17, 40, 11, 2, 1], [7, 1, 0, 0, 0, 0, 0, 0]], np.int32
)


@pytest.fixture(scope="module")
def model():
    # The weights the tests were written against. With others, one beam can stop at an EOS
    # that greedy passes over (the likelier sequence), and the one-beam == greedy check fails.
    config = make_tiny_t5_config(
        vocab_size=64,
        num_heads=3,
        mlp_dim=48,
        num_encoder_layers=2,
        num_decoder_layers=2,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
    )
    return t5.T5Model(config), t5.init_params(config, jax.random.key(0))


def _teacher_forced_argmax(t5_model, params, tokens):
    decoder_inputs = np.pad(tokens[:, :-1], ((0, 0), (1, 0)))
    logits = t5_model.module.apply({"params": params}, ENC, decoder_inputs)
    return np.asarray(jnp.argmax(logits, -1))


def test_greedy_tokens_are_the_teacher_forced_argmax(model):
    t5_model, params = model
    result = decoding.greedy_decode(t5_model, params, ENC, max_decode_len=7)
    tokens = np.asarray(result.tokens)
    expected = _teacher_forced_argmax(t5_model, params, tokens)
    for row in range(len(tokens)):
        eos = np.flatnonzero(tokens[row] == 1)
        stop = eos[0] + 1 if len(eos) else tokens.shape[1]
        np.testing.assert_array_equal(tokens[row, :stop], expected[row, :stop])
        assert not tokens[row, stop:].any()
    scores = decoding.score_targets(t5_model, params, ENC, tokens)
    np.testing.assert_allclose(np.asarray(result.scores), np.asarray(scores), atol=1e-4)


def test_greedy_with_scanned_layers_matches_unscanned(model):
    t5_model, params = model
    scanned_config = t5_model.config.replace(scan_layers=True)
    scanned = params_from_hf_state_dict(
        hf_state_dict_from_params(params, t5_model.config), scanned_config
    )
    expected = decoding.greedy_decode(t5_model, params, ENC, max_decode_len=7).tokens
    tokens = decoding.greedy_decode(
        t5.T5Model(scanned_config), scanned, ENC, max_decode_len=7
    ).tokens
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(expected))


def test_sampling_reduces_to_greedy(model):
    t5_model, params = model
    greedy = np.asarray(decoding.greedy_decode(t5_model, params, ENC, max_decode_len=7).tokens)
    for kwargs in (
        dict(temperature=1e-4),
        dict(temperature=1.0, top_k=1),
        dict(temperature=1.0, top_p=1e-6),
    ):
        sampled = decoding.temperature_sample(
            t5_model, params, ENC, rng=jax.random.key(5), max_decode_len=7, **kwargs
        )
        np.testing.assert_array_equal(np.asarray(sampled.tokens), greedy, err_msg=str(kwargs))


def test_sampling_is_seeded_and_varies(model):
    t5_model, params = model
    first = decoding.temperature_sample(
        t5_model, params, ENC, rng=jax.random.key(1), max_decode_len=7, temperature=2.0
    )
    again = decoding.temperature_sample(
        t5_model, params, ENC, rng=jax.random.key(1), max_decode_len=7, temperature=2.0
    )
    other = decoding.temperature_sample(
        t5_model, params, ENC, rng=jax.random.key(2), max_decode_len=7, temperature=2.0
    )
    np.testing.assert_array_equal(np.asarray(first.tokens), np.asarray(again.tokens))
    assert not np.array_equal(np.asarray(first.tokens), np.asarray(other.tokens))


def test_filter_logits_keeps_top_k_and_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.1, 0.25, 0.15]]))

    def kept(x):
        return np.asarray(x > decoding.NEG_INF / 2)[0].tolist()

    assert kept(decoding.filter_logits(logits, top_k=2)) == [True, False, True, False]
    # 0.5 + 0.25 reaches 0.7; 0.5 alone does not.
    assert kept(decoding.filter_logits(logits, top_p=0.7)) == [True, False, True, False]
    assert kept(decoding.filter_logits(logits, top_p=0.75)) == [True, False, True, False]
    assert kept(decoding.filter_logits(logits, top_p=0.76)) == [True, False, True, True]


def _brute_force_best(config, params, enc_row, length, alpha):
    """The best complete hypothesis over every token sequence of the tiny vocabulary."""
    vocab = config.vocab_size
    seqs = np.array(list(itertools.product(range(vocab), repeat=length)), np.int32)
    enc = np.repeat(enc_row[None], len(seqs), axis=0)
    logits = t5.EncoderDecoder(config).apply(
        {"params": params}, enc, np.pad(seqs[:, :-1], ((0, 0), (1, 0)))
    )
    step_logp = np.take_along_axis(
        np.asarray(jax.nn.log_softmax(logits)), seqs[:, :, None], axis=-1
    )[:, :, 0]
    best_score, best_seq = -np.inf, None
    for seq, logp in zip(seqs, step_logp):
        eos = np.flatnonzero(seq == 1)
        n = eos[0] + 1 if len(eos) else length
        score = logp[:n].sum() / ((5.0 + n) / 6.0) ** alpha
        if score > best_score + 1e-6:
            best_score, best_seq = score, np.concatenate([seq[:n], np.zeros(length - n, int)])
    return best_score, best_seq


@pytest.mark.parametrize("alpha", [0.6, 0.0])
def test_beam_search_finds_the_brute_force_optimum(alpha):
    config = make_tiny_t5_config(vocab_size=5, emb_dim=16, num_heads=2, head_dim=4, mlp_dim=16)
    params = t5.init_params(config, jax.random.key(3))
    enc = np.array([[3, 4, 2, 1], [4, 4, 3, 1]], np.int32)
    length = 3
    t5_model = t5.T5Model(config)
    exhaustive = decoding.beam_search(
        t5_model,
        params,
        enc,
        max_decode_len=length,
        num_beams=config.vocab_size ** (length - 1),
        alpha=alpha,
    )
    narrow = decoding.beam_search(
        t5_model, params, enc, max_decode_len=length, num_beams=2, alpha=alpha
    )
    for row in range(len(enc)):
        score, seq = _brute_force_best(config, params, enc[row], length, alpha)
        np.testing.assert_allclose(float(exhaustive.scores[row, 0]), score, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(exhaustive.tokens[row, 0]), seq)
        assert float(narrow.scores[row, 0]) <= score + 1e-5
    assert np.all(np.diff(np.asarray(exhaustive.scores), axis=1) <= 0)


def test_beam_scores_are_penalised_log_likelihoods(model):
    t5_model, params = model
    result = decoding.beam_search(t5_model, params, ENC, max_decode_len=6, num_beams=3)
    tokens = np.asarray(result.tokens[:, 0])
    lengths = np.array([(np.flatnonzero(t == 1)[0] + 1) if (t == 1).any() else 6 for t in tokens])
    recomputed = np.asarray(decoding.score_targets(t5_model, params, ENC, tokens))
    np.testing.assert_allclose(
        np.asarray(result.scores[:, 0]), recomputed / ((5.0 + lengths) / 6.0) ** 0.6, atol=1e-4
    )
    greedy = decoding.greedy_decode(t5_model, params, ENC, max_decode_len=6)
    one_beam = decoding.beam_search(t5_model, params, ENC, max_decode_len=6, num_beams=1, alpha=0.0)
    np.testing.assert_array_equal(np.asarray(one_beam.tokens[:, 0]), np.asarray(greedy.tokens))
