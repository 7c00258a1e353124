"""Evaluation suites: what `flan-jax eval` and the trainer's evaluation hook score.

A suite is a list of units (one subject, task, language or data set each), a way to load a
unit's prompts, to score its predictions, and to combine the unit results into benchmark
scores and an average. The model is reached only through a predict function (prompts ->
completions), so this module needs no JAX; `flan_jax.evaluation.runner` runs the units
(progress, stored results, resume) and `flan_jax.inference.Predictor.predict` is the
predict function of every caller.

A suite is named by a spec, `NAME[:ITEM,ITEM,...]`:

- `flan_t5`: the six Flan-T5 settings (`flan_t5_suite`); `flan_t5:bbh_cot,mmlu_direct` picks
  settings and `flan_t5:mgsm_cot/en` one subset of a setting. Average: the normalized
  average (all six settings only).
- `math`: GSM8K, SVAMP, MultiArith and ASDiv with the 8-shot CoT prompt of Wei et al.
  (the exemplars MGSM uses too), accuracy of the final answer (`selection.count_correct`);
  `math:gsm8k,svamp` picks data sets. Average: the mean accuracy.
- `tasks:NAME,...`: registered seqio tasks or mixtures, scored by their own metric_fns
  (`flan_jax.evaluation.task_suite`). Average: the mean of the tasks' first metric.
- `heldout_clusters[:CLUSTER,...|demo/CLUSTER]`: FLAN 2021's leave-one-cluster-out
  evaluation, a benchmark per held-out cluster (its zero-shot tasks);
  `optiml[:demo][,LEVEL...]`: OPT-IML's three generalization levels, a benchmark per level.
  Both in `task_suite`, on the registered task catalog.

Worked example (no model needed):

    suite = make_suite("math:gsm8k", paths=paths, max_examples=2)
    [unit.key for unit in suite.units()]            # ["gsm8k/test"]
    data = suite.load(suite.units()[0])             # data.prompts: 2 eight-shot prompts
    scores = suite.score(suite.units()[0], data, ["... The answer is 72.", "no idea"])
    scores["accuracy"]                              # 50.0 when the first gold is 72
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from flan_jax.errors import ConfigError
from flan_jax.evaluation import flan_t5_data, flan_t5_suite, math_datasets, selection
from flan_jax.tasks import data_paths

Scores = dict[str, float]
# Keys of a unit's scores that describe its data rather than the model.
_NOT_SCORES = ("num_examples", "chance")


@dataclasses.dataclass(frozen=True)
class Unit:
    """One piece of a suite, scored from one predict call and stored on its own.

    Attributes:
      benchmark: the benchmark it counts towards, e.g. "bbh_cot", "gsm8k", a task name.
      subset: its subject / task / language, e.g. "navigate"; the benchmark's name when
        the benchmark has a single unit.
    """

    benchmark: str
    subset: str

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.subset}"


@dataclasses.dataclass(frozen=True)
class UnitData:
    """A unit's prompts and whatever its scorer needs (examples in the prompts' order)."""

    prompts: list[str]
    examples: Sequence[Any]


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """One benchmark's result.

    Attributes:
      title: the display name, e.g. "BBH-CoT".
      metric: the breakdown key that is its score, e.g. "exact_match".
      score: 0-100.
      num_examples: examples scored.
      breakdown: per subset: its metrics and "num_examples" (one entry for single-unit
        benchmarks, holding every metric of the task).
      normalized: chance 0 / perfect 100 (the Flan-T5 suite), else None.
    """

    title: str
    metric: str
    score: float
    num_examples: int
    breakdown: dict[str, Scores]
    normalized: float | None = None


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    """Every benchmark of a suite and their average (None where the suite defines none)."""

    suite: str
    benchmarks: dict[str, BenchmarkResult]
    average_name: str
    average: float | None

    @property
    def num_examples(self) -> int:
        return sum(b.num_examples for b in self.benchmarks.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmarks": {name: dataclasses.asdict(b) for name, b in self.benchmarks.items()},
            "average_name": self.average_name,
            "average": self.average,
            "num_examples": self.num_examples,
        }

    def scalars(self) -> dict[str, float]:
        """Flat scalars for logs: `<benchmark>/<metric>` (each metric of a single-unit
        benchmark, the score otherwise) and `<suite>/<average_name>` when there is one."""
        out: dict[str, float] = {}
        for name, result in self.benchmarks.items():
            if len(result.breakdown) == 1:
                row = next(iter(result.breakdown.values()))
                out.update({f"{name}/{k}": v for k, v in row.items() if k not in _NOT_SCORES})
            else:
                out[f"{name}/{result.metric}"] = result.score
        if self.average is not None:
            out[f"{self.suite.split(':', 1)[0]}/{self.average_name}"] = self.average
        return out


class Suite(abc.ABC):
    """A list of units, their loading and scoring, and how unit results combine.

    Loaded units are kept, so an evaluation every N training steps reads its files once.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._loaded: dict[Unit, UnitData] = {}

    @abc.abstractmethod
    def units(self) -> list[Unit]:
        """The units, in the order they are run."""

    @abc.abstractmethod
    def _load(self, unit: Unit) -> UnitData: ...

    @abc.abstractmethod
    def score(self, unit: Unit, data: UnitData, predictions: Sequence[str]) -> Scores:
        """The unit's metrics (0-100) and "num_examples"."""

    @abc.abstractmethod
    def combine(self, results: Mapping[Unit, Scores]) -> SuiteResult:
        """The suite's result from every unit's `score`."""

    def check_data(self) -> None:
        """Raises `MissingDataError` naming the first absent file; the default loads a unit."""
        for unit in self.units():
            self.load(unit)

    def load(self, unit: Unit) -> UnitData:
        if unit not in self._loaded:
            self._loaded[unit] = self._load(unit)
        return self._loaded[unit]


