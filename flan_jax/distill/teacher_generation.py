"""Producer (b) of the teacher store: sample a local flan_jax teacher, keep correct samples.

For every question the teacher is prompted in one format (zero-shot CoT by default) and
sampled ``num_samples`` times at ``temperature`` by :class:`flan_jax.inference.Predictor`
(its EOS rule makes the completions); a sample is kept when its final answer
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
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from flan_jax.distill import formats
from flan_jax.distill.teacher_store import TeacherStoreWriter
from flan_jax.evaluation import answers
from flan_jax.evaluation.math_datasets import MathExample
from flan_jax.inference import DecodeConfig, Predictor, pad_token_rows
from flan_jax.models.interface import Model

# (prompt token rows, rng) -> for each prompt, its sampled completions (ids before EOS).
SampleFn = Callable[[Sequence[Sequence[int]], jax.Array], list[list[np.ndarray]]]
AnswerCheck = Callable[[str, str], bool]

# The teacher's default sampling: 4 samples per question at temperature 0.5 (the paper: about
# 40 at 0.5), 16 questions per sampling call.
TEACHER_SAMPLING = DecodeConfig(
    method="sample",
    num_samples=4,
    temperature=0.5,
    max_decode_len=128,
    max_input_len=256,
    batch_size=16,
)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How the teacher is sampled and what is stored of it.

    Attributes:
      decode: the sampling: ``decode.num_samples`` samples per question at
        ``decode.temperature``, ``decode.batch_size`` questions per sampling call,
        completions of at most ``decode.max_decode_len`` tokens, prompts cut to
        ``decode.max_input_len`` tokens, seeded by ``decode.seed``.
      store_top_k: entries of the teacher distribution stored per position (the paper: 5).
      format_name: the prompt format, one of ``flan_jax.distill.formats.FORMATS``
        (zero-shot formats only: the prompt of an item must not depend on a pool).
    """

    decode: DecodeConfig = TEACHER_SAMPLING
    store_top_k: int = 5
    format_name: str = formats.ZS_COT

    def __post_init__(self) -> None:
        if self.store_top_k < 1:
            raise ValueError(f"GenerationConfig.store_top_k must be >= 1; got {self.store_top_k}")
        if self.format_name not in (formats.ZS_COT, formats.ZS_ANSWER_ONLY):
            raise ValueError(
                "GenerationConfig.format_name must be 'zs_cot' or "
                f"'zs_answer_only'; got {self.format_name!r}"
            )


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


def make_sampler(predictor: Predictor) -> SampleFn:
    """The default sampler: the predictor's completions, as a list per prompt."""

    def sample(prompt_rows: Sequence[Sequence[int]], rng: jax.Array) -> list[list[np.ndarray]]:
        completions = predictor.predict_tokens(prompt_rows, rng=rng)
        if predictor.config.num_samples == 1:  # one array per prompt
            return [[tokens] for tokens in cast(list[np.ndarray], completions)]
        return cast(list[list[np.ndarray]], completions)  # num_samples arrays per prompt

    return sample


def make_top_k_scorer(model: Model, params: Any, k: int):
    """``(inputs [b, n], tokens [b, L]) -> (ids, log-probs [b, L, k], sampled log-prob [b, L])``.

    The teacher is run teacher-forced on the tokens; log-probs are at temperature 1.
    """

    @jax.jit
    def score(teacher_params, inputs, targets):
        batch = model.make_scoring_batch(inputs, targets)
        hidden = model.hidden_states(teacher_params, batch)
        logits = hidden @ model.output_kernel(teacher_params)
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        top_logprobs, top_ids = jax.lax.top_k(logprobs, k)  # [b, L, k]
        chosen = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
        return top_ids, top_logprobs, chosen

    return lambda inputs, targets: score(params, jnp.asarray(inputs), jnp.asarray(targets))


@dataclasses.dataclass(frozen=True)
class _Sample:
    """One sampled completion of question ``item_index`` of a batch."""

    item_index: int
    sample_index: int
    tokens: np.ndarray
    text: str


