"""The end-to-end CoT distillation comparison on this CPU (not a timed test).

A small T5 teacher is trained on the demo collection's multi-step arithmetic CoT problems,
sampled on the training questions (correct samples and their top-5 kept in a teacher store),
and three smaller students are trained for the same steps from the same initialisation:
answer-only fine-tuning, CoT sample matching and CoT distribution matching.

Usage: python benchmarks/distill_experiment.py [--preset cpu|smoke] [--out_dir DIR]
Prints the table and writes distill_experiment.{md,json,png} to benchmarks/results/.
Needs matplotlib for the plot (`pip install -e ".[bench]"`).

Phases (each a function below):

1. :func:`load_arith_problems`: the demo collection's multi-step arithmetic problems
   (``flan_jax.tasks.demo.generators``), train and held-out by the collection's content split;
   the training problems are split into the teacher's own training set and the students'
   questions, with no question in both (as the paper's teacher had never seen GSM8K);
2. :func:`train_teacher`: a small T5 trained on the gold CoT solutions (zero-shot CoT format);
3. :func:`generate_teacher_samples` (producer (b)): the teacher sampled ``num_samples`` times
   per training question, correct samples and their top-k kept in a teacher store;
4. three students of a smaller T5, each from the same initialisation, same steps and batch:
   ``answer_only`` (gold "The answer is N", NLL), ``sample_matching`` (teacher samples, NLL)
   and ``distribution_matching`` (teacher samples, KL on the aligned top-k, missing mass
   dropped as in the paper);
5. held-out accuracy (greedy decoding, final answer compared with
   :func:`flan_jax.evaluation.answers.answers_match`) at evenly spaced steps, and the
   training loss at every step; a markdown table, a JSON file and a PNG plot.

The training losses of the modes are different quantities (NLL of gold answers, NLL of teacher
samples, KL to the teacher); the plot shows each against steps, and accuracy is the common
yardstick. Teacher and student share the demo vocabulary, so the alignment is near-identity
and its fallback rate is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any, cast

import experiment_io
import jax
import numpy as np
from matplotlib.figure import Figure  # The object API: no pyplot state, no display backend.

from flan_jax.data import file_io
from flan_jax.distill import alignment, formats, targets, teacher_generation
from flan_jax.distill.kl_loss import SPARSE_KL
from flan_jax.distill.teacher_store import TeacherStore, TeacherStoreWriter
from flan_jax.evaluation import answers
from flan_jax.evaluation.math_datasets import MathExample
from flan_jax.evaluation.splits import normalise_question
from flan_jax.inference import DecodeConfig, Predictor
from flan_jax.models import t5
from flan_jax.models.config import T5Config
from flan_jax.tasks.demo import generators, get_demo_vocabulary
from flan_jax.training import adafactor, checkpointing, losses, metrics, trainer

MODES = ("answer_only", "sample_matching", "distribution_matching")
_LOG = logging.getLogger(__name__)
_PER_TOKEN = "num_real_target_tokens"  # per-token losses, comparable across batches
_FORMAT_OF_MODE = {
    "answer_only": formats.ZS_ANSWER_ONLY,
    "sample_matching": formats.ZS_COT,
    "distribution_matching": formats.ZS_COT,
}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Sizes of the experiment.

    Attributes:
      num_train: the students' training questions (the teacher is sampled on them).
      num_teacher_train: the teacher's own training problems (disjoint from the students').
      num_heldout: held-out evaluation questions.
      teacher_steps, student_steps: train steps.
      batch_size: rows per step.
      num_samples, temperature, top_k: teacher sampling and stored top-k.
      num_evals: held-out evaluations per student (evenly spaced, the last at the end).
      teacher_dims, student_dims: ``(emb_dim, num_heads, head_dim, mlp_dim, layers)``.
      learning_rate: Adafactor learning rate of every run.
      inputs_length, targets_length: feature lengths.
      seed: data, initialisation and sampling seed.
    """

    num_train: int = 512
    num_teacher_train: int = 2048
    num_heldout: int = 128
    teacher_steps: int = 800
    student_steps: int = 600
    batch_size: int = 32
    num_samples: int = 4
    temperature: float = 0.7
    top_k: int = 5
    num_evals: int = 6
    teacher_dims: tuple[int, int, int, int, int] = (96, 4, 24, 192, 2)
    student_dims: tuple[int, int, int, int, int] = (48, 4, 12, 96, 1)
    learning_rate: float = 3e-3
    inputs_length: int = 64
    targets_length: int = 48
    seed: int = 0


