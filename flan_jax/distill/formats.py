"""The four CoT-specialisation data formats, and their per-item seeded mixture.

Each format is a (inputs -> targets) pair; `q`, `x`, `r` are the item's question, canonical
answer and cleaned rationale, primes mark a demonstration's:

    zs_answer_only:   "Q: {q} A:"                             -> "The answer is {x}"
    zs_cot:           "Q: {q} A: Let's think step by step."   -> "{r} The answer is {x}."
    icl_answer_only:  4 x "Q: {q'} A: The answer is {x'}", then the zs_answer_only input
                                                              -> "The answer is {x}"
    icl_cot:          4 x "Q: {q'} A: Let's think step by step. {r'} The answer is {x'}.",
                      then the zs_cot input                   -> "{r} The answer is {x}."

Demonstrations are joined by a blank line. Rationales lose their GSM8K calculator
annotations (`48/2 = <<48/2=24>>24` -> `48/2 = 24`) and their line breaks become sentence
breaks (the T5 SentencePiece vocabulary has no newline). Answers use their canonical spelling.

In a mixture, each item's format and demonstrations are drawn from an RNG that depends only
on (seed, item id) (`flan_jax.tasks.templates.example_rng`), so an item renders the same
way in every process and after every resume, and resampling happens per item rather than
once per data set. Demonstrations come from a training pool and never include the item
itself, whether by id or by (normalised) question.

Worked example (zero-shot CoT, GSM8K train row 0):

    inputs:  "Q: Natalia sold clips to 48 of her friends in April, ... in April and May? A:
              Let's think step by step."
    targets: "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in
              April and May. The answer is 72."

For sample matching, turn a teacher completion back into a rationale and render it in any
format: `dataclasses.replace(example, rationale=rationale_from_completion(sample))`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flan_jax.evaluation.answers import strip_calculator_annotations
from flan_jax.evaluation.math_datasets import MathExample
from flan_jax.evaluation.splits import normalise_question
from flan_jax.tasks.templates import example_rng

ZS_ANSWER_ONLY = "zs_answer_only"
ZS_COT = "zs_cot"
ICL_ANSWER_ONLY = "icl_answer_only"
ICL_COT = "icl_cot"
FORMATS = (ZS_ANSWER_ONLY, ZS_COT, ICL_ANSWER_ONLY, ICL_COT)
_COT_FORMATS = (ZS_COT, ICL_COT)
_ICL_FORMATS = (ICL_ANSWER_ONLY, ICL_COT)
# Namespace of the per-item RNG, so formats draw independently of template rendering.
_RNG_NAMESPACE = "distill_formats"


@dataclasses.dataclass(frozen=True)
class FormatConfig:
    """How the formats are written.

    Attributes:
      num_demonstrations: in-context demonstrations per in-context item (the paper uses 4).
      question_prefix: written before each question.
      answer_prefix: written after each question, before the answer or the CoT trigger.
      cot_trigger: opens every chain of thought, in demonstrations and zero-shot CoT inputs.
      answer_sentence: the answer statement; `{answer}` is the canonical answer.
      demonstration_separator: between demonstrations and before the item's question.
    """

    num_demonstrations: int = 4
    question_prefix: str = "Q: "
    answer_prefix: str = "A:"
    cot_trigger: str = "Let's think step by step."
    answer_sentence: str = "The answer is {answer}"
    demonstration_separator: str = "\n\n"

    def __post_init__(self):
        if self.num_demonstrations < 1:
            raise ValueError(
                f"FormatConfig.num_demonstrations must be >= 1; got {self.num_demonstrations}."
            )
        if "{answer}" not in self.answer_sentence:
            raise ValueError(
                "FormatConfig.answer_sentence must contain '{answer}'; got "
                f"{self.answer_sentence!r}."
            )


@dataclasses.dataclass(frozen=True)
class FormattedExample:
    """One rendered training or evaluation example.

    Attributes:
      inputs: the encoder text.
      targets: the decoder text.
      format: one of `FORMATS`.
      id: the item's `MathExample.id`.
      answer: the canonical gold answer (for scoring predictions).
      demonstration_ids: ids of the in-context demonstrations, in order (empty if zero-shot).
    """

    inputs: str
    targets: str
    format: str
    id: str
    answer: str
    demonstration_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The feature dict exported to JSONL or fed to a seqio source."""
        return dataclasses.asdict(self) | {"demonstration_ids": list(self.demonstration_ids)}


