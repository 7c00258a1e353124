"""Suites of registered seqio tasks scored by their own metric_fns: `tasks:NAME,...` and
the held-out generalization protocols `heldout_clusters:CLUSTER,...` and `optiml[:LEVEL,...]`.

Each task is one unit: the first `max_examples` examples of `split` in source order (so
every evaluation of a run sees the same ones), their `inputs_pretokenized` text as the
prompts, and the task's `postprocess_fn` and predict metric_fns applied as
`seqio.Evaluator` applies them. Mixtures are expanded into their tasks that have `split`.

    suite = TaskSuite("tasks:demo__arith__zs_noopt", items=["demo__arith__zs_noopt"],
                      max_examples=50, task_feature_lengths={"inputs": 64, "targets": 32})
    unit = suite.units()[0]                           # Unit("demo__arith__zs_noopt", ...)
    suite.score(unit, suite.load(unit), predictions)  # {"accuracy": 12.0, "num_examples": 50}

Tasks are grouped into benchmarks: for `tasks:` each task is its own; for
`heldout_clusters` a benchmark is a held-out cluster (FLAN 2021's leave-one-cluster-out,
`flan_jax.tasks.heldout.clusters`: its zero-shot tasks, `demo/CLUSTER` for the demo
collection), for `optiml` one of OPT-IML's three levels (`flan_jax.tasks.heldout.categories`;
`optiml:demo` on the demo collection). A benchmark's score is the mean over its tasks of
each task's first metric.
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
      items: task or mixture names, each its own benchmark (unless `groups`).
      max_examples: examples per task (the first of the split); None for all.
      split: the split to read (held-out instances).
      task_feature_lengths: lengths of the tokenized features seqio builds (the prompts
        are the untokenized texts; the predictor cuts them to its own max_input_len).
      groups: benchmark name -> its tasks or mixtures, instead of `items`.
      average_name: the name of the mean over benchmarks in reports.
    """

    def __init__(
        self,
        spec: str,
        *,
        items: Sequence[str] = (),
        max_examples: int | None,
        split: str = "validation",
        task_feature_lengths: Mapping[str, int] | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
        average_name: str = "mean_score",
    ) -> None:
        super().__init__(spec)
        self.split, self.max_examples, self.average_name = split, max_examples, average_name
        self.lengths = dict(task_feature_lengths or {"inputs": 512, "targets": 128})
        self._units: list[Unit] = []
        if groups is None:
            self.task_names = list_eval_tasks(items, split)
            self._units = [Unit(name, name) for name in self.task_names]
        else:
            for benchmark, names in groups.items():
                self._units += [Unit(benchmark, task) for task in list_eval_tasks(names, split)]
            self.task_names = list(dict.fromkeys(unit.subset for unit in self._units))
        if not self._units:
            raise ConfigError(f"suite {spec!r}: no task has split {split!r}.")

    def units(self) -> list[Unit]:
        return list(self._units)

    def check_data(self) -> None:
        """Nothing up front: a seqio source reports its own missing files when read."""

    def _load(self, unit: Unit) -> UnitData:
        examples = pipeline.make_eval_examples(
            unit.subset,
            self.split,
            task_feature_lengths=self.lengths,
            max_examples=self.max_examples,
        )
        return UnitData([ex["inputs_pretokenized"] for ex in examples], examples)

    def score(self, unit: Unit, data: UnitData, predictions: Sequence[str]) -> Scores:
        task = seqio.get_mixture_or_task(unit.subset)
        scores = compute_task_metrics(task, data.examples, predictions)
        return {**scores, "num_examples": float(len(data.examples))}

    def combine(self, results: Mapping[Unit, Scores]) -> SuiteResult:
        by_benchmark: dict[str, dict[str, Scores]] = {}
        for unit, scores in results.items():
            by_benchmark.setdefault(unit.benchmark, {})[unit.subset] = dict(scores)
        benchmarks = {}
        for name, rows in by_benchmark.items():
            metrics = [next((k for k in row if k != "num_examples"), None) for row in rows.values()]
            scored = [row[m] for row, m in zip(rows.values(), metrics) if m is not None]
            metric = metrics[0] if len(set(metrics)) == 1 and metrics[0] else "mean_score"
            benchmarks[name] = BenchmarkResult(
                title=name,
                metric=metric,
                score=float(np.mean(scored)) if scored else float("nan"),
                num_examples=int(sum(row["num_examples"] for row in rows.values())),
                breakdown=rows,
            )
        # An average over one benchmark would only repeat it.
        means = [b.score for b in benchmarks.values() if not np.isnan(b.score)]
        average = float(np.mean(means)) if len(benchmarks) > 1 and means else None
        return SuiteResult(self.spec, benchmarks, self.average_name, average)


def make_heldout_clusters_suite(spec: str, *, items: Sequence[str], **options: Any) -> TaskSuite:
    """FLAN 2021's leave-one-cluster-out evaluation: each held-out cluster's zero-shot tasks.

    `items` are Flan 2021 clusters (default: all) or `demo/CLUSTER` (the demo collection's
    seen- and unseen-template zero-shot tasks of CLUSTER). Registers each cluster's training
    mixture too (`flan2021_without_<cluster>`, `demo_heldout_<cluster>_train_...`).
    """
    from flan_jax.tasks.heldout import clusters

    groups: dict[str, tuple[str, ...]] = {}
    for item in items or clusters.flan2021_clusters():
        try:
            if item.startswith("demo/"):
                _, eval_tasks = clusters.register_demo_cluster_transfer(item[len("demo/") :])
            else:
                _, eval_tasks = clusters.register_leave_one_cluster_out(item)
        except ValueError as error:  # unknown cluster, unregistered family
            raise ConfigError(f"suite {spec!r}: {error}") from None
        groups[item] = eval_tasks
    return TaskSuite(spec, groups=groups, average_name="mean_held_out_score", **options)


def make_optiml_suite(spec: str, *, items: Sequence[str], **options: Any) -> TaskSuite:
    """OPT-IML's three generalization levels (default split of `register_optiml_protocol`).

    `items`: "demo" for the demo collection, and the levels to score (default: all three).
    """
    from flan_jax.tasks.heldout import categories

    demo = "demo" in items
    levels = [item for item in items if item != "demo"] or list(categories.LEVELS)
    unknown = [level for level in levels if level not in categories.LEVELS]
    if unknown:
        raise ConfigError(
            f"suite {spec!r}: unknown level(s) {unknown}; known: {', '.join(categories.LEVELS)} "
            "and 'demo'."
        )
    try:
        protocol = categories.register_optiml_protocol(demo=demo)
    except ValueError as error:
        raise ConfigError(f"suite {spec!r}: {error}") from None
    groups = {level: protocol.eval_tasks[level] for level in levels}
    return TaskSuite(spec, groups=groups, average_name="mean_level_score", **options)
