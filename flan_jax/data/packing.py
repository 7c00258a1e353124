"""Best-fit packing of tokenized examples into fixed-length rows, for both model kinds.

An example is a pair (inputs, targets) of 1-D token arrays that already end with EOS. How
an example is laid out in a row is the *feature format*, chosen by the model
(`Model.feature_format`):

- `EncoderDecoderFormat` (T5): two streams. A packed row holds several examples side by
  side in both at once: segment `k` of the encoder row and segment `k` of the decoder row
  are the same example, so a row is a bin with two capacities, `inputs_length` and
  `targets_length`.
- `DecoderOnlyFormat` (OPT, Llama): one stream of length `inputs_length + targets_length`
  (t5x's PrefixLM convention) holding `inputs ++ targets` of each example, so a row is a
  bin with one capacity.

The packer works on a buffer of examples (for example 1024 shuffled examples): it puts each
example into the open row that it fits best in every stream (the row left with the least
room, in L2 norm over the normalised streams), opening a new row only when none fits; it
tries this largest-first and in arrival order and keeps the denser result. This is denser
than seqio's `trim_and_pack`, which fills one row at a time in arrival order and closes it
at the first example that does not fit.

Worked example, encoder-decoder, `inputs_length=8`, `targets_length=6`, three examples:

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

The same examples in `DecoderOnlyFormat(start_token_id=2, prefix_lm=True)` have sizes 5, 7
and 6 in one stream of 8 + 6 = 14 slots. Largest first, B opens row 0 and C goes beside it
(7 + 6 = 13); A opens row 1. Loss weights cover the targets only (the default; with
`loss_on_inputs=True` every real token), and `decoder_causal_attention` marks the start
token and the inputs (len(inputs) + 1 positions), which attend to each other both ways:

    decoder_target_tokens    [[13, 14, 15, 1, 22, 23, 1, 16, 1, 24, 25, 26, 1, 0],
    decoder_input_tokens      [ 2, 13, 14, 15, 1, 22, 23, 2, 16, 1, 24, 25, 26, 0],
    decoder_segment_ids       [ 1,  1,  1, 1,  1,  1, 1,  2, 2,  2,  2,  2, 2, 0],
    decoder_positions         [ 0,  1,  2, 3,  4,  5, 6,  0, 1,  2,  3,  4, 5, 0],
    decoder_loss_weights      [ 0,  0,  0, 0,  1,  1, 1,  0, 0,  1,  1,  1, 1, 0],
    decoder_causal_attention  [ 1,  1,  1, 1,  1,  0, 0,  1, 1,  1,  0,  0, 0, 0]]

and row 1 holds A alone: targets `[11, 12, 1, 21, 1, 0, ...]`, inputs `[2, 11, 12, 1, 21,
0, ...]`. Decoder-only rows always carry segment ids and positions, packed or not: token 0
is a real token in Hugging Face vocabularies, so padding is segment id 0, never token 0.

An example may carry `targets_loss_mask` (0/1, as long as its targets): the target part's loss
weights are multiplied by it, packed or not, in both formats (an instruction synthesizer
learns only its pairs, `flan_jax/ipt/format.py`). In the decoder-only example above, B with
`targets_loss_mask=[0, 1, 1]` would give row 0 the weights `[0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1,
1, 1, 0]`. An example without it weighs as before (all ones).

Unpacked conversion (`pad_examples`) puts one example per row. For the encoder-decoder it
matches seqio's `EncDecFeatureConverter(pack=False)` exactly, including its shift over the
whole row; for the decoder-only format it is the packed layout with one example per row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

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
# Decoder-only rows, packed or not; prefix-LM rows add PREFIX_LM_FEATURE.
DECODER_ONLY_FEATURES = (
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
)
PREFIX_LM_FEATURE = "decoder_causal_attention"
# Optional example feature: 0/1 per target token, multiplied into its loss weight.
TARGETS_LOSS_MASK = "targets_loss_mask"

Example = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class FeatureLengths:
    """Row capacities from `task_feature_lengths`.

    Attributes:
      inputs: encoder row length (tokens); decoder-only: the inputs' share of the row.
      targets: decoder row length (tokens); decoder-only: the targets' share of the row.
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


