"""The best-fit packer against seqio: exact round trip, same features, at least as dense."""

import collections

import numpy as np
import pytest

from flan_jax.data import packing
from flan_jax.testing import data as data_testing
from flan_jax.testing.shared_data import shared_data_dir

LENGTHS = packing.FeatureLengths(inputs=8, targets=6)


def _example(inputs, targets):
    return {"inputs": np.array(inputs, np.int32), "targets": np.array(targets, np.int32)}


def test_worked_example_of_the_docstring():
    examples = [
        _example([11, 12, 1], [21, 1]),
        _example([13, 14, 15, 1], [22, 23, 1]),
        _example([16, 1], [24, 25, 26, 1]),
    ]
    got = packing.pack_examples(examples, LENGTHS)
    want = {
        "encoder_input_tokens": [[16, 1, 0, 0, 0, 0, 0, 0], [13, 14, 15, 1, 11, 12, 1, 0]],
        "encoder_segment_ids": [[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 2, 2, 2, 0]],
        "encoder_positions": [[0, 1, 0, 0, 0, 0, 0, 0], [0, 1, 2, 3, 0, 1, 2, 0]],
        "decoder_target_tokens": [[24, 25, 26, 1, 0, 0], [22, 23, 1, 21, 1, 0]],
        "decoder_input_tokens": [[0, 24, 25, 26, 0, 0], [0, 22, 23, 0, 21, 0]],
        "decoder_segment_ids": [[1, 1, 1, 1, 0, 0], [1, 1, 1, 2, 2, 0]],
        "decoder_positions": [[0, 1, 2, 3, 0, 0], [0, 1, 2, 0, 1, 0]],
        "decoder_loss_weights": [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]],
    }
    assert set(got) == set(packing.PACKED_FEATURES)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], np.array(value, np.int32), err_msg=name)
        assert got[name].dtype == np.int32


def _random_lengths(count, seed, max_in=40, max_tgt=20):
    rng = np.random.default_rng(seed)
    return list(
        zip(
            rng.integers(1, max_in + 1, count).tolist(),
            rng.integers(1, max_tgt + 1, count).tolist(),
        )
    )


def _key(example):
    return (tuple(example["inputs"].tolist()), tuple(example["targets"].tolist()))


@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_recovers_every_example_exactly_once(seed):
    lengths = packing.FeatureLengths(64, 32)
    examples = data_testing.make_examples_from_lengths(_random_lengths(300, seed), seed)
    features = packing.pack_examples(examples, lengths)
    segments = data_testing.unpack_rows(features)
    assert collections.Counter(map(_key, segments)) == collections.Counter(map(_key, examples))
    # Every row respects both capacities and puts its segments contiguously from the left.
    for stream, ids in [
        ("encoder", features["encoder_segment_ids"]),
        ("decoder", features["decoder_segment_ids"]),
    ]:
        real = ids > 0
        assert (np.sort(~real, axis=1, kind="stable") == ~real).all(), stream
        assert (np.diff(np.where(real, ids, ids.max() + 1), axis=1) >= 0).all(), stream


def test_unpacked_segments_equal_seqio_unpacked_features():
    lengths = {"inputs": 64, "targets": 32}
    examples = data_testing.make_examples_from_lengths(_random_lengths(120, 3), 3)
    reference = data_testing.seqio_unpacked_features(examples, lengths)
    by_key = {_key(e): i for i, e in enumerate(examples)}
    segments = data_testing.unpack_rows(
        packing.pack_examples(examples, packing.FeatureLengths.from_mapping(lengths))
    )
    assert len(segments) == len(examples)
    for segment in segments:
        i = by_key[_key(segment)]
        n = len(segment["targets"])
        np.testing.assert_array_equal(
            segment["decoder_input_tokens"], reference["decoder_input_tokens"][i, :n]
        )
        np.testing.assert_array_equal(
            segment["decoder_loss_weights"], reference["decoder_loss_weights"][i, :n]
        )
        np.testing.assert_array_equal(segment["decoder_positions"], np.arange(n))
        np.testing.assert_array_equal(
            segment["encoder_positions"], np.arange(len(segment["inputs"]))
        )


