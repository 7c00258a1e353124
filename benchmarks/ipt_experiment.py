"""Instruction Pre-Training (arXiv 2406.14491) end to end, in miniature on this CPU.

Not a timed test: an experiment on the built-in demo collection, every model trained by the
one trainer through the shipped gin stacks (as `flan-jax train` runs them) and the
synthesis run by `flan-jax synthesize`:

1. :func:`train_synthesizer`: the tiny decoder (`models/decoder_tiny.gin`) fine-tuned as the
   instruction synthesizer on the demo's context tasks (`runs/ipt_synthesizer.gin` +
   `runs/ipt_synthesizer_cpu.gin`: reading, nli and sentiment one-shot examples of the
   train split, generation seed 0).
2. :func:`build_corpus`: a held-apart raw corpus: the same generators' passages under
   another generation seed (`ExperimentConfig.corpus_seed`), less every passage the
   synthesizer trained on (checked: the two sets of texts are disjoint), deduplicated.
3. :func:`synthesize_augmented_part`: the corpus's augmented part (1/5 of its texts, by
   the mixer's per-text hash) through `flan-jax synthesize` with a few rounds.
4. :func:`pretrain`: two tiny decoders from scratch with the same steps, batch, row length,
   packing and learning-rate schedule (`runs/ipt_pretrain.gin` +
   `runs/ipt_pretrain_demo_cpu.gin`), loss on every token: vanilla (the whole corpus raw:
   augmented fraction 0, no synthesizer data) and instruction-augmented (the from-scratch
   mixer: 1/5 of the texts augmented, the rest raw, plus the synthesizer's training data).
5. :func:`evaluate`: zero-shot on the demo's held-out-template tasks of every cluster
   (validation split, held-out instances), as `flan-jax train`'s demo measures them:
   exact match of greedy generations (`task_eval.Evaluator`), the teacher-forced loss of
   the targets, and rank classification over the answer options (`Predictor.score`), for
   the untrained initialisation (shared by both runs: same seed) and both models; plus
   the training loss curves from each run's metrics.jsonl.

Usage: python benchmarks/ipt_experiment.py [--quick] [--out_dir DIR] [--work_dir DIR]
Prints the table and writes ipt_experiment.{md,json,png} to docs/results/ (or --out_dir).
Needs matplotlib (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
from absl import logging as absl_logging
from matplotlib.figure import Figure  # The object API: no pyplot state, no display backend.

from flan_jax.cli import gin_flags, synthesize
from flan_jax.cli import train as train_cli
from flan_jax.data import file_io
from flan_jax.evaluation import suites
from flan_jax.inference import DecodeConfig, Predictor
from flan_jax.ipt import corpora, mixers, synth_data, synthesis
from flan_jax.tasks import demo
from flan_jax.training import task_eval, trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment_io  # noqa: E402  (sibling scripts)
from heldout_experiment import rank_classification_scores  # noqa: E402

_LOG = logging.getLogger(__name__)
NAME = "ipt_experiment"
SYNTHESIZER_GIN = (
    "models/decoder_tiny.gin",
    "runs/ipt_synthesizer.gin",
    "runs/ipt_synthesizer_cpu.gin",
)
PRETRAIN_GIN = (
    "models/decoder_tiny.gin",
    "runs/ipt_pretrain.gin",
    "runs/ipt_pretrain_demo_cpu.gin",
)
# The demo's evaluation lengths (inputs 64, targets 32), as `flan-jax train`'s demo uses.
EVAL_FEATURE_LENGTHS = dict(demo.DEMO_TASK_FEATURE_LENGTHS)
VANILLA = "vanilla"
AUGMENTED = "instruction-augmented"
INITIAL = "initialisation"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Sizes of the experiment; what is not here is the gin stacks' (runs/ipt_*_cpu.gin).

    Attributes:
      synthesizer_steps: fine-tuning steps of the synthesizer (rows: the gin's 256 tokens).
      synthesizer_batch_size: rows per synthesizer step.
      corpus_seed: the generation seed of the corpus passages (the synthesizer's is 0).
      corpus_texts_per_dataset: the most passages taken per context dataset.
      rounds: synthesis rounds (texts per group).
      pairs_per_text: the most pairs kept per text.
      max_decode_len: generated tokens per synthesis prompt.
      pretrain_steps: steps of each pre-training run.
      warmup_steps: warmup of each pre-training run.
      batch_size: packed rows per pre-training step (rows: the gin's 128 tokens).
      augmented_fraction: the share of corpus texts augmented (paper: 1/5).
      synthesizer_share: the synthesizer data's share of the augmented run's draws.
      max_eval_examples: the first N validation examples of each evaluated task.
      log_period: train-metric logging period (the loss curves' resolution).
      seed: the trainer's seed (initialisation and data order) of every run.
    """

    synthesizer_steps: int = 200
    synthesizer_batch_size: int = 8
    corpus_seed: int = 1
    corpus_texts_per_dataset: int = 1500
    rounds: int = 3
    pairs_per_text: int = 3
    max_decode_len: int = 48
    pretrain_steps: int = 400
    warmup_steps: int = 40
    batch_size: int = 16
    augmented_fraction: float = mixers.PAPER_AUGMENTED_FRACTION
    synthesizer_share: float = 0.1
    max_eval_examples: int = 60
    log_period: int = 20
    seed: int = 0


