"""The Flan-T5 benchmark suite: six scores, their breakdowns, and the normalized average.

The Flan-T5 paper (Chung et al. 2022, arXiv 2210.11416, section 2.3) evaluates held-out
benchmarks few-shot and summarises them as a "normalized average": the macro-average of six
scores, each normalized so that chance is 0 and a perfect score 100,

    normalized(score) = 100 * (score - chance) / (100 - chance),
    normalized_average = mean over the six settings of normalized(score),

the form of BIG-bench's "normalized preferred metric" (Srivastava et al. 2022). Offline we
could read section 2.3's list of the six scores but not the sentence that defines their
normalization, so this linear chance-0 / perfect-100 form is the issue's definition, not one
checked against the paper's text. A score below chance normalizes below 0.

- MMLU-Direct (`mmlu_direct`, 5-shot) and MMLU-CoT (`mmlu_cot`, 5-shot): accuracy on the
  answer letter (after "the answer is" for CoT), over all questions as Hendrycks et al.
  average them. Chance 25 (4 options).
- BBH-Direct (`bbh_direct`, 3-shot) and BBH-CoT (`bbh_cot`, 3-shot): exact match of the
  parsed answer (after "So the answer is" for CoT), mean over the 27 subtasks. Chance per
  task, below.
- TyDiQA-Direct (`tydiqa_direct`, 1-shot): SQuAD exact match, mean over the 8 languages (F1
  in the breakdown). Chance 0 (free text).
- MGSM-CoT (`mgsm_cot`, 8-shot): accuracy of the number after "the answer is", mean over the
  10 languages. Chance 0 (a free number).

BBH's chance per task is the mean over its items of 1/k, k the options a guess picks from:
the lettered options printed in the item, 2 for the True/False, Yes/No and valid/invalid
tasks, and 0 for free-form answers (Dyck brackets, sorted words, numbers); the benchmark's
chance is the mean over tasks, like its score. The catalog
(`flan_t5_benchmarks.yaml`) says which task is which; the counts come from the data.

BBH's exact match is strict string equality of the parsed answer with the target, as the BBH
authors score it; SQuAD's normalisation (`metrics.exact_match`) would erase Dyck answers,
which are all punctuation. Scoring is done by `flan_jax.evaluation.metrics`.

    from flan_jax.evaluation import flan_t5_suite
    result = flan_t5_suite.score_suite(predictor.predict, paths=paths)
    result.normalized_average                      # 31.4
    result.benchmarks["bbh_cot"].breakdown["navigate"]   # {"exact_match": 58.0, ...}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from flan_jax.evaluation import flan_t5_data, metrics
from flan_jax.evaluation.flan_t5_data import EvalExample
from flan_jax.tasks import data_paths

Predict = Callable[[list[str]], list[str]]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One of the six scored settings.

    Attributes:
      name: e.g. "mmlu_cot".
      benchmark: "mmlu", "bbh", "tydiqa" or "mgsm" (whose subsets it scores).
      title: the paper's name, e.g. "MMLU-CoT".
      metric: the breakdown key that is the setting's score.
      cot: whether the prompt asks for a chain of thought.
      micro_average: average over all examples (MMLU) rather than over subsets.
    """

    name: str
    benchmark: str
    title: str
    metric: str
    cot: bool
    micro_average: bool = False


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("mmlu_direct", "mmlu", "MMLU-Direct", "accuracy", cot=False, micro_average=True),
        Setting("mmlu_cot", "mmlu", "MMLU-CoT", "accuracy", cot=True, micro_average=True),
        Setting("bbh_direct", "bbh", "BBH-Direct", "exact_match", cot=False),
        Setting("bbh_cot", "bbh", "BBH-CoT", "exact_match", cot=True),
        Setting("tydiqa_direct", "tydiqa", "TyDiQA-Direct", "em", cot=False),
        Setting("mgsm_cot", "mgsm", "MGSM-CoT", "accuracy", cot=True),
    )
}
SETTING_NAMES = tuple(SETTINGS)

_ANSWER_MARKER_RE = re.compile(r"answer is\s*:?", re.IGNORECASE)
_LEADING_LETTER_RE = re.compile(r"^\(?([A-Z])\)?(?=$|[\s.):,])")


