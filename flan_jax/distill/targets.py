"""Student training examples for the three modes, and their batches.

Every mode produces the same :class:`StudentExample`: the student's encoder inputs, its
decoder targets and, per target position, a sparse teacher row ``[k]`` of (student id,
log-prob). The modes differ only in where the targets and the rows come from:

- **answer-only / gold fine-tuning** (:func:`build_gold_examples`): the gold data rendered in
  the configured formats; every row is one-hot on the target token.
- **sample matching** (:func:`build_teacher_examples` with ``distribution=False``): the
  teacher's kept samples, re-tokenised by the student; one-hot rows (the loss is the NLL of
  the samples, ``LossConfig(kind="cross_entropy")``).
- **distribution matching** (``distribution=True``): the same targets, with each student
  token's row taken from the teacher's top-k through the tokenizer alignment
  (:mod:`flan_jax.distill.alignment`); trained with ``LossConfig(kind="sparse_kl")``
  (:mod:`flan_jax.distill.kl_loss`).

Per format: each teacher sample is re-rendered in a format drawn by ``ratios`` for its own
key (``flan_jax.distill.formats.render_mixed_example``), so its demonstrations are
resampled per sample. A CoT format takes the teacher's completion as target; an answer-only
format takes the answer statement, with one-hot rows (the paper trains answer-only formats
with NLL).

The appended EOS target is always one-hot: the teacher stores hold text tokens only.

Worked example (k = 2, targets "▁7 ." + EOS; "▁7" aligned to a teacher token with top-2
{"▁7": -0.1, "▁8": -2.4}, "." a fallback)::

    decoder_target_tokens  [ 12,          5,          1,          0         ]
    teacher_ids            [[12, 13],    [5, 0],     [1, 0],     [0, 0]     ]
    teacher_logprobs       [[-0.1, -2.4], [0, -inf], [0, -inf], [-inf, -inf]]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from flan_jax.distill import alignment, formats
from flan_jax.distill.teacher_store import TeacherStore
from flan_jax.evaluation.math_datasets import MathExample

EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class StudentExample:
    """One tokenised student example with per-position sparse teacher rows.

    Attributes:
      inputs: ``[n_in]`` int32 encoder tokens, ending with EOS.
      targets: ``[n_t]`` int32 decoder targets, ending with EOS.
      teacher_ids: ``[n_t, k]`` int32 student ids of the teacher rows.
      teacher_logprobs: ``[n_t, k]`` f32 log-probs, ``-inf`` padding.
      format: the format the example was rendered in.
      id: the example's key (question id, or store key for teacher samples).
    """

    inputs: np.ndarray
    targets: np.ndarray
    teacher_ids: np.ndarray
    teacher_logprobs: np.ndarray
    format: str
    id: str


def one_hot_rows(targets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One-hot teacher rows ``([n, k] ids, [n, k] log-probs)`` on ``targets [n]``."""
    targets = np.asarray(targets, np.int32).reshape(-1)
    ids = np.zeros((len(targets), k), np.int32)
    logprobs = np.full((len(targets), k), -np.inf, np.float32)
    ids[:, 0] = targets
    logprobs[:, 0] = 0.0
    return ids, logprobs


def encode_text(vocabulary: seqio.SentencePieceVocabulary, text: str) -> np.ndarray:
    """Token ids of ``text`` followed by EOS."""
    return np.asarray(list(vocabulary.encode(text)) + [EOS_ID], np.int32)


def _one_hot_example(
    vocabulary, inputs: str, targets: str, k: int, fmt: str, key: str
) -> StudentExample:
    target_ids = encode_text(vocabulary, targets)
    return StudentExample(
        encode_text(vocabulary, inputs), target_ids, *one_hot_rows(target_ids, k), fmt, key
    )


def build_gold_examples(
    examples: Sequence[MathExample],
    vocabulary: seqio.SentencePieceVocabulary,
    *,
    ratios: Mapping[str, float],
    seed: int,
    k: int = 1,
    pool: Sequence[MathExample] | None = None,
    format_config: formats.FormatConfig = formats.FormatConfig(),
) -> list[StudentExample]:
    """Gold examples in formats drawn by ``ratios``, with one-hot rows (NLL training).

    Args:
      examples: the training items (CoT formats need their rationales).
      vocabulary: the student vocabulary.
      ratios: relative weight per format, e.g. ``{"zs_answer_only": 1}``.
      seed: the mixture seed.
      k: width of the rows (match the distillation batches to mix them).
      pool: demonstrations for in-context formats (default: ``examples``).
      format_config: the wording.
    """
    rendered = formats.render_mixed(
        examples, pool=pool, ratios=ratios, seed=seed, config=format_config
    )
    return [_one_hot_example(vocabulary, r.inputs, r.targets, k, r.format, r.id) for r in rendered]