QUICK = ExperimentConfig(
    synthesizer_steps=20,
    synthesizer_batch_size=4,
    corpus_texts_per_dataset=60,
    rounds=2,
    pairs_per_text=2,
    max_decode_len=24,
    pretrain_steps=20,
    warmup_steps=5,
    batch_size=8,
    max_eval_examples=8,
    log_period=5,
)


def train_with_gin(
    files: Sequence[str], bindings: Iterable[str]
) -> tuple[trainer.TrainResult, Any]:
    """Runs `flan-jax train --gin_file=F... --gin.B...` in process; returns (result, model)."""
    gin_flags.parse_and_check_gin(list(files), list(bindings))
    try:
        model = gin.query_parameter("trainer.train.model").scoped_configurable_fn()
        result = gin.get_configurable(train_cli.run)()
    finally:
        gin.clear_config()
    return result, model


def read_loss_curve(model_dir: str) -> list[tuple[int, float]]:
    """(step, train/loss) of every logged step of a run's metrics.jsonl."""
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [
            (row["step"], row["train/loss"]) for row in map(json.loads, f) if "train/loss" in row
        ]


def _common_bindings(cfg: ExperimentConfig, model_dir: str) -> list[str]:
    return [
        f"MODEL_DIR = {model_dir!r}",
        f"trainer.train.seed = {cfg.seed}",
        f"metrics.MetricsConfig.log_period = {cfg.log_period}",
        "metrics.MetricsConfig.tensorboard = False",
    ]


def train_synthesizer(cfg: ExperimentConfig, work_dir: str) -> tuple[str, list[tuple[int, float]]]:
    """Fine-tunes the synthesizer (phase 1); returns its checkpoint directory and loss curve."""
    model_dir = os.path.join(work_dir, "synthesizer")
    bindings = [
        *_common_bindings(cfg, model_dir),
        f"TRAIN_STEPS = {cfg.synthesizer_steps}",
        f"BATCH_SIZE = {cfg.synthesizer_batch_size}",
        f"WARMUP_STEPS = {min(50, cfg.synthesizer_steps // 5)}",
        f"checkpointing.CheckpointConfig.period = {cfg.synthesizer_steps}",
    ]
    start = time.perf_counter()
    result, _ = train_with_gin(SYNTHESIZER_GIN, bindings)
    _LOG.info(
        "synthesizer: %d steps in %.0fs, final loss %.3f",
        result.step,
        time.perf_counter() - start,
        result.train_metrics["train/loss"],
    )
    return model_dir, read_loss_curve(model_dir)


def synthesizer_texts() -> set[str]:
    """Every raw text of the synthesizer's training data (the demo entries' train split)."""
    config = synth_data.SynthesizerDataConfig(sources=("demo",))
    texts = set()
    for entry in synth_data.load_context_datasets(config.catalog_path, sources=("demo",)):
        for key, fields in synth_data.iterate_source_examples(
            entry, split="train", paths=None, seed=config.seed
        ):
            record = synth_data.make_record(entry, fields, key=key)
            if record is not None:
                texts.add(record.text)
    return texts