@dataclasses.dataclass(frozen=True)
class EncoderDecoderFormat:
    """Inputs in the encoder row, targets in the decoder row (T5; see the module docstring)."""

    kind: ClassVar[str] = "encoder_decoder"

    def to_dict(self) -> dict[str, Any]:
        """A JSON description (saved in the data iterator's state)."""
        return {"kind": self.kind}

    def capacities(self, lengths: FeatureLengths) -> tuple[int, ...]:
        """Row capacity of each stream."""
        return (lengths.inputs, lengths.targets)

    def stream_lengths(self, example: Example) -> tuple[int, ...]:
        """Tokens an example takes in each stream."""
        return (len(example["inputs"]), len(example["targets"]))

    def make_packed_features(
        self,
        examples: Sequence[Example],
        rows: Sequence[Sequence[int]],
        lengths: FeatureLengths,
        *,
        loss_on_inputs: bool = False,
    ) -> dict[str, np.ndarray]:
        """The packed features of `rows` (from `assign_rows`) over trimmed `examples`."""
        check_layout(feature_format=self, loss_on_inputs=loss_on_inputs)
        enc_tokens, enc_segments, enc_positions = _fill_stream(
            [e["inputs"] for e in examples], rows, lengths.inputs
        )
        targets, dec_segments, dec_positions = _fill_stream(
            [e["targets"] for e in examples], rows, lengths.targets
        )
        return {
            "encoder_input_tokens": enc_tokens,
            "encoder_segment_ids": enc_segments,
            "encoder_positions": enc_positions,
            "decoder_target_tokens": targets,
            "decoder_input_tokens": _shift_right_per_segment(
                targets, dec_segments, dec_positions, start_token_id=0
            ),
            "decoder_segment_ids": dec_segments,
            "decoder_positions": dec_positions,
            "decoder_loss_weights": _apply_targets_loss_mask(
                (dec_segments > 0).astype(np.int32), examples, rows, lengths.targets
            ),
        }

    def make_unpacked_features(
        self, examples: Sequence[Example], lengths: FeatureLengths, *, loss_on_inputs: bool = False
    ) -> dict[str, np.ndarray]:
        """One example per row, as seqio's `EncDecFeatureConverter(pack=False)` makes them.

        Unlike the packed form, the decoder inputs are the targets shifted over the whole
        row, so the first padding position holds the last target token (EOS), as in seqio.
        """
        rows = [[i] for i in range(len(examples))]
        features = self.make_packed_features(examples, rows, lengths, loss_on_inputs=loss_on_inputs)
        targets = features["decoder_target_tokens"]
        decoder_inputs = np.zeros_like(targets)
        decoder_inputs[:, 1:] = targets[:, :-1]
        features["decoder_input_tokens"] = decoder_inputs
        return {name: features[name] for name in UNPACKED_FEATURES}


