"""FLAN 2021's cluster-count finding and OPT-IML's three levels, in miniature on this CPU.

Not a timed test: an experiment on the built-in demo collection (five clusters: arith,
sentiment, nli, words, reading), trained through the one trainer (`trainer.train`) and
scored with the suites `flan-jax eval` runs (`heldout_clusters:demo/<cluster>`, `optiml:demo`,
`tasks:...`, through `runner.run_suite` and `Predictor.predict`).

Usage: python benchmarks/heldout_experiment.py [--quick] [--out_dir DIR] [--work_dir DIR]
Prints the tables and writes heldout_experiment.{md,json} and heldout_experiment_{clusters,
optiml}.png to docs/results/ (or --out_dir). Needs matplotlib (`pip install -e ".[bench]"`).

Phases (each a function below):

1. :func:`run_cluster_transfer` (FLAN 2021, Wei et al. 2022, its "number of instruction
   tuning clusters" ablation): per held-out cluster H and seed, the other clusters in a
   seeded order; a model is trained on the first k of them, k = 1..4
   (`register_demo_cluster_transfer`), and scored zero-shot on H's seen-template and
   unseen-template tasks (suite `heldout_clusters:demo/H`, validation split), and on the
   training clusters' seen-template tasks (held-out instances) as a sanity check;
2. :func:`run_optiml_levels` (OPT-IML, Iyer et al. 2022): one model trained on the demo
   protocol's mixture (`register_optiml_protocol(demo=True)`: "words" is the held-out
   category, "reading" and "sentiment" the held-out tasks of seen categories, 10% of the
   arith and nli training instances held out), scored per level (suite `optiml:demo`); and a
   reference trained on every cluster less the same held-out instances, scored on the same
   tasks (what the levels would reach had nothing been held out);
3. a markdown table, a JSON file and two PNG plots.

Every run has the same steps, batch, schedule and model, so a model trained on more
clusters sees fewer examples of each (as in FLAN's ablation, a fixed training budget).
Each task is scored two ways: the suites' score (greedy generation, exact match with the
target, as `flan-jax eval` reports it) and rank classification over the example's answer
options (`metrics.rank_classify` with `Predictor.score`), which counts a model that prefers
the right option even when it does not write it verbatim. Chance is 1 / number of options.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import experiment_io
import jax
import numpy as np
import t5_sizes
from matplotlib.figure import Figure  # The object API: no pyplot state, no display backend.

from flan_jax.data import file_io
from flan_jax.evaluation import metrics, runner, suites
from flan_jax.inference import DecodeConfig, Predictor
from flan_jax.models import t5
from flan_jax.models.config import T5Config
from flan_jax.tasks import demo, sources
from flan_jax.tasks.heldout import categories, clusters
from flan_jax.training import checkpointing, losses, schedules, trainer
from flan_jax.training import metrics as train_metrics

_LOG = logging.getLogger(__name__)
NAME = "heldout_experiment"
FEATURE_LENGTHS = dict(demo.DEMO_TASK_FEATURE_LENGTHS)  # inputs 64, targets 32
# The reference model of phase 2 holds out no category and no task, only instances.
REFERENCE = "reference (all clusters)"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Sizes of the experiment.

    The model is the tiny T5 of `gin_configs/models/t5_1_1_tiny.gin` in float32 with the
    demo vocabulary, and the schedule that of `gin_configs/runs/demo_cpu.gin` (linear warmup
    to 0.03, linear decay to 0 at the last step), over fewer steps.

    Attributes:
      held_out_clusters: the clusters held out in phase 1, one at a time.
      seeds: initialisation, data-order and cluster-order seeds (phase 1 runs each).
      train_steps: steps of every run.
      warmup_steps: linear warmup of the learning rate.
      peak_learning_rate: the schedule's peak.
      batch_size: packed rows per step.
      max_eval_examples: the first N validation examples of each evaluated task.
      optiml: whether to run phase 2.
      optiml_reference: whether phase 2 also trains the reference on every cluster.
    """

    held_out_clusters: tuple[str, ...] = ("nli", "sentiment", "reading")
    seeds: tuple[int, ...] = (0,)
    train_steps: int = 300
    warmup_steps: int = 30
    peak_learning_rate: float = 0.03
    batch_size: int = 32
    max_eval_examples: int = 100
    optiml: bool = True
    optiml_reference: bool = True

    def __post_init__(self) -> None:
        unknown = [c for c in self.held_out_clusters if c not in demo.CLUSTERS]
        if unknown or not self.held_out_clusters:
            raise ValueError(
                f"held_out_clusters must be demo clusters {demo.CLUSTERS}, got "
                f"{self.held_out_clusters}."
            )
        if not 0 <= self.warmup_steps < self.train_steps:
            raise ValueError(
                f"warmup_steps must be in [0, train_steps={self.train_steps}), got "
                f"{self.warmup_steps}."
            )


