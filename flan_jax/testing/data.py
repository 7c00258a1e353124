"""Helpers for data-pipeline tests and the packing benchmark.

References the packer is compared against (seqio's greedy `trim_and_pack`, its unpacked
`EncDecFeatureConverter` and its `PrefixLMFeatureConverter`), unpackers of both feature
formats, and the length distribution of real instruction data read in place from the
shared data folder (`../shared/data` beside the repository).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from flan_jax.testing.shared_data import shared_data_dir

# A tokenizer-free length proxy: words and punctuation marks, about one subword each.
_PIECE_RE = re.compile(r"\w+|[^\w\s]")


def count_pieces(text: str) -> int:
    return len(_PIECE_RE.findall(text.replace("\\n", "\n")))


def load_instruction_texts(data_dir: str | None = None) -> list[tuple[str, str]]:
    """(input, target) texts of the Flan CoT TSVs and GSM8K train, as the CoT tasks use them.

    Returns an empty list when the folders are absent (callers skip).
    """
    data_dir = data_dir or shared_data_dir()
    pairs: list[tuple[str, str]] = []
    cot_dir = os.path.join(data_dir, "flan_cot_data")
    if os.path.isdir(cot_dir):
        for name in sorted(os.listdir(cot_dir)):
            if not name.endswith("_train.tsv"):
                continue
            with open(os.path.join(cot_dir, name), encoding="utf-8") as f:
                for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                    if len(row) >= 3:
                        pairs.append((row[0], f"{row[2]} So the answer is {row[1]}."))
    gsm8k = os.path.join(data_dir, "gsm8k", "train.jsonl")
    if os.path.exists(gsm8k):
        with open(gsm8k, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                pairs.append((record["question"], record["answer"]))
    return pairs


def load_instruction_lengths(data_dir: str | None = None) -> list[tuple[int, int]]:
    """(input, target) lengths of `load_instruction_texts` by the piece proxy, +1 for EOS."""
    return [(count_pieces(q) + 1, count_pieces(a) + 1) for q, a in load_instruction_texts(data_dir)]


def make_examples_from_lengths(
    lengths: Sequence[tuple[int, int]], seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Random token examples (ids 3..999, EOS last) with the given (input, target) lengths."""
    rng = np.random.default_rng(seed)
    examples = []
    for in_len, tgt_len in lengths:
        inputs = rng.integers(3, 1000, size=in_len).astype(np.int32)
        targets = rng.integers(3, 1000, size=tgt_len).astype(np.int32)
        if in_len:
            inputs[-1] = 1
        targets[-1] = 1
        examples.append({"inputs": inputs, "targets": targets})
    return examples


def unpack_rows(features: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Splits packed rows back into per-segment features (row-major, segment order).

    Each entry has "inputs", "targets", "decoder_input_tokens", "decoder_loss_weights",
    "encoder_positions" and "decoder_positions" of one segment.
    """
    segments = []
    for r in range(features["encoder_input_tokens"].shape[0]):
        enc_ids = features["encoder_segment_ids"][r]
        dec_ids = features["decoder_segment_ids"][r]
        for segment in range(1, int(max(enc_ids.max(), dec_ids.max())) + 1):
            enc = enc_ids == segment
            dec = dec_ids == segment
            segments.append(
                {
                    "inputs": features["encoder_input_tokens"][r][enc],
                    "targets": features["decoder_target_tokens"][r][dec],
                    "decoder_input_tokens": features["decoder_input_tokens"][r][dec],
                    "decoder_loss_weights": features["decoder_loss_weights"][r][dec],
                    "encoder_positions": features["encoder_positions"][r][enc],
                    "decoder_positions": features["decoder_positions"][r][dec],
                }
            )
    return segments


def unpack_decoder_only_rows(features: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Splits decoder-only rows into per-segment features (row-major, segment order).

    Each entry holds every `decoder_*` feature of one segment, keyed by its name.
    """
    segments = []
    ids = features["decoder_segment_ids"]
    for r in range(ids.shape[0]):
        for segment in range(1, int(ids[r].max()) + 1):
            mask = ids[r] == segment
            segments.append({name: value[r][mask] for name, value in features.items()})
    return segments


def _as_dataset(examples: Sequence[Mapping[str, np.ndarray]]):
    import tensorflow as tf

    return tf.data.Dataset.from_generator(
        lambda: ({"inputs": e["inputs"], "targets": e["targets"]} for e in examples),
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
        },
    )


def seqio_unpacked_features(
    examples: Sequence[Mapping[str, np.ndarray]], lengths: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """seqio's `EncDecFeatureConverter(pack=False)` output, stacked `[examples, length]`."""
    import seqio

    converter = seqio.EncDecFeatureConverter(pack=False)
    rows = list(converter(_as_dataset(examples), dict(lengths)).as_numpy_iterator())
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


def seqio_trim_and_pack(
    examples: Sequence[Mapping[str, np.ndarray]], lengths: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """seqio's greedy `trim_and_pack_dataset` of the examples, stacked `[rows, length]`."""
    import seqio

    packed = seqio.utils.trim_and_pack_dataset(_as_dataset(examples), dict(lengths))
    rows = list(packed.as_numpy_iterator())
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


def seqio_prefix_lm_features(
    examples: Sequence[Mapping[str, np.ndarray]],
    lengths: Mapping[str, int],
    *,
    pack: bool,
    loss_on_targets_only: bool = True,
) -> dict[str, np.ndarray]:
    """seqio's `PrefixLMFeatureConverter` output (rows of inputs + targets), stacked."""
    import seqio

    converter = seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=loss_on_targets_only)
    rows = list(converter(_as_dataset(examples), dict(lengths)).as_numpy_iterator())
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}
