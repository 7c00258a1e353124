"""Producer (b) of the teacher store: sample a local flan_jax teacher, keep correct samples.

For every question the teacher is prompted in one format (zero-shot CoT by default) and
sampled ``num_samples`` times at ``temperature``; a sample is kept when its final answer
equals the gold answer (:func:`flan_jax.evaluation.answers.answers_match`), as the paper kept
code-davinci-002's correct samples. For each kept sample the teacher is run once more,
teacher-forced on the sample, and its top-k ``(id, log-prob)`` at every target position (at
temperature 1, whatever the sampling temperature) goes into the store with the sample's
tokens (up to, not including, EOS) and metadata: ``question``, ``answer``, ``text`` (the
decoded completion), ``inputs`` (the prompt), ``format``, ``question_id`` and ``sample``.

The store's vocabulary is the teacher's: its SentencePiece pieces by id, then
``<extra_id_N>`` and ``<unused_N>`` names up to the model's (padded) vocabulary size, so every
id a top-k can hold has a distinct string for the alignment.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from flan_jax.distill import formats, targets
from flan_jax.distill.teacher_store import TeacherStoreWriter
from flan_jax.evaluation import answers
from flan_jax.evaluation.math_datasets import MathExample
from flan_jax.models import decoding, t5
from flan_jax.models.config import T5Config

EOS_ID = 1
# (encoder tokens [b, n], rng) -> sampled decoder tokens [b, L]
SampleFn = Callable[[np.ndarray, jax.Array], np.ndarray]
AnswerCheck = Callable[[str, str], bool]


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How the teacher is sampled.

    Attributes:
      num_samples: samples per question (the paper: about 40).
      temperature: sampling temperature (the paper: 0.5).
      top_k: entries of the teacher distribution stored per position (the paper: 5).
      max_decode_len: longest completion, in teacher tokens.
      max_input_len: prompts are cut to this many tokens.
      batch_size: prompts per sampling call (each is repeated ``num_samples`` times).
      format_name: the prompt format, one of ``flan_jax.distill.formats.FORMATS``
        (zero-shot formats only: the prompt of an item must not depend on a pool).
      seed: sampling seed.
    """

    num_samples: int = 4
    temperature: float = 0.5
    top_k: int = 5
    max_decode_len: int = 128
    max_input_len: int = 256
    batch_size: int = 16
    format_name: str = formats.ZS_COT
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_samples", "top_k", "max_decode_len", "max_input_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GenerationConfig.{name} must be >= 1; got "
                                 f"{getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"GenerationConfig.temperature must be > 0; got {self.temperature}")
        if self.format_name not in (formats.ZS_COT, formats.ZS_ANSWER_ONLY):
            raise ValueError("GenerationConfig.format_name must be 'zs_cot' or "
                             f"'zs_answer_only'; got {self.format_name!r}")


@dataclasses.dataclass
class GenerationStats:
    """Counts of a generation run; ``correct_per_question[i]`` is question i's kept samples."""

    num_questions: int = 0
    num_samples: int = 0
    num_kept: int = 0
    correct_per_question: list[int] = dataclasses.field(default_factory=list)

    @property
    def kept_rate(self) -> float:
        return self.num_kept / max(self.num_samples, 1)


def teacher_vocabulary(vocabulary: seqio.SentencePieceVocabulary, vocab_size: int) -> list[str]:
    """Distinct token strings for every id of a model with ``vocab_size`` outputs."""
    processor = vocabulary.tokenizer
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    extra = [f"<extra_id_{j}>" for j in range(vocabulary.extra_ids)]
    names = (pieces + extra)[:vocab_size]
    return names + [f"<unused_{i}>" for i in range(len(names), vocab_size)]


def make_sampler(config: T5Config, params: Any, generation: GenerationConfig) -> SampleFn:
    """The default sampler: ``decoding.temperature_sample`` of the teacher."""

    def sample(encoder_tokens: np.ndarray, rng: jax.Array) -> np.ndarray:
        result = decoding.temperature_sample(
            config, params, jnp.asarray(encoder_tokens), rng=rng,
            max_decode_len=generation.max_decode_len, temperature=generation.temperature)
        return np.asarray(result.tokens)

    return sample