@dataclasses.dataclass(frozen=True)
class DecoderOnlyFormat:
    """`inputs ++ targets` in one decoder row (OPT, Llama; see the module docstring).

    Attributes:
      start_token_id: the token fed before the first token of every segment (the model's
        `start_token_id`, HF `bos_token_id` for converted checkpoints).
      prefix_lm: add `decoder_causal_attention` (1 on the start token and the inputs), for
        a model that attends bidirectionally over the inputs.
    """

    start_token_id: int = 0
    prefix_lm: bool = False

    kind: ClassVar[str] = "decoder_only"

    def __post_init__(self):
        if not isinstance(self.start_token_id, (int, np.integer)) or self.start_token_id < 0:
            raise ValueError(
                "DecoderOnlyFormat.start_token_id must be a token id >= 0, got "
                f"{self.start_token_id!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON description (saved in the data iterator's state)."""
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def capacities(self, lengths: FeatureLengths) -> tuple[int, ...]:
        """One stream of `inputs + targets` slots."""
        return (lengths.inputs + lengths.targets,)

    def stream_lengths(self, example: Example) -> tuple[int, ...]:
        return (len(example["inputs"]) + len(example["targets"]),)

    def make_packed_features(
        self,
        examples: Sequence[Example],
        rows: Sequence[Sequence[int]],
        lengths: FeatureLengths,
        *,
        loss_on_inputs: bool = False,
    ) -> dict[str, np.ndarray]:
        """The packed features of `rows` (from `assign_rows`) over trimmed `examples`.

        The loss weights cover the targets only, or every real token with `loss_on_inputs`
        (pre-training text).
        """
        (length,) = self.capacities(lengths)
        targets, segment_ids, positions = _fill_stream(
            [np.concatenate([e["inputs"], e["targets"]]) for e in examples], rows, length
        )
        # Per position, the number of input tokens of its segment.
        inputs_width, _, _ = _fill_stream(
            [np.full(self.stream_lengths(e), len(e["inputs"])) for e in examples], rows, length
        )
        real = segment_ids > 0
        weighted = real if loss_on_inputs else real & (positions >= inputs_width)
        features = {
            "decoder_target_tokens": targets,
            "decoder_input_tokens": _shift_right_per_segment(
                targets, segment_ids, positions, start_token_id=self.start_token_id
            ),
            "decoder_segment_ids": segment_ids,
            "decoder_positions": positions,
            "decoder_loss_weights": _apply_targets_loss_mask(
                weighted.astype(np.int32), examples, rows, length, with_inputs=True
            ),
        }
        if self.prefix_lm:
            # The start token and the inputs; the last input predicts the first target.
            prefix = real & (positions <= inputs_width)
            features[PREFIX_LM_FEATURE] = prefix.astype(np.int32)
        return features

    def make_unpacked_features(
        self, examples: Sequence[Example], lengths: FeatureLengths, *, loss_on_inputs: bool = False
    ) -> dict[str, np.ndarray]:
        """One example per row: the packed layout of single-example rows."""
        rows = [[i] for i in range(len(examples))]
        return self.make_packed_features(examples, rows, lengths, loss_on_inputs=loss_on_inputs)


FeatureFormat = EncoderDecoderFormat | DecoderOnlyFormat


def check_layout(*, feature_format: FeatureFormat, loss_on_inputs: bool) -> None:
    """Raises ValueError unless `feature_format` is a format that can take `loss_on_inputs`."""
    if not isinstance(feature_format, (EncoderDecoderFormat, DecoderOnlyFormat)):
        raise ValueError(
            "feature_format must be packing.EncoderDecoderFormat() or "
            f"packing.DecoderOnlyFormat(...) (a model's feature_format); got {feature_format!r}."
        )
    if loss_on_inputs and not isinstance(feature_format, DecoderOnlyFormat):
        raise ValueError(
            "loss_on_inputs=True needs a decoder-only model: an encoder-decoder reads its "
            "inputs in the encoder and has no loss on them. Set DataConfig.loss_on_inputs=False."
        )


def trim_example(example: Example, lengths: FeatureLengths) -> dict[str, np.ndarray]:
    """Cuts inputs and targets (and `targets_loss_mask`) to their lengths.

    A safety net for the tokens, which seqio already trims; seqio does not trim the mask,
    which is not an output feature, so this is where it is cut with its targets (it may
    arrive longer than targets seqio has cut).

    Raises:
      ValueError: `targets_loss_mask` is shorter than the targets or not 0/1.
    """
    targets = np.asarray(example["targets"], np.int32)
    trimmed = {
        "inputs": np.asarray(example["inputs"], np.int32)[: lengths.inputs],
        "targets": targets[: lengths.targets],
    }
    if TARGETS_LOSS_MASK in example:
        mask = np.asarray(example[TARGETS_LOSS_MASK], np.int32)
        if mask.ndim != 1 or len(mask) < len(targets) or not np.isin(mask, (0, 1)).all():
            raise ValueError(
                f"{TARGETS_LOSS_MASK} must hold 0/1 for each target token; got shape "
                f"{mask.shape} values {np.unique(mask).tolist()} for targets of shape "
                f"{targets.shape}."
            )
        trimmed[TARGETS_LOSS_MASK] = mask[: len(trimmed["targets"])]
    return trimmed


def _apply_targets_loss_mask(
    weights: np.ndarray,
    examples: Sequence[Example],
    rows: Sequence[Sequence[int]],
    length: int,
    *,
    with_inputs: bool = False,
) -> np.ndarray:
    """`weights` [rows, length] times the examples' `targets_loss_mask` laid out alike.

    `with_inputs`: the stream holds `inputs ++ targets` (decoder-only); the inputs keep
    their weights. Without any mask in the buffer, `weights` comes back untouched.
    """
    if not any(TARGETS_LOSS_MASK in e for e in examples):
        return weights
    masks = []
    for e in examples:
        mask = e.get(TARGETS_LOSS_MASK, np.ones(len(e["targets"]), np.int32))
        masks.append(
            np.concatenate([np.ones(len(e["inputs"]), np.int32), mask]) if with_inputs else mask
        )
    mask_stream, _, _ = _fill_stream(masks, rows, length)
    return weights * mask_stream


def _best_fit(
    sizes: Sequence[Sequence[int]], capacities: Sequence[int], order: np.ndarray
) -> list[list[int]]:
    """Places examples in `order`, each into the row it fits best (or a new row).

    `sizes` is `[examples][streams]`, `capacities` `[streams]`.
    """
    # Per stream, the free slots of every row (a Python loop over the one or two streams
    # is faster than 2-D array operations at these sizes).
    free = [np.zeros(len(order), np.int64) for _ in capacities]
    rows: list[list[int]] = []
    for index in order:
        opened = len(rows)
        left = [stream[:opened] - size for stream, size in zip(free, sizes[index])]
        fits = left[0] >= 0
        for stream in left[1:]:
            fits &= stream >= 0
        if fits.any():
            # Norm-based best fit: the row whose room left after the placement is smallest
            # in L2 norm. Squaring penalises room left in one stream only, so rows fill in
            # every stream instead of running out of one while another idles.
            room = sum((stream / capacity) ** 2 for stream, capacity in zip(left, capacities))
            row = int(np.argmin(np.where(fits, room, np.inf)))
        else:
            row = opened
            rows.append([])
            for stream, capacity in zip(free, capacities):
                stream[row] = capacity
        rows[row].append(int(index))
        for stream, size in zip(free, sizes[index]):
            stream[row] -= size
    return rows


def assign_rows(
    stream_lengths: Sequence[Sequence[int]] | np.ndarray, capacities: Sequence[int]
) -> list[list[int]]:
    """Best-fit assignment of one buffer of examples to rows.

    Two placement orders are tried and the one giving fewer rows is kept (the decreasing
    order on a tie): largest first (best-fit decreasing, strongest when one stream is
    the bottleneck) and arrival order (which mixes input-heavy and target-heavy examples
    in the same rows, strongest when two streams are nearly balanced).

    Args:
      stream_lengths: `[examples, streams]`, each example's tokens per stream (a format's
        `stream_lengths`), each at most the stream's capacity.
      capacities: `[streams]`, the row capacity of each stream (a format's `capacities`).

    Returns:
      The rows in the order they were opened, each a list of example indices in the order
      the examples were placed (which is their segment order, 1-based).
    """
    capacity = np.asarray(capacities, np.int64)
    sizes = np.asarray(stream_lengths, np.int64).reshape(-1, len(capacity))
    if (sizes > capacity).any():
        raise ValueError(
            f"An example is longer than the row capacities {tuple(capacities)}; trim first."
        )
    size = np.max(sizes / capacity, axis=1)
    # A stable sort keeps ties in arrival order, so the result depends only on the buffer.
    per_example, per_stream = sizes.tolist(), capacity.tolist()
    decreasing = _best_fit(per_example, per_stream, np.argsort(-size, kind="stable"))
    arrival = _best_fit(per_example, per_stream, np.arange(len(size)))
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


def _shift_right_per_segment(
    tokens: np.ndarray, segment_ids: np.ndarray, positions: np.ndarray, *, start_token_id: int
) -> np.ndarray:
    """`tokens` shifted right inside each segment, `start_token_id` first, padding 0."""
    shifted = np.zeros_like(tokens)
    shifted[:, 1:] = tokens[:, :-1]
    shifted[positions == 0] = start_token_id
    shifted[segment_ids == 0] = 0
    return shifted


def pack_examples(
    examples: Sequence[Example],
    lengths: FeatureLengths,
    *,
    feature_format: FeatureFormat = EncoderDecoderFormat(),
    loss_on_inputs: bool = False,
) -> dict[str, np.ndarray]:
    """Trims and best-fit packs one buffer of examples; returns features `[rows, length]`.

    Args:
      examples: dicts with 1-D token arrays "inputs" and "targets" (EOS included).
      lengths: the row capacities.
      feature_format: the layout the model reads (`Model.feature_format`).
      loss_on_inputs: decoder-only: loss weights on the inputs too.
    """
    check_layout(feature_format=feature_format, loss_on_inputs=loss_on_inputs)
    trimmed = [trim_example(e, lengths) for e in examples]
    rows = assign_rows(
        [feature_format.stream_lengths(e) for e in trimmed], feature_format.capacities(lengths)
    )
    return feature_format.make_packed_features(
        trimmed, rows, lengths, loss_on_inputs=loss_on_inputs
    )


def pad_examples(
    examples: Sequence[Example],
    lengths: FeatureLengths,
    *,
    feature_format: FeatureFormat = EncoderDecoderFormat(),
    loss_on_inputs: bool = False,
) -> dict[str, np.ndarray]:
    """Trims and lays out one example per row; returns features `[examples, length]`.

    Arguments as :func:`pack_examples`.
    """
    check_layout(feature_format=feature_format, loss_on_inputs=loss_on_inputs)
    trimmed = [trim_example(e, lengths) for e in examples]
    return feature_format.make_unpacked_features(trimmed, lengths, loss_on_inputs=loss_on_inputs)


def _real_slots(features: Mapping[str, np.ndarray], stream: str, tokens_name: str) -> np.ndarray:
    # Segment ids mark real tokens wherever they exist (decoder-only rows always); only
    # unpacked encoder-decoder rows fall back on T5's padding id 0.
    segment_ids = features.get(f"{stream}_segment_ids")
    if segment_ids is not None:
        return np.asarray(segment_ids) > 0
    return np.asarray(features[tokens_name]) != 0


def count_real_tokens(features: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Real (non-padding) and total token slots of a batch, per stream.

    Decoder-only batches have no encoder stream: its counts are 0.
    """
    counts = {}
    for stream, tokens_name in (
        ("encoder", "encoder_input_tokens"),
        ("decoder", "decoder_target_tokens"),
    ):
        present = tokens_name in features
        real = _real_slots(features, stream, tokens_name) if present else np.zeros([0])
        counts[f"{stream}_real"] = int(np.count_nonzero(real))
        counts[f"{stream}_total"] = int(real.size)
    return counts