def clean_rationale(rationale: str) -> str:
    """Calculator annotations removed, lines made sentences and joined by spaces.

    `"He writes 3*2=<<3*2=6>>6 pages a week\nSo 6*52=<<6*52=312>>312."` ->
    `"He writes 3*2=6 pages a week. So 6*52=312."` (GSM8K lines often lack a final period,
    and without the line break the sentences would run together).
    """
    text = strip_calculator_annotations(rationale)
    lines = (" ".join(line.split()) for line in text.splitlines())
    return " ".join(line if line[-1] in ".!?:;" else f"{line}." for line in lines if line)


def rationale_from_completion(completion: str, config: FormatConfig = FormatConfig()) -> str:
    """A CoT completion without its final answer sentence (and without the CoT trigger).

    `"Let's think step by step. 3 + 4 = 7. The answer is 7."` -> `"3 + 4 = 7."`. Raises
    ValueError when the completion has no answer sentence, since then it has no answer to
    check or train on.
    """
    prefix = config.answer_sentence.split("{answer}")[0]
    text = completion.strip()
    if text.startswith(config.cot_trigger):
        text = text[len(config.cot_trigger) :]
    start = text.rfind(prefix)
    if start < 0:
        raise ValueError(f"The completion has no answer sentence {prefix!r}: {completion[-80:]!r}.")
    return text[:start].strip()


def _answer_statement(example: MathExample, config: FormatConfig) -> str:
    return config.answer_sentence.format(answer=example.answer)


def _cot_target(example: MathExample, config: FormatConfig) -> str:
    if not example.rationale:
        raise ValueError(f"Example {example.id!r} has no rationale; CoT formats need one.")
    return f"{clean_rationale(example.rationale)} {_answer_statement(example, config)}."


def _question(example: MathExample, config: FormatConfig, cot: bool) -> str:
    text = f"{config.question_prefix}{' '.join(example.question.split())} {config.answer_prefix}"
    return f"{text} {config.cot_trigger}" if cot else text


def _target(example: MathExample, config: FormatConfig, cot: bool) -> str:
    return _cot_target(example, config) if cot else _answer_statement(example, config)


def render_inputs(
    example: MathExample,
    format_name: str,
    *,
    demonstrations: Sequence[MathExample] = (),
    config: FormatConfig = FormatConfig(),
) -> str:
    """The encoder text of `example` in one format; the item itself needs no rationale.

    Args:
      example: the item (an evaluation problem may have only a question and an answer).
      format_name: one of `FORMATS`.
      demonstrations: the in-context demonstrations (exactly `config.num_demonstrations` for
        in-context formats, none for zero-shot formats).
      config: the wording.
    """
    if format_name not in FORMATS:
        raise ValueError(f"Unknown format {format_name!r}; expected one of {FORMATS}.")
    expected = config.num_demonstrations if format_name in _ICL_FORMATS else 0
    if len(demonstrations) != expected:
        raise ValueError(
            f"Format {format_name!r} takes {expected} demonstrations; got "
            f"{len(demonstrations)} for example {example.id!r}."
        )
    cot = format_name in _COT_FORMATS
    blocks = [
        f"{_question(demo, config, cot)} {_target(demo, config, cot)}" for demo in demonstrations
    ]
    blocks.append(_question(example, config, cot))
    return config.demonstration_separator.join(blocks)


def render_example(
    example: MathExample,
    format_name: str,
    *,
    demonstrations: Sequence[MathExample] = (),
    config: FormatConfig = FormatConfig(),
) -> FormattedExample:
    """Renders one training example (inputs and targets) in one format.

    Args are those of `render_inputs`; CoT formats need `example.rationale`.
    """
    inputs = render_inputs(example, format_name, demonstrations=demonstrations, config=config)
    return FormattedExample(
        inputs=inputs,
        targets=_target(example, config, format_name in _COT_FORMATS),
        format=format_name,
        id=example.id,
        answer=example.answer,
        demonstration_ids=tuple(demo.id for demo in demonstrations),
    )