def _sample_item(metadata: Mapping, key: str, config: formats.FormatConfig) -> MathExample:
    """The teacher sample as a MathExample whose rationale is the sample's own reasoning.

    Only the rendered *inputs* depend on it; the targets of CoT formats are the sample itself.
    """
    missing = [name for name in ("question", "answer", "text") if metadata.get(name) is None]
    if missing:
        raise ValueError(
            f"teacher store example {key!r}: metadata lacks {missing}; the "
            "student's inputs are rendered from the question and answer"
        )
    text = str(metadata["text"])
    try:
        rationale = formats.rationale_from_completion(text, config)
    except ValueError:  # a correct sample may state its answer without the answer sentence
        rationale = text
    return MathExample(
        question=str(metadata["question"]),
        answer=str(metadata["answer"]),
        rationale=rationale,
        source=str(metadata.get("source", "teacher")),
        id=key,
    )


def sentencepiece_encoder(vocabulary: seqio.SentencePieceVocabulary):
    """The alignment's student tokenizer ``text -> (ids, pieces)`` and its piece -> id table."""
    processor = vocabulary.tokenizer
    pieces = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}

    def encode(text: str) -> tuple[list[int], list[str]]:
        ids = list(processor.encode(text, out_type=int))
        return ids, [processor.id_to_piece(i) for i in ids]

    return encode, pieces