def test_pad_examples_equals_seqio_unpacked_converter():
    lengths = {"inputs": 48, "targets": 24}
    examples = data_testing.make_examples_from_lengths(_random_lengths(50, 4, 48, 24), 4)
    ours = packing.pad_examples(examples, packing.FeatureLengths.from_mapping(lengths))
    reference = data_testing.seqio_unpacked_features(examples, lengths)
    assert set(ours) == set(reference)
    for name in ours:
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)


def _density(features, lengths):
    counts = packing.count_real_tokens(
        {
            "encoder_input_tokens": features["encoder_input_tokens"],
            "decoder_target_tokens": features["decoder_target_tokens"],
        }
    )
    return (counts["encoder_real"] + counts["decoder_real"]) / (
        counts["encoder_total"] + counts["decoder_total"]
    )


def _compare_with_seqio(pairs, lengths):
    examples = data_testing.make_examples_from_lengths(pairs)
    ours = packing.pack_examples(examples, packing.FeatureLengths.from_mapping(lengths))
    theirs = data_testing.seqio_trim_and_pack(examples, lengths)
    # Same real tokens on both sides (both trim identically), so fewer rows = denser.
    assert int(np.count_nonzero(ours["decoder_target_tokens"])) == int(
        np.count_nonzero(theirs["targets"])
    )
    assert len(ours["decoder_target_tokens"]) <= len(theirs["targets"])
    return (
        _density(ours, lengths),
        _density(
            {"encoder_input_tokens": theirs["inputs"], "decoder_target_tokens": theirs["targets"]},
            lengths,
        ),
    )


def test_denser_than_seqio_trim_and_pack_on_random_lengths():
    ours, theirs = _compare_with_seqio(_random_lengths(400, 5), {"inputs": 64, "targets": 32})
    assert ours >= theirs


def test_denser_than_seqio_trim_and_pack_on_real_instruction_lengths():
    pairs = data_testing.load_instruction_lengths()
    if not pairs:
        pytest.skip(f"real data absent: no flan_cot_data or gsm8k under {shared_data_dir()}")
    rng = np.random.default_rng(0)
    sample = [pairs[int(i)] for i in rng.choice(len(pairs), size=1024, replace=False)]
    # Equal capacities: the targets (rationales) are the scarcer stream in this data.
    lengths = {"inputs": 512, "targets": 512}
    ours, theirs = _compare_with_seqio(sample, lengths)
    assert ours >= theirs
    packed = packing.pack_examples(
        data_testing.make_examples_from_lengths(sample),
        packing.FeatureLengths.from_mapping(lengths),
    )
    targets = packed["decoder_target_tokens"]
    assert np.count_nonzero(targets) / targets.size >= 0.95


def test_overlong_examples_are_trimmed_to_a_prefix():
    example = _example(list(range(3, 13)), list(range(20, 29)))
    features = packing.pack_examples([example], LENGTHS)
    np.testing.assert_array_equal(features["encoder_input_tokens"][0], np.arange(3, 11))
    np.testing.assert_array_equal(features["decoder_target_tokens"][0], np.arange(20, 26))


def test_assign_rows_rejects_overlong_examples():
    with pytest.raises(ValueError, match="longer than the row capacities"):
        packing.assign_rows([[9, 1]], (LENGTHS.inputs, LENGTHS.targets))


def test_feature_lengths_name_the_bad_field():
    with pytest.raises(ValueError, match="FeatureLengths.targets"):
        packing.FeatureLengths(8, 0)
    with pytest.raises(ValueError, match="missing \\['targets'\\]"):
        packing.FeatureLengths.from_mapping({"inputs": 8})