class DemonstrationPool:
    """Training examples to draw in-context demonstrations from, excluding the item itself."""

    def __init__(self, examples: Sequence[MathExample]):
        self._examples = tuple(examples)
        self._with_rationale = np.array(
            [i for i, e in enumerate(self._examples) if e.rationale], dtype=np.int64
        )
        self._everyone = np.arange(len(self._examples), dtype=np.int64)
        self._positions_by_key: dict[str, list[int]] = {}
        for position, example in enumerate(self._examples):
            for key in self._exclusion_keys(example):
                self._positions_by_key.setdefault(key, []).append(position)

    @staticmethod
    def _exclusion_keys(example: MathExample) -> tuple[str, str]:
        return f"id\x1f{example.id}", f"q\x1f{normalise_question(example.question)}"

    def __len__(self) -> int:
        return len(self._examples)

    def sample(
        self, example: MathExample, count: int, rng: np.random.Generator, *, need_rationale: bool
    ) -> list[MathExample]:
        """`count` distinct pool examples, none of them `example` (by id or question).

        Args:
          example: the item the demonstrations are for.
          count: how many to draw.
          rng: the item's generator.
          need_rationale: draw only from examples with a rationale (CoT demonstrations).
        """
        candidates = self._with_rationale if need_rationale else self._everyone
        excluded = {
            p for key in self._exclusion_keys(example) for p in self._positions_by_key.get(key, ())
        }
        # Drawing `count + len(excluded)` distinct positions leaves at least `count` after
        # removing the excluded ones, in one draw whose result depends only on the rng.
        available = len(candidates) - int(np.isin(candidates, list(excluded)).sum())
        if available < count:
            kind = "with a rationale " if need_rationale else ""
            raise ValueError(
                f"The demonstration pool has {available} examples {kind}other "
                f"than {example.id!r}; {count} are needed."
            )
        draw = rng.choice(
            candidates, size=min(len(candidates), count + len(excluded)), replace=False
        )
        return [self._examples[p] for p in draw if p not in excluded][:count]


def _check_ratios(ratios: Mapping[str, float]) -> tuple[tuple[str, ...], np.ndarray]:
    unknown = sorted(set(ratios) - set(FORMATS))
    if unknown:
        raise ValueError(f"Unknown format(s) {unknown} in ratios; expected keys from {FORMATS}.")
    names = tuple(name for name in FORMATS if ratios.get(name, 0) > 0)
    if any(ratio < 0 for ratio in ratios.values()) or not names:
        raise ValueError(f"Format ratios must be >= 0 with a positive sum; got {dict(ratios)}.")
    weights = np.array([ratios[name] for name in names], dtype=np.float64)
    return names, weights / weights.sum()


def render_mixed_example(
    example: MathExample,
    *,
    pool: DemonstrationPool,
    ratios: Mapping[str, float],
    seed: int,
    config: FormatConfig = FormatConfig(),
) -> FormattedExample:
    """Renders an item in a format drawn by `ratios`, with demonstrations drawn per item.

    Args:
      example: the item.
      pool: the training examples demonstrations come from.
      ratios: relative weight of each format, e.g. `{"icl_cot": 1, "zs_cot": 1}`; missing
        formats get weight 0.
      seed: the mixture seed; with the item's id it fixes the format and demonstrations.
      config: the wording.
    """
    names, probabilities = _check_ratios(ratios)
    rng = example_rng(seed, _RNG_NAMESPACE, example.id)
    format_name = names[int(rng.choice(len(names), p=probabilities))]
    demonstrations: Sequence[MathExample] = ()
    if format_name in _ICL_FORMATS:
        demonstrations = pool.sample(
            example, config.num_demonstrations, rng, need_rationale=format_name in _COT_FORMATS
        )
    return render_example(example, format_name, demonstrations=demonstrations, config=config)


def render_mixed(
    examples: Sequence[MathExample],
    *,
    pool: Sequence[MathExample] | None = None,
    ratios: Mapping[str, float],
    seed: int,
    config: FormatConfig = FormatConfig(),
) -> list[FormattedExample]:
    """`render_mixed_example` over a data set; the pool defaults to the examples themselves."""
    demonstration_pool = DemonstrationPool(examples if pool is None else pool)
    return [
        render_mixed_example(
            example, pool=demonstration_pool, ratios=ratios, seed=seed, config=config
        )
        for example in examples
    ]