def _teacher_rows(
    student_ids: Sequence[int], aligned: alignment.AlignedTargets | None, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets with EOS, and their rows: aligned ones (cut / padded to k) or one-hot."""
    target_ids = np.asarray(list(student_ids) + [EOS_ID], np.int32)
    ids, logprobs = one_hot_rows(target_ids, k)
    if aligned is not None:
        width = min(k, aligned.ids.shape[1])
        ids[:-1, :width] = aligned.ids[:, :width]
        logprobs[:-1, :width] = aligned.logprobs[:, :width]
    return target_ids, ids, logprobs


def build_teacher_examples(
    store: TeacherStore,
    vocabulary: seqio.SentencePieceVocabulary,
    *,
    distribution: bool,
    ratios: Mapping[str, float],
    seed: int,
    k: int | None = None,
    pool: Sequence[MathExample] = (),
    format_config: formats.FormatConfig = formats.FormatConfig(),
    stats: alignment.AlignmentStats | None = None,
) -> list[StudentExample]:
    """Student examples from a teacher store (sample or distribution matching).

    Args:
      store: the teacher samples; each example's metadata needs ``question``, ``answer``
        and ``text`` (the completion), as both producers write them.
      vocabulary: the student vocabulary.
      distribution: take the rows from the aligned teacher top-k (else one-hot).
      ratios: relative weight per format; see the module docstring.
      seed: the mixture seed.
      k: width of the rows (default: the store's k).
      pool: demonstrations for in-context formats.
      format_config: the wording.
      stats: updated with the alignment's fallback counts (distribution matching only).
    """
    k = store.k if k is None else k
    demonstrations = formats.DemonstrationPool(pool)
    aligned_iter: Iterator | None = None
    if distribution:
        encode, pieces = sentencepiece_encoder(vocabulary)
        aligned_iter = alignment.align_teacher_store(store, encode, pieces, k=k, stats=stats)
    out = []
    for example in store:
        aligned_key, student_ids, aligned = (
            next(aligned_iter) if aligned_iter is not None else (example.key, None, None)
        )
        assert aligned_key == example.key, "alignment and store iterate in the same order"
        item = _sample_item(example.metadata, example.key, format_config)
        rendered = formats.render_mixed_example(
            item, pool=demonstrations, ratios=ratios, seed=seed, config=format_config
        )
        if rendered.format not in (formats.ZS_COT, formats.ICL_COT):
            out.append(
                _one_hot_example(
                    vocabulary, rendered.inputs, rendered.targets, k, rendered.format, example.key
                )
            )
            continue
        if student_ids is None:
            student_ids = list(vocabulary.encode(str(example.metadata["text"])))
        target_ids, ids, logprobs = _teacher_rows(student_ids, aligned, k)
        out.append(
            StudentExample(
                encode_text(vocabulary, rendered.inputs),
                target_ids,
                ids,
                logprobs,
                rendered.format,
                example.key,
            )
        )
    return out


def make_features(
    examples: Sequence[StudentExample], *, inputs_length: int, targets_length: int
) -> dict[str, np.ndarray]:
    """Unpacked feature-converter features plus the teacher rows, all ``[batch, ...]``.

    Longer inputs and targets are cut to the lengths (as seqio's trimming does).
    """
    if not examples:
        raise ValueError("make_features needs at least one example")
    batch, k = len(examples), examples[0].teacher_ids.shape[1]
    features = {
        "encoder_input_tokens": np.zeros((batch, inputs_length), np.int32),
        "decoder_target_tokens": np.zeros((batch, targets_length), np.int32),
        "teacher_ids": np.zeros((batch, targets_length, k), np.int32),
        "teacher_logprobs": np.full((batch, targets_length, k), -np.inf, np.float32),
    }
    for row, example in enumerate(examples):
        inputs, targets = example.inputs[:inputs_length], example.targets[:targets_length]
        features["encoder_input_tokens"][row, : len(inputs)] = inputs
        features["decoder_target_tokens"][row, : len(targets)] = targets
        features["teacher_ids"][row, : len(targets)] = example.teacher_ids[:targets_length]
        features["teacher_logprobs"][row, : len(targets)] = example.teacher_logprobs[
            :targets_length
        ]
    targets = features["decoder_target_tokens"]
    features["decoder_input_tokens"] = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    features["decoder_loss_weights"] = (targets > 0).astype(np.float32)
    return features


class DistillationBatches:
    """The distillation batch source: seeded epochs over the examples, resumable.

    Epoch ``e`` visits the examples in the order ``default_rng([seed, e]).permutation``;
    epochs run into each other, so a batch may hold the end of one and the start of the
    next. Every process draws the same global batch of ``batch_size`` rows and serves its
    contiguous ``1 / num_shards`` of them (as the seqio pipeline shards by process). A
    :class:`flan_jax.data.batch_source.BatchSource`: the state is the position in the
    stream, so a resumed run reads the same batches as an uninterrupted one.

    Args:
      examples: the student examples.
      batch_size: global rows per batch.
      inputs_length, targets_length: feature lengths; longer examples are cut.
      seed: the order seed.
      shard_index, num_shards: this process's share of every batch.
    """

    def __init__(
        self,
        examples: Sequence[StudentExample],
        *,
        batch_size: int,
        inputs_length: int,
        targets_length: int,
        seed: int,
        shard_index: int = 0,
        num_shards: int = 1,
    ):
        if not examples:
            raise ValueError(
                "DistillationBatches needs at least one example (did the teacher keep no sample?)"
            )
        if batch_size < 1 or batch_size % num_shards:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of the "
                f"number of processes ({num_shards})"
            )
        self._examples = examples
        self._lengths = {"inputs_length": inputs_length, "targets_length": targets_length}
        local = batch_size // num_shards
        self._rows = slice(shard_index * local, (shard_index + 1) * local)
        self._identity = {
            "seed": int(seed),
            "num_examples": len(examples),
            "batch_size": int(batch_size),
        }
        self._epoch, self._position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self._identity["seed"], epoch]).permutation(
            len(self._examples)
        )

    def _next_index(self) -> int:
        if self._position == len(self._order):
            self._epoch, self._position = self._epoch + 1, 0
            self._order = self._permutation(self._epoch)
        self._position += 1
        return int(self._order[self._position - 1])

    def __iter__(self) -> DistillationBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        chosen = [self._examples[self._next_index()] for _ in range(self._identity["batch_size"])]
        return make_features(chosen[self._rows], **self._lengths)

    def get_state(self) -> dict[str, Any]:
        return {**self._identity, "epoch": self._epoch, "position": self._position}

    def set_state(self, state: Mapping[str, Any]) -> None:
        for key, value in self._identity.items():
            if state.get(key) != value:
                raise ValueError(
                    f"distillation data state: {key} is {state.get(key)!r} in the "
                    f"checkpoint but {value!r} in this run; resume with the same "
                    "store, formats, BATCH_SIZE and SEED"
                )
        self._epoch, self._position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self._epoch)

    def log_scalars(self) -> dict[str, float]:
        return {"train/epoch": self._epoch + self._position / len(self._order)}