def build_corpus(cfg: ExperimentConfig, path: str) -> dict[str, Any]:
    """Writes the held-apart corpus (phase 2) as JSONL; returns its per-dataset counts.

    Raises:
      AssertionError: a corpus text is one the synthesizer trained on.
    """
    seen = synthesizer_texts()
    texts: list[str] = []
    counts: dict[str, int] = {}
    for entry in synth_data.load_context_datasets(synth_data.CATALOG_PATH, sources=("demo",)):
        taken = 0
        for key, fields in synth_data.iterate_source_examples(
            entry, split="train", paths=None, seed=cfg.corpus_seed
        ):
            record = synth_data.make_record(entry, fields, key=key)
            if record is None or record.text in seen or record.text in texts:
                continue
            texts.append(record.text)
            taken += 1
            if taken == cfg.corpus_texts_per_dataset:
                break
        counts[entry.dataset] = taken
    overlap = seen.intersection(texts)
    assert not overlap, f"corpus texts the synthesizer trained on: {sorted(overlap)[:3]}"
    # Interleaved by a seeded permutation, so synthesis groups and shards mix the datasets.
    order = np.random.default_rng(cfg.corpus_seed).permutation(len(texts))
    file_io.write_jsonl(path, ({"text": texts[i]} for i in order))
    return {
        "num_texts": len(texts),
        "per_dataset": counts,
        "synthesizer_texts": len(seen),
        "overlap_with_synthesizer_texts": len(overlap),
    }


def synthesize_augmented_part(
    cfg: ExperimentConfig, *, corpus_path: str, synthesizer_dir: str, work_dir: str
) -> tuple[str, dict[str, Any]]:
    """Runs `flan-jax synthesize` on the corpus's augmented part (phase 3).

    Returns the synthesis directory and its manifest's totals with a few example records.
    """
    part_path = os.path.join(work_dir, "augmented_part.jsonl")
    part = list(
        corpora.iterate_corpus_part(corpus_path, augmented=True, fraction=cfg.augmented_fraction)
    )
    file_io.write_jsonl(part_path, ({"text": text} for text in part))
    out_dir = os.path.join(work_dir, "synthesis")
    shard_size = max(cfg.rounds, 256 - 256 % cfg.rounds)
    argv = [
        *("--synthesizer", synthesizer_dir, "--input", part_path, "--out", out_dir),
        *("--rounds", str(cfg.rounds), "--pairs_per_text", str(cfg.pairs_per_text)),
        *("--shard_size", str(shard_size), "--batch_size", "64"),
        *("--max_decode_len", str(cfg.max_decode_len), "--context_budget", "256"),
    ]
    start = time.perf_counter()
    synthesize.main(argv)
    seconds = time.perf_counter() - start
    totals = export_totals(out_dir)
    records = list(synthesis.read_synthesized_records(out_dir))
    examples = [r.to_json() for r in records if r.pairs][:4]
    _LOG.info("synthesis: %d texts, %d pairs in %.0fs", totals["texts"], totals["pairs"], seconds)
    return out_dir, {
        **totals,
        "seconds": seconds,
        "texts_with_pairs": sum(bool(r.pairs) for r in records),
        "examples": examples,
    }


def export_totals(out_dir: str) -> dict[str, Any]:
    with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as f:
        return dict(json.load(f)["totals"])


def pretrain(
    cfg: ExperimentConfig,
    *,
    augmented: bool,
    corpus_path: str,
    synthesis_dir: str,
    work_dir: str,
) -> tuple[Any, Any, str]:
    """One from-scratch pre-training run (phase 4); returns (model, params, model_dir)."""
    label = "augmented" if augmented else "vanilla"
    model_dir = os.path.join(work_dir, f"pretrain_{label}")
    fraction = cfg.augmented_fraction if augmented else 0.0
    share = cfg.synthesizer_share if augmented else 0.0
    bindings = [
        *_common_bindings(cfg, model_dir),
        f"MIXTURE_OR_TASK_NAME = 'ipt_experiment_{label}'",
        f"RAW_TEXT_PATH = {corpus_path!r}",
        f"SYNTHESIS_DIR = {synthesis_dir!r}",
        f"AUGMENTED_FRACTION = {fraction}",
        f"SYNTHESIZER_SHARE = {share}",
        f"TRAIN_STEPS = {cfg.pretrain_steps}",
        f"WARMUP_STEPS = {cfg.warmup_steps}",
        f"BATCH_SIZE = {cfg.batch_size}",
        f"checkpointing.CheckpointConfig.period = {cfg.pretrain_steps}",
    ]
    start = time.perf_counter()
    result, model = train_with_gin(PRETRAIN_GIN, bindings)
    _LOG.info(
        "pre-training %s: %d steps in %.0fs, final loss %.3f, packing %.1f%%",
        label,
        result.step,
        time.perf_counter() - start,
        result.train_metrics["train/loss"],
        100 * result.packing_efficiency,
    )
    return model, result.state.params, model_dir


