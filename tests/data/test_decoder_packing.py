"""Decoder-only rows (inputs ++ targets in one stream): hand-written features, seqio's
PrefixLMFeatureConverter as a reference, and lossless packing."""

import collections

import numpy as np
import pytest

from flan_jax.data import packing
from flan_jax.testing import data as data_testing

LENGTHS = packing.FeatureLengths(inputs=8, targets=6)
PREFIX_LM = packing.DecoderOnlyFormat(start_token_id=2, prefix_lm=True)


def _example(inputs, targets):
    return {"inputs": np.array(inputs, np.int32), "targets": np.array(targets, np.int32)}


# The examples of the module docstring's worked example.
DOC_EXAMPLES = [
    _example([11, 12, 1], [21, 1]),
    _example([13, 14, 15, 1], [22, 23, 1]),
    _example([16, 1], [24, 25, 26, 1]),
]


def _assert_features(got, want):
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], np.array(value, np.int32), err_msg=name)
        assert got[name].dtype == np.int32, name


def test_worked_example_of_the_docstring_packed_prefix_lm():
    got = packing.pack_examples(DOC_EXAMPLES, LENGTHS, feature_format=PREFIX_LM)
    pad = [0] * 9
    _assert_features(
        got,
        {
            "decoder_target_tokens": [
                [13, 14, 15, 1, 22, 23, 1, 16, 1, 24, 25, 26, 1, 0],
                [11, 12, 1, 21, 1] + pad,
            ],
            "decoder_input_tokens": [
                [2, 13, 14, 15, 1, 22, 23, 2, 16, 1, 24, 25, 26, 0],
                [2, 11, 12, 1, 21] + pad,
            ],
            "decoder_segment_ids": [
                [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0],
                [1, 1, 1, 1, 1] + pad,
            ],
            "decoder_positions": [
                [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 0],
                [0, 1, 2, 3, 4] + pad,
            ],
            "decoder_loss_weights": [
                [0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0],
                [0, 0, 0, 1, 1] + pad,
            ],
            "decoder_causal_attention": [
                [1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0],
                [1, 1, 1, 1, 0] + pad,
            ],
        },
    )


def test_loss_on_inputs_weights_every_real_token():
    got = packing.pack_examples(
        DOC_EXAMPLES, LENGTHS, feature_format=PREFIX_LM, loss_on_inputs=True
    )
    np.testing.assert_array_equal(
        got["decoder_loss_weights"],
        [[1] * 13 + [0], [1] * 5 + [0] * 9],
    )
    # Nothing else depends on where the loss goes.
    targets_only = packing.pack_examples(DOC_EXAMPLES, LENGTHS, feature_format=PREFIX_LM)
    for name in set(got) - {"decoder_loss_weights"}:
        np.testing.assert_array_equal(got[name], targets_only[name], err_msg=name)


@pytest.mark.parametrize("loss_on_inputs", [False, True])
def test_unpacked_causal_rows_by_hand(loss_on_inputs):
    # Token 0 is a real token here (as in HF vocabularies): only segment ids mark padding.
    examples = [_example([0, 5, 1], [0, 1]), _example([6, 1], [7, 8, 0, 1])]
    got = packing.pad_examples(
        examples,
        packing.FeatureLengths(4, 4),
        feature_format=packing.DecoderOnlyFormat(start_token_id=9),
        loss_on_inputs=loss_on_inputs,
    )
    weights = (
        [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]]
        if loss_on_inputs
        else [[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0]]
    )
    _assert_features(
        got,
        {
            "decoder_target_tokens": [[0, 5, 1, 0, 1, 0, 0, 0], [6, 1, 7, 8, 0, 1, 0, 0]],
            "decoder_input_tokens": [[9, 0, 5, 1, 0, 0, 0, 0], [9, 6, 1, 7, 8, 0, 0, 0]],
            "decoder_segment_ids": [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]],
            "decoder_positions": [[0, 1, 2, 3, 4, 0, 0, 0], [0, 1, 2, 3, 4, 5, 0, 0]],
            "decoder_loss_weights": weights,
        },
    )
    counts = packing.count_real_tokens(got)
    assert counts == {
        "encoder_real": 0,
        "encoder_total": 0,
        "decoder_real": 11,
        "decoder_total": 16,
    }


