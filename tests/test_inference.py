"""The one inference path: the EOS rule, and the Predictor against `decoding` called directly."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import inference
from flan_jax.data.vocabularies import get_vocabulary
from flan_jax.inference import DecodeConfig, Predictor, completion_tokens
from flan_jax.models import decoding, t5
from flan_jax.testing.models import make_tiny_t5_config, write_test_sentencepiece

# Three inputs of different lengths; the second spans two length buckets of 32.
ROWS = [[5, 9, 13, 4, 30, 1], list(range(2, 41)) + [1], [7, 1]]


@pytest.fixture(scope="module")
def model():
    config = make_tiny_t5_config(vocab_size=96)  # the test vocabulary's size
    return t5.T5Model(config), t5.init_params(config, jax.random.key(0))


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    return get_vocabulary(str(write_test_sentencepiece(tmp_path_factory.mktemp("spm"))))


def _padded(rows, width=48):
    out = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _assert_same_completions(got, expected_rows):
    assert len(got) == len(expected_rows)
    for tokens, row in zip(got, expected_rows):
        np.testing.assert_array_equal(tokens, completion_tokens(row))


# ------------------------------------------------------------------------------------------
# The EOS rule, on rows the old decode loops read differently
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "row, completion",
    [
        ([7, 8, 1, 0, 0, 0], [7, 8]),  # EOS then padding
        ([7, 0, 9, 1, 0, 0], [7, 0, 9]),  # a 0 before EOS is a token (one old loop cut here)
        ([7, 8, 9, 4, 0, 0], [7, 8, 9, 4]),  # no EOS: trailing 0s dropped
        ([7, 8, 9, 4, 5, 6], [7, 8, 9, 4, 5, 6]),
        ([1, 7, 1, 0, 0, 0], []),  # EOS first: empty; nothing after EOS counts
        ([0, 0, 0], []),
    ],
)
def test_completion_tokens_cuts_at_the_first_eos(row, completion):
    np.testing.assert_array_equal(completion_tokens(np.array(row)), completion)


@dataclasses.dataclass(frozen=True)
class ScriptedModel:
    """Emits ``scripts[inputs[0] - 2]`` whatever it is fed (decode hooks only)."""

    scripts: tuple[tuple[int, ...], ...]
    vocab_size: int = 16

    def init_decode_state(self, params, inputs, *, max_decode_len):
        return {"script": inputs[:, 0] - 2, "step": jnp.zeros(inputs.shape[:1], jnp.int32)}

    def decode_step(self, params, state, tokens):
        token = jnp.asarray(self.scripts)[state["script"], state["step"]]
        logits = 10.0 * jax.nn.one_hot(token, self.vocab_size)
        return logits, {**state, "step": state["step"] + 1}

    def reorder_decode_state(self, state, indices):
        return jax.tree.map(lambda leaf: leaf[indices], state)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_predictor_applies_the_eos_rule_to_generated_rows(method):
    scripts = ((7, 8, 1, 0, 0, 0), (7, 0, 9, 1, 0, 0), (7, 8, 9, 4, 0, 0))
    predictor = Predictor(
        ScriptedModel(scripts),
        None,
        None,
        DecodeConfig(method=method, max_decode_len=6, num_beams=2),
    )
    got = predictor.predict_tokens([[2, 1], [3, 1], [4, 1]])
    assert [t.tolist() for t in got] == [[7, 8], [7, 0, 9], [7, 8, 9, 4]]


# ------------------------------------------------------------------------------------------
# The Predictor equals decoding.* on the same rows, whatever the batching and padding
# ------------------------------------------------------------------------------------------
def test_greedy_and_beam_equal_direct_decoding(model):
    t5_model, params = model
    greedy = decoding.greedy_decode(t5_model, params, _padded(ROWS), max_decode_len=7)
    beam = decoding.beam_search(t5_model, params, _padded(ROWS), max_decode_len=7, num_beams=3)
    # batch_size 2: a full batch, then one real row and one padding row.
    for config, expected in (
        (DecodeConfig(max_decode_len=7, batch_size=2), greedy.tokens),
        (
            DecodeConfig(method="beam", max_decode_len=7, num_beams=3, batch_size=2),
            beam.tokens[:, 0],
        ),
    ):
        got = Predictor(t5_model, params, None, config).predict_tokens(ROWS)
        _assert_same_completions(got, np.asarray(expected))


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_a_row_decodes_alike_alone_and_in_a_padded_batch(model, method):
    t5_model, params = model
    config = DecodeConfig(method=method, max_decode_len=7, num_beams=3, batch_size=1)
    alone = Predictor(t5_model, params, None, config).predict_tokens(ROWS)
    batched = Predictor(
        t5_model, params, None, dataclasses.replace(config, batch_size=8)
    ).predict_tokens(ROWS)
    for a, b in zip(alone, batched):
        np.testing.assert_array_equal(a, b)


def test_sampling_equals_direct_sampling_and_groups_samples(model):
    t5_model, params = model
    config = DecodeConfig(
        method="sample",
        num_samples=2,
        temperature=2.0,
        top_k=20,
        max_decode_len=7,
        batch_size=4,
        seed=3,
    )
    got = Predictor(t5_model, params, None, config).predict_tokens(ROWS)
    # What the predictor calls: one batch of 4 rows (the last real row repeated), each
    # input twice in a row, 64 input columns, the key of the batch starting at input 0.
    inputs = inference.pad_token_rows(ROWS, length_multiple=32, num_rows=4)
    direct = decoding.temperature_sample(
        t5_model,
        params,
        np.repeat(inputs, 2, axis=0),
        rng=jax.random.fold_in(jax.random.key(3), 0),
        max_decode_len=7,
        temperature=2.0,
        top_k=20,
    )
    expected = np.asarray(direct.tokens).reshape(4, 2, 7)
    assert len(got) == len(ROWS) and all(len(samples) == 2 for samples in got)
    for samples, rows in zip(got, expected):
        _assert_same_completions(samples, rows)
    assert any(not np.array_equal(a, b) for a, b in got), "samples should differ"


def test_near_zero_temperature_samples_are_greedy(model):
    t5_model, params = model
    greedy = Predictor(t5_model, params, None, DecodeConfig(max_decode_len=7)).predict_tokens(ROWS)
    config = DecodeConfig(method="sample", num_samples=3, temperature=1e-4, max_decode_len=7)
    for samples, expected in zip(
        Predictor(t5_model, params, None, config).predict_tokens(ROWS), greedy
    ):
        for tokens in samples:
            np.testing.assert_array_equal(tokens, expected)


def test_predict_and_score_texts(model, vocabulary):
    t5_model, params = model
    texts = ["the dog answers seven questions", "translate the river", "first"]
    targets = ["yes", "the cat", "no because of it"]
    predictor = Predictor(
        t5_model, params, vocabulary, DecodeConfig(max_decode_len=7, batch_size=2, max_input_len=5)
    )
    rows = predictor.tokenize(texts)
    assert rows == [list(vocabulary.encode(text))[:4] + [1] for text in texts]
    assert len(vocabulary.encode(texts[0])) > 4  # truncated, EOS kept
    expected = decoding.greedy_decode(t5_model, params, _padded(rows), max_decode_len=7)
    assert predictor.predict(texts) == [
        vocabulary.decode(completion_tokens(r).tolist()) for r in np.asarray(expected.tokens)
    ]

    scores = predictor.score(texts, targets)
    target_rows = predictor.tokenize(targets, max_len=7)
    assert scores.num_tokens.tolist() == [len(r) for r in target_rows]
    for i in range(len(texts)):  # one pair at a time, unbucketed
        direct = decoding.score_targets(
            t5_model, params, np.array([rows[i]]), np.array([target_rows[i]])
        )
        np.testing.assert_allclose(
            scores.log_likelihoods[i], np.asarray(direct)[0], rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"method": "nucleus"}, "DecodeConfig.method must be one of"),
        ({"num_samples": 2}, "num_samples > 1 needs method 'sample'"),
        ({"method": "sample", "temperature": 0.0}, "DecodeConfig.temperature must be > 0"),
        ({"top_p": 0.0}, "DecodeConfig.top_p must be in (0, 1]"),
        ({"batch_size": 0}, "DecodeConfig.batch_size must be >= 1"),
    ],
)
def test_decode_config_names_the_bad_field(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DecodeConfig(**fields)
