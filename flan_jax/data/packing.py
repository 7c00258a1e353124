"""Best-fit packing of tokenized encoder-decoder examples into fixed-length rows.

An encoder-decoder example is a pair (inputs, targets) of 1-D token arrays that already end
with EOS (id 1). A packed row holds several examples side by side in both streams at once:
segment `k` of the encoder row and segment `k` of the decoder row are the same example, so
a row is a bin with two capacities, `inputs_length` and `targets_length`.

The packer works on a buffer of examples (for example 1024 shuffled examples): it puts each
example into the open row that it fits best in both streams (the row left with the least
room, in L2 norm over the two normalised streams), opening a new row only when none fits;
it tries this largest-first and in arrival order and keeps the denser result. This is
denser than seqio's `trim_and_pack`, which fills one row at a time in arrival order and
closes it at the first example that does not fit.

Worked example, `inputs_length=8`, `targets_length=6`, three examples:

    A: inputs [11, 12, 1]       targets [21, 1]            size max(3/8, 2/6) = 0.38
    B: inputs [13, 14, 15, 1]   targets [22, 23, 1]        size max(4/8, 3/6) = 0.50
    C: inputs [16, 1]           targets [24, 25, 26, 1]    size max(2/8, 4/6) = 0.67

Largest first, C opens row 0; B does not fit beside C (4 + 3 > 6 targets) and opens row 1;
A fits in both rows and goes to row 1, which it leaves with less room (1 input and 1 target
slot, against 3 inputs and 0 targets in row 0). Arrival order also needs two rows, so the
largest-first layout stays. The features (t5x / seqio names) are:

    encoder_input_tokens  [[16, 1, 0, 0, 0, 0, 0, 0],   [[13, 14, 15,  1, 11, 12,  1,  0],
    encoder_segment_ids    [ 1, 1, 0, 0, 0, 0, 0, 0],    [ 1,  1,  1,  1,  2,  2,  2,  0],
    encoder_positions      [ 0, 1, 0, 0, 0, 0, 0, 0]]    [ 0,  1,  2,  3,  0,  1,  2,  0]]
    decoder_target_tokens  [[24, 25, 26,  1, 0, 0],      [[22, 23,  1, 21,  1,  0],
    decoder_input_tokens   [ 0, 24, 25, 26, 0, 0],       [ 0, 22, 23,  0, 21,  0],
    decoder_segment_ids    [ 1,  1,  1,  1, 0, 0],       [ 1,  1,  1,  2,  2,  0],
    decoder_positions      [ 0,  1,  2,  3, 0, 0],       [ 0,  1,  2,  0,  1,  0],
    decoder_loss_weights   [ 1,  1,  1,  1, 0, 0]]       [ 1,  1,  1,  1,  1,  0]]

(row 0 on the left, row 1 on the right). `decoder_input_tokens` is the target shifted right
inside each segment, starting from 0 at every segment start, so no segment sees another's
tokens; segment id 0 and position 0 mark padding.

Unpacked conversion (`pad_examples`) puts one example per row and matches seqio's
`EncDecFeatureConverter(pack=False)` exactly, including its shift over the whole row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

PACKED_FEATURES = (
    "encoder_input_tokens",
    "encoder_segment_ids",
    "encoder_positions",
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
)
UNPACKED_FEATURES = (
    "encoder_input_tokens",
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
)

Example = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class FeatureLengths:
    """Row capacities of the two streams.

    Attributes:
      inputs: encoder row length (tokens).
      targets: decoder row length (tokens).
    """

    inputs: int
    targets: int

    def __post_init__(self):
        for name in ("inputs", "targets"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(
                    f"FeatureLengths.{name} must be a positive integer, got {value!r}."
                )

    @classmethod
    def from_mapping(cls, lengths: Mapping[str, int]) -> FeatureLengths:
        """From seqio-style `task_feature_lengths` ({"inputs": .., "targets": ..})."""
        missing = {"inputs", "targets"} - set(lengths)
        if missing:
            raise ValueError(
                f"task_feature_lengths needs keys 'inputs' and 'targets'; missing "
                f"{sorted(missing)} in {dict(lengths)}."
            )
        return cls(int(lengths["inputs"]), int(lengths["targets"]))


def trim_example(example: Example, lengths: FeatureLengths) -> dict[str, np.ndarray]:
    """Cuts both streams to the row capacities (a safety net: seqio already trims)."""
    return {
        "inputs": np.asarray(example["inputs"], np.int32)[: lengths.inputs],
        "targets": np.asarray(example["targets"], np.int32)[: lengths.targets],
    }


def _best_fit(
    in_len: np.ndarray, tgt_len: np.ndarray, order: np.ndarray, lengths: FeatureLengths
) -> list[list[int]]:
    """Places examples in `order`, each into the row it fits best (or a new row)."""
    free_in = np.zeros(len(order), np.int64)
    free_tgt = np.zeros(len(order), np.int64)
    rows: list[list[int]] = []
    for index in order:
        opened = len(rows)
        left_in = free_in[:opened] - in_len[index]
        left_tgt = free_tgt[:opened] - tgt_len[index]
        fits = (left_in >= 0) & (left_tgt >= 0)
        if fits.any():
            # Norm-based best fit: the row whose room left after the placement is smallest
            # in L2 norm. Squaring penalises room left in one stream only, so rows fill in
            # both streams instead of running out of one while the other idles.
            room = (left_in / lengths.inputs) ** 2 + (left_tgt / lengths.targets) ** 2
            row = int(np.argmin(np.where(fits, room, np.inf)))
        else:
            row = opened
            rows.append([])
            free_in[row] = lengths.inputs
            free_tgt[row] = lengths.targets
        rows[row].append(int(index))
        free_in[row] -= in_len[index]
        free_tgt[row] -= tgt_len[index]
    return rows


def assign_rows(
    input_lengths: Sequence[int], target_lengths: Sequence[int], lengths: FeatureLengths
) -> list[list[int]]:
    """Best-fit assignment of one buffer of examples to rows.

    Two placement orders are tried and the one giving fewer rows is kept (the decreasing
    order on a tie): largest first (best-fit decreasing, strongest when one stream is
    the bottleneck) and arrival order (which mixes input-heavy and target-heavy examples
    in the same rows, strongest when both streams are nearly balanced).

    Args:
      input_lengths: per example, the encoder length (each <= `lengths.inputs`).
      target_lengths: per example, the decoder length (each <= `lengths.targets`).
      lengths: the row capacities.

    Returns:
      The rows in the order they were opened, each a list of example indices in the order
      the examples were placed (which is their segment order, 1-based).
    """
    in_len = np.asarray(input_lengths, np.int64)
    tgt_len = np.asarray(target_lengths, np.int64)
    if in_len.shape != tgt_len.shape or in_len.ndim != 1:
        raise ValueError("input_lengths and target_lengths must be 1-D of the same size.")
    if (in_len > lengths.inputs).any() or (tgt_len > lengths.targets).any():
        raise ValueError(f"An example is longer than the row capacities {lengths}; trim first.")
    size = np.maximum(in_len / lengths.inputs, tgt_len / lengths.targets)
    # A stable sort keeps ties in arrival order, so the result depends only on the buffer.
    decreasing = _best_fit(in_len, tgt_len, np.argsort(-size, kind="stable"), lengths)
    arrival = _best_fit(in_len, tgt_len, np.arange(len(size)), lengths)
    return arrival if len(arrival) < len(decreasing) else decreasing


def _fill_stream(
    sequences: Sequence[np.ndarray], rows: Sequence[Sequence[int]], length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lays segments out along rows; returns (tokens, segment_ids, positions) [rows, length]."""
    tokens = np.zeros((len(rows), length), np.int32)
    segment_ids = np.zeros((len(rows), length), np.int32)
    positions = np.zeros((len(rows), length), np.int32)
    for r, row in enumerate(rows):
        start = 0
        for segment, index in enumerate(row, start=1):
            sequence = sequences[index]
            end = start + len(sequence)
            tokens[r, start:end] = sequence
            segment_ids[r, start:end] = segment
            positions[r, start:end] = np.arange(len(sequence))
            start = end
    return tokens, segment_ids, positions