def evaluate(
    cfg: ExperimentConfig, model: Any, params: Any, vocabulary: Any
) -> dict[str, dict[str, Any]]:
    """Per cluster, on its held-out-template task: exact match, target loss, rank accuracy."""
    eval_tasks = {cluster: tasks["unseen"] for cluster, tasks in demo.demo_eval_tasks().items()}
    evaluator = task_eval.Evaluator(
        model,
        vocabulary,
        list(eval_tasks.values()),
        EVAL_FEATURE_LENGTHS,
        task_eval.EvalConfig(max_examples=cfg.max_eval_examples, batch_size=64),
    )
    predictor = Predictor(
        model,
        params,
        vocabulary,
        DecodeConfig(
            max_decode_len=EVAL_FEATURE_LENGTHS["targets"],
            max_input_len=EVAL_FEATURE_LENGTHS["inputs"],
            batch_size=64,
        ),
    )
    rows = {}
    for cluster, task in eval_tasks.items():
        scores = evaluator.evaluate_task(params, task)
        examples = evaluator.task_suite.load(suites.Unit(task, task)).examples
        rows[cluster] = {
            "task": task,
            "accuracy": scores["accuracy"],
            "target_loss": scores["loss"],
            "token_accuracy": 100 * scores["token_accuracy"],
            **rank_classification_scores(predictor, examples),
        }
    return rows