QUICK = ExperimentConfig(
    held_out_clusters=("sentiment",),
    train_steps=40,
    warmup_steps=8,
    max_eval_examples=16,
    optiml_reference=False,
)


def tiny_t5_config(vocab_size: int) -> T5Config:
    """`gin_configs/models/t5_1_1_tiny.gin` with `runs/demo_cpu.gin`'s overrides."""
    # CPUs have no fast bfloat16 matmuls.
    return T5Config(vocab_size=vocab_size, dtype="float32", **t5_sizes.T5_1_1_DIMS["tiny"])


@dataclasses.dataclass(frozen=True)
class Harness:
    """What every run shares: the config, the model, the vocabulary and a work directory."""

    cfg: ExperimentConfig
    model: t5.T5Model
    vocabulary: Any
    work_dir: str

    def train(self, mixture: str, *, seed: int, run_name: str) -> tuple[Any, float]:
        """Trains a fresh model on `mixture`; returns its parameters and the seconds taken."""
        cfg = self.cfg
        start = time.perf_counter()
        result = trainer.train(
            model_dir=os.path.join(self.work_dir, run_name),
            model=self.model,
            mixture_or_task_name=mixture,
            task_feature_lengths=FEATURE_LENGTHS,
            train_steps=cfg.train_steps,
            batch_size=cfg.batch_size,
            learning_rate=schedules.linear_decay(
                peak_value=cfg.peak_learning_rate,
                total_steps=cfg.train_steps,
                warmup_steps=cfg.warmup_steps,
            ),
            seed=seed,
            data_config=trainer.DataConfig(buffer_size=256),  # as runs/demo_cpu.gin
            loss_config=losses.LossConfig(normalization="num_real_target_tokens"),
            checkpoint_config=checkpointing.CheckpointConfig(period=cfg.train_steps, keep=1),
            metrics_config=train_metrics.MetricsConfig(
                log_period=min(50, cfg.train_steps), tensorboard=False
            ),
        )
        seconds = time.perf_counter() - start
        _LOG.info(
            "%s: %d steps in %.0fs, final loss %.3f",
            run_name,
            cfg.train_steps,
            seconds,
            result.train_metrics["train/loss"],
        )
        return result.state.params, seconds

    def predictor(self, params: Any) -> Predictor:
        decode = DecodeConfig(
            max_decode_len=FEATURE_LENGTHS["targets"],
            max_input_len=FEATURE_LENGTHS["inputs"],
            batch_size=64,
        )
        return Predictor(self.model, params, self.vocabulary, decode)

    def make_suite(self, spec: str) -> suites.Suite:
        return suites.make_suite(
            spec,
            max_examples=self.cfg.max_eval_examples,
            task_options={"split": "validation", "task_feature_lengths": FEATURE_LENGTHS},
        )


def rank_classification_scores(
    predictor: Predictor, examples: Sequence[Mapping[str, Any]]
) -> dict[str, float | None]:
    """Rank-classification accuracy and chance (percent) over the examples' answer options;
    both None for a task without options (arith's chains of thought)."""
    options = [sources.split_answer_options(ex["_answer_options"]) for ex in examples]
    if not all(options):
        return {"rank_accuracy": None, "chance": None}
    chosen = metrics.rank_classify(
        lambda inputs, targets: predictor.score(inputs, targets).log_likelihoods.tolist(),
        [ex["inputs_pretokenized"] for ex in examples],
        options,
    )
    gold = [opts.index(ex["targets_pretokenized"]) for opts, ex in zip(options, examples)]
    return {
        "rank_accuracy": 100.0 * float(np.mean([c == g for c, g in zip(chosen, gold)])),
        "chance": 100.0 * float(np.mean([1.0 / len(opts) for opts in options])),
    }