def make_top_k_scorer(config: T5Config, params: Any, k: int):
    """``(encoder [b, n], tokens [b, L]) -> (ids, log-probs [b, L, k], sampled log-prob [b, L])``.

    The teacher is run teacher-forced on the tokens; log-probs are at temperature 1.
    """
    model = t5.EncoderDecoder(config)

    @jax.jit
    def score(teacher_params, encoder_tokens, decoder_targets):
        decoder_inputs = jnp.pad(decoder_targets[:, :-1], ((0, 0), (1, 0)))
        logits = model.apply({"params": teacher_params}, encoder_tokens, decoder_inputs)
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        top_logprobs, top_ids = jax.lax.top_k(logprobs, k)  # [b, L, k]
        chosen = jnp.take_along_axis(logprobs, decoder_targets[..., None], axis=-1)[..., 0]
        return top_ids, top_logprobs, chosen

    return lambda encoder_tokens, decoder_targets: score(params, encoder_tokens, decoder_targets)


def completion_length(tokens: np.ndarray) -> int:
    """Tokens before the first EOS (or padding 0, which ends a sample the same way)."""
    stops = np.flatnonzero(np.asarray(tokens) <= EOS_ID)
    return int(stops[0]) if len(stops) else len(tokens)


def _store_kept(writer, vocabulary, score, batch_items, prompts, encoder, samples, kept,
                generation: GenerationConfig) -> None:
    """Scores the kept samples with the teacher and appends them to the store."""
    rows = np.flatnonzero(kept)
    if not len(rows):
        return
    top_ids, top_logprobs, chosen = map(np.asarray, score(encoder[rows], samples[rows]))
    for out_row, row in enumerate(rows):
        item_index, sample_index = divmod(int(row), generation.num_samples)
        item = batch_items[item_index]
        length = completion_length(samples[row])
        writer.add(f"{item.id}/{sample_index}", samples[row, :length],
                   top_ids[out_row, :length], top_logprobs[out_row, :length],
                   token_logprobs=chosen[out_row, :length],
                   metadata={"question": item.question, "answer": item.answer,
                             "text": vocabulary.decode(samples[row, :length].tolist()),
                             "inputs": prompts[item_index], "format": generation.format_name,
                             "question_id": item.id, "sample": sample_index,
                             "source": item.source})


def generate_teacher_store(*, model_config: T5Config, params: Any,
                           vocabulary: seqio.SentencePieceVocabulary,
                           examples: Sequence[MathExample], writer: TeacherStoreWriter,
                           generation: GenerationConfig = GenerationConfig(),
                           sample_fn: SampleFn | None = None,
                           is_correct: AnswerCheck = answers.answers_match,
                           format_config: formats.FormatConfig = formats.FormatConfig(),
                           ) -> GenerationStats:
    """Samples the teacher on every question and stores the correct samples' top-k.

    Args:
      model_config: the teacher's config.
      params: the teacher's parameters.
      vocabulary: the teacher's vocabulary.
      examples: the questions with their gold answers.
      writer: an open store writer created with ``vocabulary=teacher_vocabulary(...)``.
      generation: sampling options.
      sample_fn: replaces the teacher's sampler (e.g. in tests); default
        :func:`make_sampler`.
      is_correct: ``is_correct(completion text, gold answer)``.
      format_config: the prompt wording.

    Returns:
      The run's :class:`GenerationStats`.
    """
    sample_fn = sample_fn or make_sampler(model_config, params, generation)
    score = make_top_k_scorer(model_config, params, generation.top_k)
    stats = GenerationStats()
    rng = jax.random.key(generation.seed)
    for start in range(0, len(examples), generation.batch_size):
        batch_items = list(examples[start:start + generation.batch_size])
        prompts = [formats.render_inputs(item, generation.format_name, config=format_config)
                   for item in batch_items]
        encoder = np.repeat(targets.encode_inputs(vocabulary, prompts, generation.max_input_len),
                            generation.num_samples, axis=0)  # [items * samples, n]
        samples = np.asarray(sample_fn(encoder, jax.random.fold_in(rng, start)), np.int32)
        texts = [vocabulary.decode(row[:completion_length(row)].tolist()) for row in samples]
        kept = np.array([is_correct(text, batch_items[i // generation.num_samples].answer)
                         for i, text in enumerate(texts)], bool)
        _store_kept(writer, vocabulary, score, batch_items, prompts, encoder, samples, kept,
                    generation)
        per_item = kept.reshape(len(batch_items), generation.num_samples).sum(-1)
        stats.num_questions += len(batch_items)
        stats.num_samples += len(samples)
        stats.num_kept += int(kept.sum())
        stats.correct_per_question += [int(c) for c in per_item]
    writer.flush()
    return stats