def test_inputs_and_targets_are_cut_to_their_own_lengths_before_concatenation():
    example = _example(list(range(10, 20)), list(range(30, 40)))
    got = packing.pad_examples([example], packing.FeatureLengths(3, 2), feature_format=PREFIX_LM)
    np.testing.assert_array_equal(got["decoder_target_tokens"], [[10, 11, 12, 30, 31]])
    np.testing.assert_array_equal(got["decoder_loss_weights"], [[0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(got["decoder_causal_attention"], [[1, 1, 1, 1, 0]])


def test_an_example_without_inputs_is_all_targets():
    # Pre-training text: no inputs, so the prefix is the start token alone.
    got = packing.pad_examples(
        [{"inputs": np.zeros([0], np.int32), "targets": np.array([4, 5, 1], np.int32)}],
        packing.FeatureLengths(2, 4),
        feature_format=PREFIX_LM,
    )
    np.testing.assert_array_equal(got["decoder_target_tokens"], [[4, 5, 1, 0, 0, 0]])
    np.testing.assert_array_equal(got["decoder_input_tokens"], [[2, 4, 5, 0, 0, 0]])
    np.testing.assert_array_equal(got["decoder_loss_weights"], [[1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(got["decoder_causal_attention"], [[1, 0, 0, 0, 0, 0]])


def _random_lengths(count, seed, max_in=40, max_tgt=20):
    rng = np.random.default_rng(seed)
    return list(
        zip(
            rng.integers(0, max_in + 1, count).tolist(),
            rng.integers(1, max_tgt + 1, count).tolist(),
        )
    )


def _key(example):
    return (tuple(example["inputs"].tolist()), tuple(example["targets"].tolist()))


@pytest.mark.parametrize("loss_on_inputs", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_packing_is_lossless(seed, loss_on_inputs):
    lengths = packing.FeatureLengths(40, 20)
    examples = data_testing.make_examples_from_lengths(_random_lengths(300, seed), seed)
    features = packing.pack_examples(
        examples, lengths, feature_format=PREFIX_LM, loss_on_inputs=loss_on_inputs
    )
    assert features["decoder_target_tokens"].shape[1] == 60
    by_key = {_key(e): e for e in examples}
    recovered = []
    for segment in data_testing.unpack_decoder_only_rows(features):
        # The prefix-LM mask spans the start token and the inputs: it gives the split back.
        width = int(segment["decoder_causal_attention"].sum()) - 1
        tokens = segment["decoder_target_tokens"]
        example = by_key[(tuple(tokens[:width].tolist()), tuple(tokens[width:].tolist()))]
        recovered.append(_key(example))
        n = len(tokens)
        np.testing.assert_array_equal(segment["decoder_positions"], np.arange(n))
        np.testing.assert_array_equal(segment["decoder_input_tokens"], [2, *tokens[:-1]])
        weights = np.ones(n) if loss_on_inputs else (np.arange(n) >= width)
        np.testing.assert_array_equal(segment["decoder_loss_weights"], weights)
    assert collections.Counter(recovered) == collections.Counter(map(_key, examples))
    # Segments sit contiguously from the left of every row, padding after them.
    ids = features["decoder_segment_ids"]
    real = ids > 0
    assert (np.sort(~real, axis=1, kind="stable") == ~real).all()
    assert (np.diff(np.where(real, ids, ids.max() + 1), axis=1) >= 0).all()
    assert not features["decoder_target_tokens"][~real].any()
    assert not features["decoder_input_tokens"][~real].any()


@pytest.mark.parametrize("loss_on_inputs", [False, True])
def test_unpacked_rows_equal_seqio_prefix_lm_converter(loss_on_inputs):
    lengths = {"inputs": 40, "targets": 20}
    examples = data_testing.make_examples_from_lengths(_random_lengths(60, 2), 2)
    ours = packing.pad_examples(
        examples,
        packing.FeatureLengths.from_mapping(lengths),
        feature_format=packing.DecoderOnlyFormat(prefix_lm=True),
        loss_on_inputs=loss_on_inputs,
    )
    reference = data_testing.seqio_prefix_lm_features(
        examples, lengths, pack=False, loss_on_targets_only=not loss_on_inputs
    )
    real = ours["decoder_segment_ids"] > 0
    for name in ("decoder_target_tokens", "decoder_loss_weights", "decoder_causal_attention"):
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)
    # seqio shifts over the whole unpacked row (its first padding slot holds EOS); ours
    # shifts inside the segment, so only the real positions compare.
    np.testing.assert_array_equal(
        np.where(real, ours["decoder_input_tokens"], 0),
        np.where(real, reference["decoder_input_tokens"], 0),
    )


def test_packed_segments_equal_seqio_packed_prefix_lm_segments_and_pack_denser():
    lengths = {"inputs": 40, "targets": 20}
    examples = data_testing.make_examples_from_lengths(_random_lengths(200, 3), 3)
    ours = packing.pack_examples(
        examples,
        packing.FeatureLengths.from_mapping(lengths),
        feature_format=packing.DecoderOnlyFormat(prefix_lm=True),
    )
    theirs = data_testing.seqio_prefix_lm_features(examples, lengths, pack=True)

    def by_tokens(features):
        segments = data_testing.unpack_decoder_only_rows(features)
        return {tuple(s["decoder_target_tokens"].tolist()): s for s in segments}

    ours_by, theirs_by = by_tokens(ours), by_tokens(theirs)
    assert ours_by.keys() == theirs_by.keys() and len(ours_by) == len(examples)
    for key, segment in ours_by.items():
        # Everything but the segment's number in its row (the rows differ).
        for name in set(theirs_by[key]) - {"decoder_segment_ids"}:
            np.testing.assert_array_equal(segment[name], theirs_by[key][name], err_msg=name)
    assert len(ours["decoder_target_tokens"]) <= len(theirs["decoder_target_tokens"])


def test_one_stream_best_fit_fills_the_row_by_hand():
    # Capacity 10; sizes 6, 5, 4, 3, 2. Largest first: 6 opens row 0, 5 opens row 1, 4 goes
    # to row 0 (room 0), 3 to row 1 (room 2), 2 to row 1 (room 0): two full rows.
    assert packing.assign_rows([[6], [5], [4], [3], [2]], (10,)) == [[0, 2], [1, 3, 4]]


def test_a_bad_layout_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="loss_on_inputs=True needs a decoder-only model"):
        packing.pack_examples(DOC_EXAMPLES, LENGTHS, loss_on_inputs=True)
    with pytest.raises(ValueError, match="feature_format must be"):
        packing.pad_examples(DOC_EXAMPLES, LENGTHS, feature_format="decoder_only")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_token_id must be a token id >= 0, got -1"):
        packing.DecoderOnlyFormat(start_token_id=-1)