def score_suite(harness: Harness, params: Any, spec: str) -> dict[str, dict[str, Any]]:
    """Per task of suite `spec`: its benchmark (group), the suite's generation accuracy and
    the rank-classification accuracy with chance (None where the task has no options)."""
    suite = harness.make_suite(spec)
    predictor = harness.predictor(params)
    result = runner.run_suite(
        suite, lambda prompts: [str(t) for t in predictor.predict(prompts)], log=_LOG.info
    )
    rows: dict[str, dict[str, Any]] = {}
    for unit in suite.units():
        scores = result.benchmarks[unit.benchmark].breakdown[unit.subset]
        rank = rank_classification_scores(predictor, suite.load(unit).examples)
        rows[unit.subset] = {
            "group": unit.benchmark,
            "accuracy": scores["accuracy"],
            "num_examples": int(scores["num_examples"]),
            **rank,
        }
    return rows


def cluster_order(held_out: str, seed: int) -> list[str]:
    """The other clusters in a seeded order; phase 1 trains on its first k."""
    others = [c for c in demo.CLUSTERS if c != held_out]
    rng = np.random.default_rng([seed, demo.CLUSTERS.index(held_out)])
    return [others[i] for i in rng.permutation(len(others))]


def _mean(rows: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows.values() if row[key] is not None]
    return float(np.mean(values)) if values else None


def run_cluster_transfer(harness: Harness) -> list[dict[str, Any]]:
    """Phase 1: one record per (held-out cluster, seed, k)."""
    records = []
    eval_tasks = demo.demo_eval_tasks()
    for held_out in harness.cfg.held_out_clusters:
        for seed in harness.cfg.seeds:
            order = cluster_order(held_out, seed)
            for k in range(1, len(order) + 1):
                train_clusters = order[:k]
                mixture, _ = clusters.register_demo_cluster_transfer(
                    held_out, train_clusters=train_clusters
                )
                params, seconds = harness.train(mixture, seed=seed, run_name=f"{mixture}_s{seed}")
                heldout_rows = score_suite(harness, params, f"heldout_clusters:demo/{held_out}")
                seen = [eval_tasks[c]["seen"] for c in train_clusters]
                train_rows = score_suite(harness, params, f"tasks:{','.join(seen)}")
                kind = {
                    eval_tasks[held_out]["seen"]: "seen",
                    eval_tasks[held_out]["unseen"]: "unseen",
                }
                record = {
                    "held_out": held_out,
                    "seed": seed,
                    "num_train_clusters": k,
                    "train_clusters": train_clusters,
                    "held_out_tasks": {kind[t]: row for t, row in heldout_rows.items()},
                    "train_tasks": train_rows,
                    "held_out_accuracy": _mean(heldout_rows, "accuracy"),
                    "held_out_rank_accuracy": _mean(heldout_rows, "rank_accuracy"),
                    "held_out_chance": _mean(heldout_rows, "chance"),
                    "train_accuracy": _mean(train_rows, "accuracy"),
                    "train_seconds": seconds,
                }
                _LOG.info(
                    "held out %s, seed %d, trained on %s: held-out accuracy %.1f (rank %.1f), "
                    "training clusters %.1f",
                    held_out,
                    seed,
                    train_clusters,
                    record["held_out_accuracy"],
                    record["held_out_rank_accuracy"] or float("nan"),
                    record["train_accuracy"],
                )
                records.append(record)
    return records