def get_setting(name: str) -> Setting:
    if name not in SETTINGS:
        raise ValueError(f"Unknown Flan-T5 suite setting {name!r}; known: {list(SETTINGS)}.")
    return SETTINGS[name]


def load_examples(
    setting: str,
    subset: str,
    *,
    paths: data_paths.DataPaths | None = None,
    max_examples: int | None = None,
    seed: int = 0,
) -> list[EvalExample]:
    """The prompts and golds of one subject / task / language of `setting`.

    Args:
      setting: one of `SETTING_NAMES`.
      subset: an MMLU subject, BBH task, TyDiQA language or MGSM language code.
      paths: data locations (None: resolved now from gin / the environment).
      max_examples: keep the first N examples (quick runs); None keeps all.
      seed: the TyDiQA exemplar draw's seed.
    """
    spec = get_setting(setting)
    if spec.benchmark == "mmlu":
        examples = flan_t5_data.load_mmlu(subset, cot=spec.cot, paths=paths)
    elif spec.benchmark == "bbh":
        examples = flan_t5_data.load_bbh(subset, cot=spec.cot, paths=paths)
    elif spec.benchmark == "tydiqa":
        examples = flan_t5_data.load_tydiqa(subset, paths=paths, seed=seed)
    else:
        examples = flan_t5_data.load_mgsm(subset, paths=paths)
    return examples[:max_examples] if max_examples is not None else examples


def _answer_after_marker(text: str) -> str | None:
    """The rest of the line after the last "answer is", without a final period; None without."""
    markers = list(_ANSWER_MARKER_RE.finditer(text))
    if not markers:
        return None
    return _first_line(text[markers[-1].end() :])


def _first_line(text: str) -> str:
    line = text.strip().split("\n", 1)[0].strip()
    return line[:-1].rstrip() if line.endswith(".") else line


def parse_choice_letter(text: str, *, letters: str = "ABCD") -> str:
    """The option letter (one of `letters`) a prediction picks, "" when none.

    `"B"`, `" (B)"`, `"B. 12 apples"`, `"... The answer is (B)."` -> `"B"`; `"I think"` -> `""`.
    The letter after the last "answer is" wins; otherwise the letter the text opens with.
    """
    marked = _answer_after_marker(text)
    match = _LEADING_LETTER_RE.match(marked if marked is not None else text.strip())
    return match.group(1) if match and match.group(1) in letters else ""


def parse_bbh_answer(text: str) -> str:
    """A BBH prediction's answer: after the last "answer is" if any, else the first line;
    without a final period. `"So the answer is (B)."` -> `"(B)"`; `"valid\\n\\nQ: ..."` ->
    `"valid"`."""
    marked = _answer_after_marker(text)
    return marked if marked is not None else _first_line(text)


def score_predictions(
    setting: str, examples: Sequence[EvalExample], predictions: Sequence[str]
) -> dict[str, float]:
    """The metrics of one subset's predictions (0-100), plus "num_examples" and "chance".

    The setting's score is the `Setting.metric` key ("accuracy", "exact_match" or "em").
    """
    spec = get_setting(setting)
    if len(examples) != len(predictions):
        raise ValueError(f"{setting}: {len(predictions)} predictions for {len(examples)} examples.")
    golds = [example.answers[0] for example in examples]
    if spec.benchmark == "mmlu":
        scores = metrics.accuracy(golds, [parse_choice_letter(p) for p in predictions])
    elif spec.benchmark == "bbh":
        # Strict equality (metrics.accuracy), not metrics.exact_match: see the module doc.
        parsed = [parse_bbh_answer(p) for p in predictions]
        scores = {"exact_match": metrics.accuracy(golds, parsed)["accuracy"]}
    elif spec.benchmark == "tydiqa":
        scores = metrics.squad(
            [list(example.answers) for example in examples],
            [_first_line(p) for p in predictions],
        )
    else:
        scores = metrics.cot_accuracy(golds, list(predictions))
    chance = 100.0 * float(np.mean([e.chance for e in examples])) if examples else 0.0
    return {**scores, "num_examples": float(len(examples)), "chance": chance}