def make_packed_features(
    examples: Sequence[Example], rows: Sequence[Sequence[int]], lengths: FeatureLengths
) -> dict[str, np.ndarray]:
    """Builds the packed features of `rows` (from `assign_rows`) over trimmed `examples`."""
    enc_tokens, enc_segments, enc_positions = _fill_stream(
        [e["inputs"] for e in examples], rows, lengths.inputs
    )
    targets, dec_segments, dec_positions = _fill_stream(
        [e["targets"] for e in examples], rows, lengths.targets
    )
    # Shift right, then zero every segment start (position 0) and all padding.
    decoder_inputs = np.zeros_like(targets)
    decoder_inputs[:, 1:] = targets[:, :-1]
    decoder_inputs[dec_positions == 0] = 0
    return {
        "encoder_input_tokens": enc_tokens,
        "encoder_segment_ids": enc_segments,
        "encoder_positions": enc_positions,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": decoder_inputs,
        "decoder_segment_ids": dec_segments,
        "decoder_positions": dec_positions,
        "decoder_loss_weights": (dec_segments > 0).astype(np.int32),
    }


def pack_examples(examples: Sequence[Example], lengths: FeatureLengths) -> dict[str, np.ndarray]:
    """Trims and best-fit packs one buffer of examples; returns features `[rows, length]`."""
    trimmed = [trim_example(e, lengths) for e in examples]
    rows = assign_rows(
        [len(e["inputs"]) for e in trimmed], [len(e["targets"]) for e in trimmed], lengths
    )
    return make_packed_features(trimmed, rows, lengths)


def pad_examples(examples: Sequence[Example], lengths: FeatureLengths) -> dict[str, np.ndarray]:
    """One example per row, as seqio's `EncDecFeatureConverter(pack=False)` makes them.

    Unlike the packed form, the decoder inputs are the targets shifted over the whole row,
    so the first padding position holds the last target token (EOS), as in seqio.
    """
    trimmed = [trim_example(e, lengths) for e in examples]
    rows = [[i] for i in range(len(trimmed))]
    features = make_packed_features(trimmed, rows, lengths)
    targets = features["decoder_target_tokens"]
    decoder_inputs = np.zeros_like(targets)
    decoder_inputs[:, 1:] = targets[:, :-1]
    features["decoder_input_tokens"] = decoder_inputs
    return {name: features[name] for name in UNPACKED_FEATURES}


def count_real_tokens(features: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Real (non-padding) and total token slots of a batch, per stream."""
    encoder = np.asarray(features["encoder_input_tokens"])
    decoder = np.asarray(features["decoder_target_tokens"])
    return {
        "encoder_real": int(np.count_nonzero(encoder)),
        "encoder_total": int(encoder.size),
        "decoder_real": int(np.count_nonzero(decoder)),
        "decoder_total": int(decoder.size),
    }