def _cut(items: list, max_examples: int | None) -> list:
    return items if max_examples is None else items[:max_examples]


class FlanT5Suite(Suite):
    """The Flan-T5 benchmark suite, subset by subset (see `flan_t5_suite`)."""

    def __init__(
        self,
        spec: str,
        *,
        items: Sequence[str],
        paths: data_paths.DataPaths | None,
        max_examples: int | None,
        seed: int = 0,
    ) -> None:
        super().__init__(spec)
        self.paths, self.max_examples, self.seed = paths, max_examples, seed
        self._units: list[Unit] = []
        for item in items or flan_t5_suite.SETTING_NAMES:
            setting, _, subset = item.partition("/")
            if setting not in flan_t5_suite.SETTINGS:
                raise ConfigError(
                    f"suite {spec!r}: unknown Flan-T5 setting {setting!r}; known: "
                    f"{', '.join(flan_t5_suite.SETTING_NAMES)} (optionally /SUBSET)."
                )
            catalog = flan_t5_data.benchmark_subsets(flan_t5_suite.SETTINGS[setting].benchmark)
            if subset and subset not in catalog:
                raise ConfigError(
                    f"suite {spec!r}: {setting} has no subset {subset!r}; known: "
                    f"{', '.join(catalog)}."
                )
            self._units += [Unit(setting, s) for s in ([subset] if subset else catalog)]

    def units(self) -> list[Unit]:
        return list(self._units)

    def check_data(self) -> None:
        for unit in self._units:
            benchmark = flan_t5_suite.SETTINGS[unit.benchmark].benchmark
            flan_t5_data.check_subset_files(benchmark, unit.subset, paths=self.paths)

    def _load(self, unit: Unit) -> UnitData:
        examples = flan_t5_suite.load_examples(
            unit.benchmark,
            unit.subset,
            paths=self.paths,
            max_examples=self.max_examples,
            seed=self.seed,
        )
        return UnitData([e.inputs for e in examples], examples)

    def score(self, unit: Unit, data: UnitData, predictions: Sequence[str]) -> Scores:
        return flan_t5_suite.score_predictions(unit.benchmark, data.examples, predictions)

    def combine(self, results: Mapping[Unit, Scores]) -> SuiteResult:
        by_setting: dict[str, dict[str, Scores]] = {}
        for unit, scores in results.items():
            by_setting.setdefault(unit.benchmark, {})[unit.subset] = scores
        scored = {s: flan_t5_suite.combine_subsets(s, rows) for s, rows in by_setting.items()}
        complete = set(flan_t5_suite.SETTING_NAMES) <= set(scored)
        benchmarks = {
            name: BenchmarkResult(
                title=b.title,
                metric=b.metric,
                score=b.score,
                num_examples=b.num_examples,
                breakdown=b.breakdown,
                normalized=b.normalized,
            )
            for name, b in scored.items()
        }
        average = flan_t5_suite.normalized_average(scored) if complete else None
        return SuiteResult(self.spec, benchmarks, "normalized_average", average)


@dataclasses.dataclass(frozen=True)
class MathSet:
    """Where one math evaluation set lives: `<source dir>/<file>`, read by `loader`."""

    source: str
    file: str
    loader: str
    how_to_get: str


# The test sets the CoT-specialization work reports (Fu et al. 2023): GSM8K's test split and
# the three out-of-distribution sets, each in the file its authors publish.
MATH_SETS: dict[str, MathSet] = {
    "gsm8k": MathSet(
        "gsm8k", "test.jsonl", "gsm8k", "Get test.jsonl from github.com/openai/grade-school-math."
    ),
    "svamp": MathSet(
        "svamp", "SVAMP.json", "svamp", "Get SVAMP.json from github.com/arkilpatel/SVAMP."
    ),
    "multiarith": MathSet(
        "multiarith",
        "MultiArith.json",
        "multiarith",
        "Get MultiArith.json from github.com/kojima-takeshi188/zero_shot_cot (dataset/).",
    ),
    "asdiv": MathSet(
        "asdiv", "ASDiv.xml", "asdiv", "Get ASDiv.xml from github.com/chaochun/nlu-asdiv-dataset."
    ),
}