def _mean(rows: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows.values() if row[key] is not None]
    return float(np.mean(values)) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(evaluations: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Per cluster and model: exact match, rank classification (chance), target loss."""
    models = list(evaluations)
    head = " | ".join(f"{m}: exact / rank / loss" for m in models)
    lines = [
        f"| cluster (held-out templates) | chance | {head} |",
        "|---|---|" + "---|" * len(models),
    ]
    clusters = list(next(iter(evaluations.values())))
    for cluster in [*clusters, "mean"]:
        cells = []
        for model in models:
            rows = evaluations[model]
            row: Mapping[str, Any]
            if cluster == "mean":
                row = {k: _mean(rows, k) for k in ("accuracy", "rank_accuracy", "target_loss")}
                chance = _mean(rows, "chance")
            else:
                row, chance = rows[cluster], rows[cluster]["chance"]
            cells.append(
                f"{_fmt(row['accuracy'])} / {_fmt(row['rank_accuracy'])} / "
                f"{_fmt(row['target_loss'], 3)}"
            )
        lines.append(f"| {cluster} | {_fmt(chance)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarize_findings(results: Mapping[str, Any]) -> list[str]:
    """The paper's claim checked against the measured means, one sentence per measure."""
    evaluations = results["evaluations"]
    lines = []
    for key, what, higher_better in (
        ("accuracy", "exact match", True),
        ("rank_accuracy", "rank classification", True),
        ("target_loss", "teacher-forced target loss", False),
    ):
        vanilla, augmented = (_mean(evaluations[m], key) for m in (VANILLA, AUGMENTED))
        if vanilla is None or augmented is None:
            continue
        better = augmented > vanilla if higher_better else augmented < vanilla
        verdict = (
            "equal"
            if np.isclose(vanilla, augmented)
            else ("instruction-augmented better" if better else "vanilla better")
        )
        lines.append(
            f"Held-out-template {what} (mean over clusters): vanilla {vanilla:.3g}, "
            f"instruction-augmented {augmented:.3g} ({verdict})."
        )
    lines += _caveats(results)
    return lines


def _caveats(results: Mapping[str, Any]) -> list[str]:
    """How far the differences are from noise and from the untrained model."""
    evaluations = results["evaluations"]
    ranked = [c for c, row in evaluations[VANILLA].items() if row["rank_accuracy"] is not None]
    lines = []
    if ranked and "config" in results:
        n = len(ranked) * results["config"]["max_eval_examples"]
        vanilla_rank = float(_mean(evaluations[VANILLA], "rank_accuracy") or 0.0)
        augmented_rank = float(_mean(evaluations[AUGMENTED], "rank_accuracy") or 0.0)
        p = (vanilla_rank + augmented_rank) / 200
        # Binomial standard error of a difference of two accuracies over n examples each.
        se = 100 * float(np.sqrt(2 * p * (1 - p) / n))
        gap = augmented_rank - vanilla_rank
        lines.append(
            f"The rank-classification gap ({gap:+.1f} points over {n} examples per model, one "
            f"seed) is {abs(gap) / se:.1f} binomial standard errors ({se:.1f} points)."
        )
    initial = _mean(evaluations[INITIAL], "target_loss")
    trained = {m: _mean(evaluations[m], "target_loss") for m in (VANILLA, AUGMENTED)}
    above = [
        m
        for m, loss in trained.items()
        if loss is not None and initial is not None and loss > initial
    ]
    if above:
        lines.append(
            f"The untrained initialisation's target loss ({initial:.3g}) is below that of "
            f"{' and '.join(above)}: pre-training on these narrow passages makes the model "
            "confidently wrong on the held-out tasks' answers rather than teaching them."
        )
    return lines


def format_report(results: Mapping[str, Any]) -> str:
    """The markdown file: settings, findings, the table, the synthesis counts."""
    cfg, corpus, synth = results["config"], results["corpus"], results["synthesis"]
    curves = results["loss_curves"]
    dropped = ", ".join(f"{k} {v}" for k, v in synth["dropped"].items()) or "none"
    per_dataset = ", ".join(f"{k} {v}" for k, v in corpus["per_dataset"].items())
    examples = "\n".join(
        f"- {json.dumps(example, ensure_ascii=False)}" for example in synth["examples"]
    )
    return "\n".join(
        [
            "# Instruction Pre-Training in miniature on the demo collection",
            "",
            f"Produced by `benchmarks/ipt_experiment.py{' --quick' if results['quick'] else ''}`"
            f" in {results['total_seconds'] / 60:.1f} min on {results['device']}. Every model is "
            f"the tiny decoder of `models/decoder_tiny.gin` ({results['num_params']:,} "
            "parameters, float32, demo vocabulary), trained by the one trainer through the "
            "shipped gin stacks.",
            "",
            f"- Synthesizer: `runs/ipt_synthesizer_cpu.gin`, {cfg['synthesizer_steps']} steps "
            f"of {cfg['synthesizer_batch_size']} rows of 256 tokens "
            f"(final loss {curves['synthesizer'][-1][1]:.3f} on the pair tokens), on the demo's "
            f"reading, nli and sentiment one-shot examples ({corpus['synthesizer_texts']:,} "
            "distinct texts, generation seed 0).",
            f"- Corpus: {corpus['num_texts']:,} passages of the same generators under seed "
            f"{cfg['corpus_seed']} ({per_dataset}), none of them a synthesizer training text "
            "(checked: overlap "
            f"{corpus['overlap_with_synthesizer_texts']}).",
            f"- Synthesis (`flan-jax synthesize`, greedy, {cfg['rounds']} rounds, at most "
            f"{cfg['pairs_per_text']} pairs per text, {cfg['max_decode_len']} tokens): "
            f"{synth['texts']:,} texts of the augmented part, {synth['pairs']:,} pairs, "
            f"{synth['texts_with_pairs']:,} texts with at least one pair; dropped: {dropped}; "
            f"{synth['seconds']:.0f} s.",
            f"- Pre-training: both runs {cfg['pretrain_steps']} steps of {cfg['batch_size']} "
            "packed rows of 128 tokens (the same token budget), warmup "
            f"{cfg['warmup_steps']}, `runs/ipt_pretrain_demo_cpu.gin`'s schedule, loss on "
            f"every token, seed {cfg['seed']}. Vanilla: every corpus text raw. "
            f"Instruction-augmented: {cfg['augmented_fraction']:g} of the texts augmented "
            f"(rendered with the augmented templates), the rest raw, plus the synthesizer's "
            f"training data at a {cfg['synthesizer_share']:g} share of the draws.",
            f"- Evaluation: zero-shot on the first {cfg['max_eval_examples']} validation "
            "examples (held-out instances) of each cluster's held-out-template task: exact "
            "match of greedy generations (%), rank classification over the answer options (%, "
            "n/a for arith, which has none) and the teacher-forced mean token loss of the "
            "targets (nats). The initialisation row is the shared untrained model.",
            "",
            "## Findings",
            "",
            *[f"- {line}" for line in results["findings"]],
            f"- Final training loss (each on its own mixture, so not comparable as such): "
            f"vanilla {curves[VANILLA][-1][1]:.3f}, instruction-augmented "
            f"{curves[AUGMENTED][-1][1]:.3f}.",
            "",
            "## Held-out-template tasks",
            "",
            format_table(results["evaluations"]),
            "## Synthesized examples",
            "",
            examples,
            "",
        ]
    )


def plot_results(results: Mapping[str, Any], path: str) -> None:
    """Loss curves, and per-cluster rank accuracy and target loss bars per model."""
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for label, curve in results["loss_curves"].items():
        steps, losses = zip(*curve)
        axes[0].plot(steps, losses, label=label)
    axes[0].set(xlabel="step", ylabel="train loss (own mixture)", title="training loss")
    evaluations = results["evaluations"]
    clusters = list(next(iter(evaluations.values())))
    positions = np.arange(len(clusters))
    width = 0.8 / len(evaluations)
    for axis, key, title in (
        (axes[1], "rank_accuracy", "held-out templates: rank classification (%)"),
        (axes[2], "target_loss", "held-out templates: target loss (nats)"),
    ):
        for i, (label, rows) in enumerate(evaluations.items()):
            values = [np.nan if rows[c][key] is None else rows[c][key] for c in clusters]
            axis.bar(positions + i * width, values, width, label=label)
        axis.set_xticks(positions + width * (len(evaluations) - 1) / 2, clusters)
        axis.set(title=title)
    chance = [evaluations[VANILLA][c]["chance"] for c in clusters]
    for x, c in zip(positions, chance):
        if c is not None:
            axes[1].hlines(c, x - width / 2, x + width * 2.5, colors="black", linestyles=":")
    for axis in axes:
        axis.grid(alpha=0.3)
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
    """Runs the five phases and writes `{NAME}.md`, `{NAME}.json` and `{NAME}.png`."""
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    work_dir = experiment_io.make_work_dir(f"{NAME}_", work_dir)
    absl_logging.set_verbosity(absl_logging.ERROR)  # seqio's per-task "not cached" warnings
    vocabulary = demo.get_demo_vocabulary()
    demo.register_demo_tasks(vocabulary)
    synthesizer_dir, synthesizer_curve = train_synthesizer(config, work_dir)
    corpus_path = os.path.join(work_dir, "corpus.jsonl")
    corpus = build_corpus(config, corpus_path)
    _LOG.info("corpus: %s", corpus)
    synthesis_dir, synth = synthesize_augmented_part(
        config, corpus_path=corpus_path, synthesizer_dir=synthesizer_dir, work_dir=work_dir
    )
    evaluations: dict[str, Any] = {}
    curves: dict[str, Any] = {"synthesizer": synthesizer_curve}
    for label, augmented in ((VANILLA, False), (AUGMENTED, True)):
        model, params, model_dir = pretrain(
            config,
            augmented=augmented,
            corpus_path=corpus_path,
            synthesis_dir=synthesis_dir,
            work_dir=work_dir,
        )
        if not evaluations:  # Both runs start from this initialisation (same seed).
            initial = model.init_params(jax.random.key(config.seed))
            evaluations[INITIAL] = evaluate(config, model, initial, vocabulary)
        evaluations[label] = evaluate(config, model, params, vocabulary)
        curves[label] = read_loss_curve(model_dir)
        _LOG.info("%s: %s", label, evaluations[label])
    results: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "quick": quick,
        "device": f"{jax.devices()[0].platform} ({os.cpu_count()} cores)",
        "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
        "corpus": corpus,
        "synthesis": synth,
        "evaluations": evaluations,
        "loss_curves": curves,
    }
    results["findings"] = summarize_findings(results)
    results["total_seconds"] = time.perf_counter() - start
    file_io.write_text_atomically(os.path.join(out_dir, f"{NAME}.md"), format_report(results))
    file_io.write_json_atomically(os.path.join(out_dir, f"{NAME}.json"), results, indent=1)
    plot_results(
        {**results, "loss_curves": {k: curves[k] for k in (VANILLA, AUGMENTED)}},
        os.path.join(out_dir, f"{NAME}.png"),
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run (tiny corpus, 20-step runs)"
    )
    parser.add_argument(
        "--out_dir", default=os.path.join(os.path.dirname(__file__), "..", "docs", "results")
    )
    parser.add_argument(
        "--work_dir", default=None, help="checkpoints (default: a new temporary directory)"
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
    run_experiment(out_dir=args.out_dir, work_dir=args.work_dir, config=config, quick=args.quick)
    with open(os.path.join(args.out_dir, f"{NAME}.md"), encoding="utf-8") as f:
        print(f.read())


if __name__ == "__main__":
    main()