@dataclasses.dataclass(frozen=True)
class BenchmarkScore:
    """One setting's result.

    Attributes:
      setting: e.g. "bbh_cot"; title: e.g. "BBH-CoT"; metric: the breakdown key scored.
      score: 0-100; chance: the score of a uniform guess; normalized: chance 0, perfect 100.
      num_examples: examples scored.
      breakdown: per subject / task / language: its metrics, "num_examples" and "chance".
    """

    setting: str
    title: str
    metric: str
    score: float
    chance: float
    normalized: float
    num_examples: int
    breakdown: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def normalize_score(score: float, chance: float) -> float:
    """`100 * (score - chance) / (100 - chance)`: chance -> 0, perfect -> 100."""
    if not 0.0 <= chance < 100.0:
        raise ValueError(f"chance must be in [0, 100), got {chance}.")
    return 100.0 * (score - chance) / (100.0 - chance)


def combine_subsets(setting: str, breakdown: Mapping[str, Mapping[str, float]]) -> BenchmarkScore:
    """A setting's score from its subsets' `score_predictions` results.

    MMLU averages over questions (weighted by subject size, as Hendrycks et al. report);
    the others average over tasks / languages. Chance is averaged the same way.
    """
    spec = get_setting(setting)
    if not breakdown:
        raise ValueError(f"{setting}: no subsets to combine.")
    rows = list(breakdown.values())
    weights = np.array([row["num_examples"] if spec.micro_average else 1.0 for row in rows])
    score = float(np.average([row[spec.metric] for row in rows], weights=weights))
    chance = float(np.average([row["chance"] for row in rows], weights=weights))
    return BenchmarkScore(
        setting=setting,
        title=spec.title,
        metric=spec.metric,
        score=score,
        chance=chance,
        normalized=normalize_score(score, chance),
        num_examples=int(sum(row["num_examples"] for row in rows)),
        breakdown={name: dict(row) for name, row in breakdown.items()},
    )


def normalized_average(benchmarks: Mapping[str, BenchmarkScore]) -> float:
    """The Flan-T5 normalized average: the mean of the six settings' normalized scores.

    Raises:
      ValueError: naming the settings missing (the average is defined over all six).
    """
    missing = [name for name in SETTING_NAMES if name not in benchmarks]
    if missing:
        raise ValueError(f"The normalized average needs all six settings; missing {missing}.")
    return float(np.mean([benchmarks[name].normalized for name in SETTING_NAMES]))


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    """Scores per setting and, when all six were scored, the normalized average."""

    benchmarks: dict[str, BenchmarkScore]
    normalized_average: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmarks": {name: b.to_dict() for name, b in self.benchmarks.items()},
            "normalized_average": self.normalized_average,
        }


def score_suite(
    predict: Predict,
    *,
    paths: data_paths.DataPaths | None = None,
    settings: Sequence[str] = SETTING_NAMES,
    subsets: Mapping[str, Sequence[str]] | None = None,
    max_examples_per_subset: int | None = None,
    seed: int = 0,
) -> SuiteResult:
    """Scores a text-to-text predictor on the suite.

    Args:
      predict: prompts -> completions, one per prompt (e.g. `inference.Predictor.predict`);
        called once per subset.
      paths: data locations (see `flan_t5_data`).
      settings: which of the six settings to score.
      subsets: per benchmark ("mmlu", "bbh", "tydiqa", "mgsm"), the subsets to score;
        unnamed benchmarks score the whole catalog, and a missing file is an error naming it.
      max_examples_per_subset: keep the first N examples of each subset (quick runs).
      seed: the TyDiQA exemplar draw's seed.

    Returns:
      The scores; `normalized_average` is None unless all six settings were scored.
    """
    subsets = dict(subsets or {})
    benchmarks = {}
    for setting in settings:
        spec = get_setting(setting)
        breakdown = {}
        for subset in subsets.get(spec.benchmark, flan_t5_data.benchmark_subsets(spec.benchmark)):
            examples = load_examples(
                setting, subset, paths=paths, max_examples=max_examples_per_subset, seed=seed
            )
            predictions = list(predict([example.inputs for example in examples]))
            breakdown[subset] = score_predictions(setting, examples, predictions)
        benchmarks[setting] = combine_subsets(setting, breakdown)
    average = normalized_average(benchmarks) if set(SETTING_NAMES) <= set(benchmarks) else None
    return SuiteResult(benchmarks, average)