def _level_means(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    by_level: dict[str, dict[str, Mapping[str, Any]]] = {}
    for task, row in rows.items():
        by_level.setdefault(row["group"], {})[task] = row
    return {
        level: {key: _mean(level_rows, key) for key in ("accuracy", "rank_accuracy", "chance")}
        for level, level_rows in by_level.items()
    }


def run_optiml_levels(harness: Harness) -> dict[str, Any]:
    """Phase 2: per model (the protocol's, the reference), per level: tasks and means."""
    protocol = categories.register_optiml_protocol(demo=True)
    models = {"OPT-IML split": protocol.train_mixture}
    if harness.cfg.optiml_reference:
        # Every category and task seen; the same instances (seed, fraction) held out, so
        # level 3 is the same data for both models.
        catalog = [r for r in categories.load_category_catalog() if r.source == "demo"]
        split = categories.split_by_generalization_level(
            catalog, held_out_categories=(), held_out_task_fraction=0.0, seed=protocol.split.seed
        )
        reference = categories.register_optiml_split(split, name="optiml_demo_reference_s0")
        models[REFERENCE] = reference.train_mixture
    seed = harness.cfg.seeds[0]
    results: dict[str, Any] = {
        "split": {
            "held_out_categories": [d for _, d in protocol.split.category_datasets],
            "held_out_tasks": [d for _, d in protocol.split.task_datasets],
            "seen_datasets": [d for _, d in protocol.split.seen_datasets],
        },
        "eval_tasks": {level: list(tasks) for level, tasks in protocol.eval_tasks.items()},
        "models": {},
    }
    for label, mixture in models.items():
        params, seconds = harness.train(mixture, seed=seed, run_name=f"{mixture}_s{seed}")
        rows = score_suite(harness, params, "optiml:demo")
        results["models"][label] = {
            "train_mixture": mixture,
            "train_seconds": seconds,
            "tasks": rows,
            "levels": _level_means(rows),
        }
    return results


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _spread(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def format_cluster_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Per k: mean ± std over (held-out cluster, seed) of each score, then every run."""
    keys = ("held_out_accuracy", "held_out_rank_accuracy", "held_out_chance", "train_accuracy")
    header = (
        "| training clusters | held-out accuracy (generation) | held-out rank classification "
        "| chance | training clusters' accuracy | runs |"
    )
    lines = [header, "|---|---|---|---|---|---|"]
    for k in sorted({r["num_train_clusters"] for r in records}):
        at_k = [r for r in records if r["num_train_clusters"] == k]
        cells = [
            _spread([r[key] for r in at_k if r[key] is not None] or [float("nan")]) for key in keys
        ]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {len(at_k)} |")
    lines += [
        "",
        "| held out | seed | trained on | seen templates | unseen templates | rank (seen / unseen) "
        "| training clusters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        seen, unseen = r["held_out_tasks"]["seen"], r["held_out_tasks"]["unseen"]
        lines.append(
            f"| {r['held_out']} | {r['seed']} | {', '.join(r['train_clusters'])} "
            f"| {_fmt(seen['accuracy'])} | {_fmt(unseen['accuracy'])} "
            f"| {_fmt(seen['rank_accuracy'])} / {_fmt(unseen['rank_accuracy'])} "
            f"| {_fmt(r['train_accuracy'])} |"
        )
    return "\n".join(lines) + "\n"


def format_optiml_table(optiml: Mapping[str, Any]) -> str:
    """Per model and level: generation accuracy, rank classification and chance."""
    lines = [
        "| model | level | tasks | accuracy (generation) | rank classification | chance |",
        "|---|---|---|---|---|---|",
    ]
    for label, model in optiml["models"].items():
        for level in categories.LEVELS:
            means = model["levels"][level]
            tasks = ", ".join(optiml["eval_tasks"][level])
            lines.append(
                f"| {label} | {level} | {tasks} | {_fmt(means['accuracy'])} "
                f"| {_fmt(means['rank_accuracy'])} | {_fmt(means['chance'])} |"
            )
    return "\n".join(lines) + "\n"


def summarize_findings(results: Mapping[str, Any]) -> list[str]:
    """The papers' claims checked against the measured means, one sentence each."""
    lines = []
    records = results["cluster_transfer"]
    for key, what in (
        ("held_out_accuracy", "generation"),
        ("held_out_rank_accuracy", "rank classification"),
    ):
        means = [
            float(np.mean([r[key] for r in records if r["num_train_clusters"] == k]))
            for k in sorted({r["num_train_clusters"] for r in records})
            if all(r[key] is not None for r in records if r["num_train_clusters"] == k)
        ]
        if len(means) > 1:
            rising = all(b >= a for a, b in zip(means, means[1:]))
            lines.append(
                f"FLAN 2021 (more training clusters, better held-out zero-shot), {what}: mean "
                f"held-out accuracy {' -> '.join(f'{m:.1f}' for m in means)} for 1..{len(means)} "
                f"clusters; {'rises at every step' if rising else 'does not rise at every step'}"
                f" ({means[-1] - means[0]:+.1f} points from 1 to {len(means)})."
            )
    optiml = results.get("optiml")
    if optiml:
        for key, what in (("accuracy", "generation"), ("rank_accuracy", "rank classification")):
            levels = optiml["models"]["OPT-IML split"]["levels"]
            values = [levels[level][key] for level in reversed(categories.LEVELS)]
            if None in values:
                continue
            ordered = values[0] > values[1] > values[2]
            lines.append(
                f"OPT-IML (instances > tasks > categories), {what}: "
                + ", ".join(
                    f"{level} {levels[level][key]:.1f}" for level in reversed(categories.LEVELS)
                )
                + f"; {'holds' if ordered else 'does not hold'}."
            )
    return lines


def format_report(results: Mapping[str, Any]) -> str:
    """The markdown file: settings, findings, then the tables."""
    cfg = results["config"]
    parts = [
        "# Held-out generalization on the demo collection (FLAN 2021 and OPT-IML in miniature)",
        "",
        f"Produced by `benchmarks/heldout_experiment.py{' --quick' if results['quick'] else ''}` "
        f"in {results['total_seconds'] / 60:.1f} min on {results['device']} "
        f"({results['num_runs']} training runs). Every run: the tiny T5 "
        f"({results['num_params']:,} parameters, float32), {cfg['train_steps']} steps of "
        f"{cfg['batch_size']} packed rows (64/32 tokens), learning rate warmed up over "
        f"{cfg['warmup_steps']} steps to {cfg['peak_learning_rate']} and decayed linearly to 0; "
        f"seeds {list(cfg['seeds'])}. Each task is scored on its first "
        f"{cfg['max_eval_examples']} validation examples (held-out instances), by the suites of "
        "`flan-jax eval` (greedy generation, exact match) and by rank classification over the "
        "answer options. Scores in percent.",
        "",
        "## Findings",
        "",
        *[f"- {line}" for line in summarize_findings(results)],
        "",
        "## FLAN 2021: held-out cluster accuracy vs number of training clusters",
        "",
        f"Held-out clusters: {', '.join(cfg['held_out_clusters'])}; for each, the other "
        "clusters in a seeded order, the first k trained on. The held-out score is the mean of "
        "its seen-template and unseen-template tasks (both new to the model); the training "
        "clusters' accuracy is on their held-out instances (seen templates). Mean ± standard "
        "deviation over held-out clusters and seeds.",
        "",
        format_cluster_table(results["cluster_transfer"]),
    ]
    if results.get("optiml"):
        optiml = results["optiml"]
        split = optiml["split"]
        parts += [
            "## OPT-IML: the three generalization levels",
            "",
            f"Held-out category: {', '.join(split['held_out_categories'])}; held-out tasks of "
            f"seen categories: {', '.join(split['held_out_tasks'])}; trained on "
            f"{', '.join(split['seen_datasets'])} less 10% of their training instances "
            "(the level-3 evaluation data). The reference is trained on every cluster less "
            "the same instances, so its level-1 and level-2 rows are seen tasks. Rank "
            "classification and chance average the tasks with answer options (arith has none).",
            "",
            format_optiml_table(optiml),
        ]
    return "\n".join(parts)


def plot_cluster_transfer(records: Sequence[Mapping[str, Any]], path: str) -> None:
    """Held-out accuracy vs number of training clusters: generation and rank panels."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    ks = sorted({r["num_train_clusters"] for r in records})
    runs = sorted({(r["held_out"], r["seed"]) for r in records})
    panels = (
        ("held_out_accuracy", "generation (exact match)"),
        ("held_out_rank_accuracy", "rank classification"),
    )
    for axis, (key, title) in zip(axes, panels):
        for held_out, seed in runs:
            mine = sorted(
                (r for r in records if (r["held_out"], r["seed"]) == (held_out, seed)),
                key=lambda r: r["num_train_clusters"],
            )
            label = held_out if len(runs) == len({h for h, _ in runs}) else f"{held_out} s{seed}"
            axis.plot(
                [r["num_train_clusters"] for r in mine],
                [r[key] for r in mine],
                alpha=0.45,
                marker=".",
                label=f"held out: {label}",
            )
        at_k = [[r[key] for r in records if r["num_train_clusters"] == k] for k in ks]
        axis.errorbar(
            ks,
            [np.mean(v) for v in at_k],
            yerr=[np.std(v) for v in at_k],
            color="black",
            linewidth=2,
            capsize=4,
            marker="o",
            label="mean ± std",
        )
        if key == "held_out_accuracy":
            train = [
                np.mean([r["train_accuracy"] for r in records if r["num_train_clusters"] == k])
                for k in ks
            ]
            axis.plot(
                ks,
                train,
                color="gray",
                linestyle="--",
                marker="s",
                label="training clusters (mean)",
            )
        else:
            chance = [
                np.mean([r["held_out_chance"] for r in records if r["num_train_clusters"] == k])
                for k in ks
            ]
            axis.plot(ks, chance, color="gray", linestyle=":", label="chance")
        axis.set(
            xlabel="number of training clusters",
            ylabel="accuracy (%)",
            title=f"held-out cluster, {title}",
            ylim=(0, 100),
            xticks=ks,
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    experiment_io.save_png(fig, path)


def plot_optiml_levels(optiml: Mapping[str, Any], path: str) -> None:
    """Bars per OPT-IML level, one bar per model, generation and rank panels."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    models = list(optiml["models"])
    levels = list(reversed(categories.LEVELS))  # instances, tasks, categories
    width = 0.8 / len(models)
    positions = np.arange(len(levels))
    for axis, (key, title) in zip(
        axes, (("accuracy", "generation (exact match)"), ("rank_accuracy", "rank classification"))
    ):
        for i, label in enumerate(models):
            values = [optiml["models"][label]["levels"][level][key] for level in levels]
            heights = [np.nan if v is None else v for v in values]
            bars = axis.bar(positions + i * width, heights, width, label=label)
            axis.bar_label(bars, fmt="%.0f", fontsize=8)
        if key == "rank_accuracy":
            chance = [optiml["models"][models[0]]["levels"][level]["chance"] for level in levels]
            for x, c in zip(positions, chance):
                if c is not None:
                    axis.hlines(
                        c,
                        x - width / 2,
                        x + width * (len(models) - 0.5),
                        colors="black",
                        linestyles=":",
                    )
        axis.set_xticks(
            positions + width * (len(models) - 1) / 2, [level.replace("_", " ") for level in levels]
        )
        axis.set(ylabel="accuracy (%)", title=f"OPT-IML levels, {title}", ylim=(0, 105))
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=8)
    fig.tight_layout()
    experiment_io.save_png(fig, path)


def run_experiment(
    *,
    out_dir: str,
    work_dir: str | None = None,
    config: ExperimentConfig = ExperimentConfig(),
    quick: bool = False,
) -> dict[str, Any]:
    """Runs both phases and writes `{NAME}.md`, `{NAME}.json` and the two PNGs."""
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    work_dir = experiment_io.make_work_dir(f"{NAME}_", work_dir)
    vocabulary = demo.get_demo_vocabulary()
    demo.register_demo_tasks(vocabulary)
    model_config = tiny_t5_config(-(-vocabulary.vocab_size // 128) * 128)
    harness = Harness(
        config,
        t5.T5Model(model_config),
        vocabulary,
        work_dir,
    )
    cluster_records = run_cluster_transfer(harness)
    optiml = run_optiml_levels(harness) if config.optiml else None
    results = {
        "config": dataclasses.asdict(config),
        "quick": quick,
        "device": f"{jax.devices()[0].platform} ({os.cpu_count()} cores)",
        "num_params": int(sum(x.size for x in jax.tree.leaves(t5.abstract_params(model_config)))),
        "num_runs": len(cluster_records) + (len(optiml["models"]) if optiml else 0),
        "cluster_transfer": cluster_records,
        "optiml": optiml,
    }
    results["total_seconds"] = time.perf_counter() - start
    results["findings"] = summarize_findings(results)
    file_io.write_text_atomically(os.path.join(out_dir, f"{NAME}.md"), format_report(results))
    file_io.write_json_atomically(os.path.join(out_dir, f"{NAME}.json"), results, indent=1)
    plot_cluster_transfer(cluster_records, os.path.join(out_dir, f"{NAME}_clusters.png"))
    if optiml:
        plot_optiml_levels(optiml, os.path.join(out_dir, f"{NAME}_optiml.png"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few-minute smoke run (one held-out cluster, 40 steps, no reference model)",
    )
    parser.add_argument(
        "--out_dir", default=os.path.join(os.path.dirname(__file__), "..", "docs", "results")
    )
    parser.add_argument(
        "--work_dir", default=None, help="checkpoints (default: a new temporary directory)"
    )
    parser.add_argument(
        "--seeds", default=None, help="comma-separated seeds (default: the preset's)"
    )
    parser.add_argument(
        "--held_out", default=None, help="comma-separated held-out clusters (default: the preset's)"
    )
    args = parser.parse_args()
    # A handler of its own: absl's handler on the root logger (at WARNING) would drop this
    # script's progress lines, and lowering it would let orbax's and seqio's INFO lines in.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    _LOG.addHandler(handler)
    _LOG.setLevel(logging.INFO)
    _LOG.propagate = False
    config = QUICK if args.quick else ExperimentConfig()
    if args.seeds:
        config = dataclasses.replace(config, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.held_out:
        config = dataclasses.replace(config, held_out_clusters=tuple(args.held_out.split(",")))
    run_experiment(out_dir=args.out_dir, work_dir=args.work_dir, config=config, quick=args.quick)
    with open(os.path.join(args.out_dir, f"{NAME}.md"), encoding="utf-8") as f:
        print(f.read())


if __name__ == "__main__":
    main()