_PRESETS = {
    "cpu": ExperimentConfig(),
    "smoke": ExperimentConfig(
        num_train=32,
        num_teacher_train=32,
        num_heldout=8,
        teacher_steps=6,
        student_steps=4,
        batch_size=8,
        num_samples=2,
        num_evals=1,
        teacher_dims=(32, 2, 8, 32, 1),
        student_dims=(16, 2, 8, 32, 1),
        targets_length=32,
    ),
}


def get_preset(name: str) -> ExperimentConfig:
    """The named experiment size ("cpu": the reported run; "smoke": a seconds-long check)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown experiment preset {name!r}; known: {sorted(_PRESETS)}")
    return _PRESETS[name]


@dataclasses.dataclass(frozen=True)
class ExperimentResult:
    """Where the outputs went, and the measured numbers."""

    table_path: str
    json_path: str
    plot_path: str
    results: dict[str, Any]


def load_arith_problems(split: str, count: int, seed: int) -> list[MathExample]:
    """Demo arithmetic problems as MathExamples (held-out = the collection's validation)."""
    return [
        MathExample(
            question=f["question"],
            answer=f["answer"],
            rationale=f["rationale"],
            source="demo_arith",
            id=f"demo_arith/{key}",
        )
        for key, f in generators.iterate_examples("arith", split, count, seed=seed)
    ]


def split_teacher_questions(
    problems: Sequence[MathExample], num_students: int
) -> tuple[list[MathExample], list[MathExample]]:
    """``(students' questions, teacher's training problems)``, no question in both."""
    students = list(problems[:num_students])
    seen = {normalise_question(p.question) for p in students}
    return students, [
        p for p in problems[num_students:] if normalise_question(p.question) not in seen
    ]


def _model_config(dims: Sequence[int], vocab_size: int) -> T5Config:
    emb, heads, head_dim, mlp, layers = dims
    return T5Config(
        vocab_size=vocab_size,
        emb_dim=emb,
        num_heads=heads,
        head_dim=head_dim,
        mlp_dim=mlp,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=64,
        dropout_rate=0.0,
        dtype="float32",
    )


LOG_PERIOD = 10


def _fit(
    cfg: ExperimentConfig,
    vocabulary,
    examples,
    model_config: T5Config,
    *,
    model_dir: str,
    steps: int,
    loss: losses.LossConfig,
    evaluator=None,
    eval_period: int = 0,
) -> tuple[trainer.TrainResult, list[tuple[int, float]]]:
    """One run through the one trainer; returns its result and the logged loss curve."""
    batches = targets.DistillationBatches(
        examples,
        batch_size=cfg.batch_size,
        inputs_length=cfg.inputs_length,
        targets_length=cfg.targets_length,
        seed=cfg.seed,
    )
    result = trainer.fit(
        model=t5.T5Model(model_config),
        batch_source=batches,
        vocabulary=vocabulary,
        model_dir=model_dir,
        train_steps=steps,
        batch_size=cfg.batch_size,
        feature_lengths={"inputs": cfg.inputs_length, "targets": cfg.targets_length},
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
        loss_config=loss,
        optimizer_config=adafactor.AdafactorConfig(min_dim_size_to_factor=32),
        checkpoint_config=checkpointing.CheckpointConfig(period=steps, keep=1),
        metrics_config=metrics.MetricsConfig(log_period=min(LOG_PERIOD, steps), tensorboard=False),
        evaluator=evaluator,
        eval_period=eval_period,
    )
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        curve = [
            (line["step"], line["train/loss"])
            for line in map(json.loads, f)
            if "train/loss" in line
        ]
    return result, curve


def evaluate_accuracy(
    model_config: T5Config,
    params: Any,
    vocabulary,
    problems,
    *,
    format_name: str,
    cfg: ExperimentConfig,
) -> float:
    """Held-out accuracy of greedy decoding in one zero-shot format."""
    prompts = [formats.render_inputs(p, format_name) for p in problems]
    decode = DecodeConfig(max_decode_len=cfg.targets_length, max_input_len=cfg.inputs_length)
    predictor = Predictor(t5.T5Model(model_config), params, vocabulary, decode)
    texts = cast(list[str], predictor.predict(prompts))  # num_samples == 1: one text per prompt
    return float(np.mean([answers.answers_match(t, p.answer) for t, p in zip(texts, problems)]))


def train_teacher(
    cfg: ExperimentConfig,
    vocabulary,
    train: Sequence[MathExample],
    model_config: T5Config,
    work_dir: str,
) -> tuple[Any, list[float]]:
    """The teacher: gold zero-shot CoT, cross-entropy."""
    examples = targets.build_gold_examples(
        train, vocabulary, ratios={formats.ZS_COT: 1.0}, seed=cfg.seed
    )
    result, curve = _fit(
        cfg,
        vocabulary,
        examples,
        model_config,
        model_dir=os.path.join(work_dir, "teacher"),
        steps=cfg.teacher_steps,
        loss=losses.LossConfig(chunk_size=512, normalization=_PER_TOKEN),
    )
    return jax.tree.map(np.asarray, result.state.params), [loss for _, loss in curve]


def _student_examples(
    mode: str, cfg: ExperimentConfig, vocabulary, train, store, stats: alignment.AlignmentStats
) -> list[targets.StudentExample]:
    if mode == "answer_only":
        return targets.build_gold_examples(
            train, vocabulary, k=cfg.top_k, seed=cfg.seed, ratios={formats.ZS_ANSWER_ONLY: 1.0}
        )
    return targets.build_teacher_examples(
        store,
        vocabulary,
        distribution=mode == "distribution_matching",
        k=cfg.top_k,
        ratios={formats.ZS_COT: 1.0},
        seed=cfg.seed,
        stats=stats,
    )


def train_student(
    mode: str,
    cfg: ExperimentConfig,
    vocabulary,
    examples,
    heldout,
    model_config: T5Config,
    work_dir: str,
) -> dict[str, Any]:
    """One student: its logged loss curve and held-out accuracy at evenly spaced steps."""
    kind = SPARSE_KL if mode == "distribution_matching" else "cross_entropy"
    loss = losses.LossConfig(kind=kind, chunk_size=512, normalization=_PER_TOKEN)

    def evaluate(params: Any) -> dict[str, float]:
        return {
            "heldout_accuracy": evaluate_accuracy(
                model_config,
                params,
                vocabulary,
                heldout,
                format_name=_FORMAT_OF_MODE[mode],
                cfg=cfg,
            )
        }

    start = time.perf_counter()
    result, curve = _fit(
        cfg,
        vocabulary,
        examples,
        model_config,
        model_dir=os.path.join(work_dir, mode),
        steps=cfg.student_steps,
        loss=loss,
        evaluator=evaluate,
        eval_period=max(1, cfg.student_steps // cfg.num_evals),
    )
    return {
        "loss_steps": [step for step, _ in curve],
        "loss": [value for _, value in curve],
        "heldout_accuracy": {
            str(step): scalars["heldout_accuracy"] for step, scalars in result.eval_history
        },
        "num_train_examples": len(examples),
        "seconds": time.perf_counter() - start,
    }


def generate_teacher_samples(
    cfg: ExperimentConfig,
    vocabulary,
    teacher_config: T5Config,
    teacher_params: Any,
    train: Sequence[MathExample],
    store_dir: str,
) -> teacher_generation.GenerationStats:
    """Producer (b) on the training questions."""
    decode = DecodeConfig(
        method="sample",
        num_samples=cfg.num_samples,
        temperature=cfg.temperature,
        max_decode_len=cfg.targets_length,
        max_input_len=cfg.inputs_length,
        batch_size=64,
        seed=cfg.seed,
    )
    generation = teacher_generation.GenerationConfig(decode=decode, store_top_k=cfg.top_k)
    names = teacher_generation.teacher_vocabulary(vocabulary, teacher_config.vocab_size)
    with TeacherStoreWriter(store_dir, k=cfg.top_k, vocabulary=names) as writer:
        return teacher_generation.generate_teacher_store(
            model=t5.T5Model(teacher_config),
            params=teacher_params,
            vocabulary=vocabulary,
            examples=train,
            writer=writer,
            generation=generation,
        )


def format_table(results: dict[str, Any]) -> str:
    """The markdown table: per mode, held-out accuracy at each evaluated step and final loss."""
    trained = {m: r for m, r in results["students"].items() if "skipped" not in r}
    steps = sorted({int(s) for r in trained.values() for s in r["heldout_accuracy"]})
    header = (
        ["mode", "train examples"] + [f"acc @{s}" for s in steps] + ["final train loss", "seconds"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode, r in results["students"].items():
        if mode not in trained:
            lines.append(f"| {mode} | 0 | {r['skipped']} |")
            continue
        accs = [f"{r['heldout_accuracy'].get(str(s), float('nan')):.3f}" for s in steps]
        lines.append(
            "| "
            + " | ".join(
                [mode, str(r["num_train_examples"])]
                + accs
                + [f"{r['loss'][-1]:.4f}", f"{r['seconds']:.0f}"]
            )
            + " |"
        )
    teacher = results["teacher"]
    teacher_line = (
        f"Teacher ({teacher['num_train_problems']} training problems, none of them a student "
        f"question): held-out accuracy {teacher['heldout_accuracy']:.3f} (zero-shot CoT, "
        f"greedy); kept {teacher['num_kept']} of {teacher['num_samples']} samples "
        f"({teacher['kept_rate']:.1%}); alignment fallback rate "
        f"{results['alignment_fallback_rate']:.2%}."
    )
    loss_line = (
        f"Final train loss = mean of the last {LOG_PERIOD} steps; the modes' losses "
        "are different quantities (answer-only NLL, sample NLL, KL to the teacher). "
        f"Teacher samples drawn at temperature {results['config']['temperature']}."
    )
    lines += ["", teacher_line, loss_line]
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], path: str) -> None:
    """Training loss vs steps and held-out accuracy vs steps, one line per mode (PNG)."""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for mode, r in results["students"].items():
        if "skipped" in r:
            continue
        ax_loss.plot(r["loss_steps"], r["loss"], label=mode)
        steps = sorted(int(s) for s in r["heldout_accuracy"])
        ax_acc.plot(steps, [r["heldout_accuracy"][str(s)] for s in steps], marker="o", label=mode)
    ax_loss.set(
        xlabel="step", ylabel="training loss (per token)", yscale="log", title="training loss"
    )
    ax_acc.set(xlabel="step", ylabel="held-out accuracy", title="held-out accuracy", ylim=(0, 1))
    for axis in (ax_loss, ax_acc):
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    experiment_io.save_png(fig, path)


def run_experiment(
    *,
    out_dir: str,
    work_dir: str | None = None,
    config: ExperimentConfig = ExperimentConfig(),
    name: str = "distill_experiment",
) -> ExperimentResult:
    """Runs every phase and writes ``{name}.md``, ``{name}.json`` and ``{name}.png``."""
    cfg = config
    os.makedirs(out_dir, exist_ok=True)
    work_dir = work_dir or tempfile.mkdtemp(prefix="distill_experiment_")
    vocabulary = get_demo_vocabulary()
    vocab_size = -(-vocabulary.vocab_size // 128) * 128
    train, teacher_train = split_teacher_questions(
        load_arith_problems("train", cfg.num_train + cfg.num_teacher_train, cfg.seed), cfg.num_train
    )
    heldout = load_arith_problems("validation", cfg.num_heldout, cfg.seed)
    teacher_config = _model_config(cfg.teacher_dims, vocab_size)
    student_config = _model_config(cfg.student_dims, vocab_size)
    start = time.perf_counter()
    teacher_params, teacher_loss = train_teacher(
        cfg, vocabulary, teacher_train, teacher_config, work_dir
    )
    teacher_accuracy = evaluate_accuracy(
        teacher_config, teacher_params, vocabulary, heldout, format_name=formats.ZS_COT, cfg=cfg
    )
    _LOG.info(
        "teacher: final loss %.4f, held-out accuracy %.3f", teacher_loss[-1], teacher_accuracy
    )
    store_dir = os.path.join(work_dir, "teacher_store")
    generation = generate_teacher_samples(
        cfg, vocabulary, teacher_config, teacher_params, train, store_dir
    )
    _LOG.info("teacher samples: kept %d of %d", generation.num_kept, generation.num_samples)
    store = TeacherStore(store_dir)
    stats = alignment.AlignmentStats()
    students = {}
    for mode in MODES:
        examples = _student_examples(mode, cfg, vocabulary, train, store, stats)
        if not examples:  # e.g. an untrained teacher that got no question right
            students[mode] = {"skipped": "no training examples (the teacher kept no sample)"}
            _LOG.info("%s: skipped, no training examples", mode)
            continue
        students[mode] = train_student(
            mode, cfg, vocabulary, examples, heldout, student_config, work_dir
        )
        _LOG.info("%s: held-out accuracy %s", mode, students[mode]["heldout_accuracy"])
    results = {
        "config": dataclasses.asdict(cfg),
        "device": str(jax.devices()[0].platform),
        "teacher": {
            "heldout_accuracy": teacher_accuracy,
            "loss": teacher_loss,
            "num_train_problems": len(teacher_train),
            "num_samples": generation.num_samples,
            "num_kept": generation.num_kept,
            "kept_rate": generation.kept_rate,
            "num_params": int(sum(x.size for x in jax.tree.leaves(teacher_params))),
        },
        "student_num_params": int(
            sum(x.size for x in jax.tree.leaves(t5.abstract_params(student_config)))
        ),
        "alignment_fallback_rate": stats.fallback_rate,
        "students": students,
        "total_seconds": time.perf_counter() - start,
    }
    paths = [os.path.join(out_dir, f"{name}.{ext}") for ext in ("md", "json", "png")]
    file_io.write_text_atomically(
        paths[0], f"# CoT distillation on the demo arithmetic tasks\n\n{format_table(results)}"
    )
    file_io.write_json_atomically(paths[1], results, indent=1)
    plot_results(results, paths[2])
    return ExperimentResult(paths[0], paths[1], paths[2], results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(_PRESETS))
    parser.add_argument("--out_dir", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="teacher sampling temperature (default: the preset's)",
    )
    parser.add_argument("--name", default="distill_experiment", help="output file stem")
    parser.add_argument(
        "--work_dir", default=None, help="teacher store (default: a new temporary directory)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = get_preset(args.preset)
    if args.temperature is not None:
        config = dataclasses.replace(config, temperature=args.temperature)
    result = run_experiment(
        out_dir=args.out_dir, work_dir=args.work_dir, config=config, name=args.name
    )
    with open(result.table_path, encoding="utf-8") as f:
        print(f.read())


if __name__ == "__main__":
    main()