def _store_kept(
    writer: TeacherStoreWriter,
    score,
    batch_items: Sequence[MathExample],
    prompts: Sequence[str],
    prompt_rows: Sequence[Sequence[int]],
    kept: Sequence[_Sample],
    generation: GenerationConfig,
) -> None:
    """Scores the kept samples with the teacher and appends them to the store."""
    if not kept:
        return
    bucket = generation.decode.length_bucket
    top_ids, top_logprobs, chosen = map(
        np.asarray,
        score(
            pad_token_rows([prompt_rows[s.item_index] for s in kept], length_multiple=bucket),
            # 1-D int arrays: token rows, though ndarray is not a typed Sequence[int].
            pad_token_rows(
                cast("list[Sequence[int]]", [s.tokens for s in kept]), length_multiple=bucket
            ),
        ),
    )
    for row, sample in enumerate(kept):
        item = batch_items[sample.item_index]
        length = len(sample.tokens)
        writer.add(
            f"{item.id}/{sample.sample_index}",
            sample.tokens,
            top_ids[row, :length],
            top_logprobs[row, :length],
            token_logprobs=chosen[row, :length],
            metadata={
                "question": item.question,
                "answer": item.answer,
                "text": sample.text,
                "inputs": prompts[sample.item_index],
                "format": generation.format_name,
                "question_id": item.id,
                "sample": sample.sample_index,
                "source": item.source,
            },
        )


def generate_teacher_store(
    *,
    model: Model,
    params: Any,
    vocabulary: seqio.SentencePieceVocabulary,
    examples: Sequence[MathExample],
    writer: TeacherStoreWriter,
    generation: GenerationConfig = GenerationConfig(),
    sample_fn: SampleFn | None = None,
    is_correct: AnswerCheck = answers.answers_match,
    format_config: formats.FormatConfig = formats.FormatConfig(),
) -> GenerationStats:
    """Samples the teacher on every question and stores the correct samples' top-k.

    Args:
      model: the teacher model.
      params: the teacher's parameters.
      vocabulary: the teacher's vocabulary.
      examples: the questions with their gold answers.
      writer: an open store writer created with ``vocabulary=teacher_vocabulary(...)``.
      generation: sampling and storage options.
      sample_fn: replaces the teacher's sampler (e.g. in tests); default
        :func:`make_sampler` of the teacher's :class:`~flan_jax.inference.Predictor`.
      is_correct: ``is_correct(completion text, gold answer)``.
      format_config: the prompt wording.

    Returns:
      The run's :class:`GenerationStats`.
    """
    predictor = Predictor(model, params, vocabulary, generation.decode)
    sample_fn = sample_fn or make_sampler(predictor)
    score = make_top_k_scorer(model, params, generation.store_top_k)
    stats = GenerationStats()
    rng = jax.random.key(generation.decode.seed)
    for start in range(0, len(examples), generation.decode.batch_size):
        batch_items = list(examples[start : start + generation.decode.batch_size])
        prompts = [
            formats.render_inputs(item, generation.format_name, config=format_config)
            for item in batch_items
        ]
        prompt_rows = predictor.tokenize(prompts)
        samples = [
            _Sample(i, j, np.asarray(tokens, np.int32), predictor.detokenize(tokens))
            for i, item_samples in enumerate(sample_fn(prompt_rows, jax.random.fold_in(rng, start)))
            for j, tokens in enumerate(item_samples)
        ]
        kept = [s for s in samples if is_correct(s.text, batch_items[s.item_index].answer)]
        _store_kept(writer, score, batch_items, prompts, prompt_rows, kept, generation)
        per_item = np.bincount([s.item_index for s in kept], minlength=len(batch_items))
        stats.num_questions += len(batch_items)
        stats.num_samples += len(samples)
        stats.num_kept += len(kept)
        stats.correct_per_question += [int(c) for c in per_item]
    writer.flush()
    return stats