class MathSuite(Suite):
    """Math word problems, 8-shot CoT, accuracy of the final answer; one unit per data set."""

    def __init__(
        self,
        spec: str,
        *,
        items: Sequence[str],
        paths: data_paths.DataPaths | None,
        max_examples: int | None,
    ) -> None:
        super().__init__(spec)
        unknown = [name for name in items if name not in MATH_SETS]
        if unknown:
            raise ConfigError(
                f"suite {spec!r}: unknown math set(s) {unknown}; known: {', '.join(MATH_SETS)}."
            )
        self.names = list(items or MATH_SETS)
        self.paths, self.max_examples = paths, max_examples

    def units(self) -> list[Unit]:
        return [Unit(name, name) for name in self.names]

    def _path(self, name: str) -> str:
        math_set = MATH_SETS[name]
        directory = data_paths.resolve_data_paths(self.paths).source_dir(math_set.source)
        return data_paths.require_path(
            os.path.join(directory, math_set.file),
            dataset=name,
            how_to_get=f"{math_set.how_to_get} (folder: {directory}).",
        )

    def check_data(self) -> None:
        for name in self.names:
            self._path(name)
        flan_t5_data.source_file("cot_exemplars", flan_t5_data.MATH_COT_EXEMPLARS, paths=self.paths)

    def _load(self, unit: Unit) -> UnitData:
        loader = MATH_SETS[unit.benchmark].loader
        examples = _cut(
            math_datasets.load_math_dataset(loader, self._path(unit.benchmark)), self.max_examples
        )
        exemplars = flan_t5_data.read_math_cot_exemplars(
            flan_t5_data.source_file(
                "cot_exemplars", flan_t5_data.MATH_COT_EXEMPLARS, paths=self.paths
            )
        )
        prompts = [flan_t5_data.mgsm_prompt(exemplars, e.question) for e in examples]
        return UnitData(prompts, examples)

    def score(self, unit: Unit, data: UnitData, predictions: Sequence[str]) -> Scores:
        correct = selection.count_correct(data.examples, predictions)
        total = len(data.examples)
        return {"accuracy": 100.0 * correct / max(total, 1), "num_examples": float(total)}

    def combine(self, results: Mapping[Unit, Scores]) -> SuiteResult:
        benchmarks = {
            unit.benchmark: BenchmarkResult(
                title=unit.benchmark,
                metric="accuracy",
                score=scores["accuracy"],
                num_examples=int(scores["num_examples"]),
                breakdown={unit.subset: dict(scores)},
            )
            for unit, scores in results.items()
        }
        average = float(np.mean([b.score for b in benchmarks.values()])) if benchmarks else None
        return SuiteResult(self.spec, benchmarks, "mean_accuracy", average)


SUITE_NAMES = ("flan_t5", "math", "tasks", "heldout_clusters", "optiml")
# The suites of registered seqio tasks (`task_suite`): the task catalog must be registered.
TASK_SUITES = ("tasks", "heldout_clusters", "optiml")


def parse_suite_spec(spec: str) -> tuple[str, list[str]]:
    """`"math:gsm8k,svamp"` -> `("math", ["gsm8k", "svamp"])`; `"flan_t5"` -> `("flan_t5", [])`."""
    name, _, rest = spec.partition(":")
    if name not in SUITE_NAMES:
        raise ConfigError(
            f"unknown suite {name!r} in {spec!r}; known: {', '.join(SUITE_NAMES)} "
            "(e.g. flan_t5, math:gsm8k, tasks:NAME,NAME)."
        )
    items = [item.strip() for item in rest.split(",") if item.strip()]
    if name == "tasks" and not items:
        raise ConfigError(f"suite {spec!r} names no task: write tasks:NAME[,NAME...].")
    return name, items


def make_suite(
    spec: str,
    *,
    paths: data_paths.DataPaths | None = None,
    max_examples: int | None = None,
    task_options: Mapping[str, Any] | None = None,
) -> Suite:
    """The suite a spec names.

    Args:
      spec: `NAME[:ITEM,...]` (module doc).
      paths: data locations of the file-based suites (None: resolved when read).
      max_examples: keep the first N examples of each unit (quick runs); None keeps all.
      task_options: for `tasks:`, `split` and `task_feature_lengths` (see `TaskSuite`).
    """
    name, items = parse_suite_spec(spec)
    if name in TASK_SUITES:
        from flan_jax.evaluation import task_suite  # seqio and TensorFlow: only when asked

        builders: dict[str, Callable[..., Suite]] = {
            "tasks": task_suite.TaskSuite,
            "heldout_clusters": task_suite.make_heldout_clusters_suite,
            "optiml": task_suite.make_optiml_suite,
        }
        return builders[name](
            spec, items=items, max_examples=max_examples, **dict(task_options or {})
        )
    if name == "math":
        return MathSuite(spec, items=items, paths=paths, max_examples=max_examples)
    return FlanT5Suite(spec, items=items, paths=paths, max_examples=max_examples)
