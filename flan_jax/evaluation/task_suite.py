"""The `tasks:NAME,...` suite: registered seqio tasks scored by their own metric_fns.

Each task is one unit: the first `max_examples` examples of `split` in source order (so
every evaluation of a run sees the same ones), their `inputs_pretokenized` text as the
prompts, and the task's `postprocess_fn` and predict metric_fns applied as
`seqio.Evaluator` applies them. Mixtures are expanded into their tasks that have `split`.

    suite = TaskSuite("tasks:demo__arith__zs_noopt", items=["demo__arith__zs_noopt"],
                      max_examples=50, task_feature_lengths={"inputs": 64, "targets": 32})
    unit = suite.units()[0]                           # Unit("demo__arith__zs_noopt", ...)
    suite.score(unit, suite.load(unit), predictions)  # {"accuracy": 12.0, "num_examples": 50}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from flan_jax.data import export, pipeline
from flan_jax.errors import ConfigError
from flan_jax.evaluation.suites import BenchmarkResult, Scores, Suite, SuiteResult, Unit, UnitData


def list_eval_tasks(names: Sequence[str], split: str) -> list[str]:
    """Expands mixtures into their tasks and keeps the tasks that have ``split``."""
    tasks: list[str] = []
    for name in names:
        provider = export.get_mixture_or_task(name)  # an unknown name lists the closest
        members = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
        tasks += [t.name for t in members if split in t.splits and t.name not in tasks]
    return tasks


def compute_task_metrics(
    task: seqio.Task, examples: Sequence[Mapping[str, Any]], predictions: Sequence[str]
) -> dict[str, float]:
    """The task's predict metrics for decoded texts, postprocessed as seqio does."""
    postprocess = task.postprocess_fn or (lambda text, example=None, is_target=False: text)
    targets = [
        postprocess(ex["targets_pretokenized"], example=ex, is_target=True) for ex in examples
    ]
    outputs = [
        postprocess(text, example=ex, is_target=False) for text, ex in zip(predictions, examples)
    ]
    metrics: dict[str, float] = {}
    for metric_fn in task.predict_metric_fns:
        for name, value in metric_fn(targets, outputs).items():
            metrics[name] = float(getattr(value, "value", value))
    return metrics


class TaskSuite(Suite):
    """Registered seqio tasks (or mixtures, expanded), one unit per task.

    Args:
      spec: the suite's name in reports, e.g. "tasks:demo_mixture".
      items: task or mixture names.
      max_examples: examples per task (the first of the split); None for all.
      split: the split to read (held-out instances).
      task_feature_lengths: lengths of the tokenized features seqio builds (the prompts
        are the untokenized texts; the predictor cuts them to its own max_input_len).
    """

    def __init__(
        self,
        spec: str,
        *,
        items: Sequence[str],
        max_examples: int | None,
        split: str = "validation",
        task_feature_lengths: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(spec)
        self.split, self.max_examples = split, max_examples
        self.lengths = dict(task_feature_lengths or {"inputs": 512, "targets": 128})
        self.task_names = list_eval_tasks(items, split)
        if not self.task_names:
            raise ConfigError(f"suite {spec!r}: no task among {list(items)} has split {split!r}.")

    def units(self) -> list[Unit]:
        return [Unit(name, name) for name in self.task_names]

    def check_data(self) -> None:
        """Nothing up front: a seqio source reports its own missing files when read."""

    def _load(self, unit: Unit) -> UnitData:
        examples = pipeline.make_eval_examples(
            unit.benchmark,
            self.split,
            task_feature_lengths=self.lengths,
            max_examples=self.max_examples,
        )
        return UnitData([ex["inputs_pretokenized"] for ex in examples], examples)

    def score(self, unit: Unit, data: UnitData, predictions: Sequence[str]) -> Scores:
        task = seqio.get_mixture_or_task(unit.benchmark)
        scores = compute_task_metrics(task, data.examples, predictions)
        return {**scores, "num_examples": float(len(data.examples))}

    def combine(self, results: Mapping[Unit, Scores]) -> SuiteResult:
        benchmarks = {}
        for unit, scores in results.items():
            metric = next((k for k in scores if k != "num_examples"), "num_examples")
            benchmarks[unit.benchmark] = BenchmarkResult(
                title=unit.benchmark,
                metric=metric,
                score=scores[metric] if metric != "num_examples" else float("nan"),
                num_examples=int(scores["num_examples"]),
                breakdown={unit.subset: dict(scores)},
            )
        # An average over one task would only repeat it.
        scored = [b.score for b in benchmarks.values() if b.metric != "num_examples"]
        average = float(np.mean(scored)) if len(benchmarks) > 1 and scored else None
        return SuiteResult(self.spec, benchmarks, "mean_score", average)
