"""`flan-jax distill train`: a student trained from a checkpoint on a teacher store, bound by gin.

The gin file ``runs/distill.gin`` binds :func:`train_student`; the command line names the
inputs::

    flan-jax distill train --gin_file=runs/distill.gin --gin.STORE=/data/store \\
        --gin.STUDENT=/ckpt/flan_t5_small --gin.MODEL_DIR=/runs/student \\
        --gin.LOSS_KIND='"cross_entropy"'        # sample matching (default: sparse_kl)

Steps:

1. the student checkpoint's config and vocabulary are read
   (:func:`flan_jax.checkpoints.read_model_metadata`); its parameters become the trainer's
   initial parameters;
2. the teacher store is re-rendered in the configured formats and tokenised by the student
   (:func:`flan_jax.distill.targets.build_teacher_examples`); with ``loss.kind ==
   "sparse_kl"`` (distribution matching) every CoT target token takes its row from the
   teacher's top-k through the tokenizer alignment, whose fallback rate is logged and
   written; with ``"cross_entropy"`` (sample matching) the rows are one-hot;
3. optionally, gold training problems (``train_data``, e.g. GSM8K train) in ``gold_ratios``
   formats are mixed in with one-hot rows (answer-only fine-tuning is ``store_dir=None``
   with ``gold_ratios={"zs_answer_only": 1}``); they are also the pool of in-context
   demonstrations;
4. the one trainer (:func:`flan_jax.training.trainer.fit`) trains on
   :class:`flan_jax.distill.targets.DistillationBatches`: async orbax checkpoints every
   ``SAVE_PERIOD`` steps with the optimizer and data state (so a killed run resumes
   exactly; every step is kept for ``flan-jax distill select``, and each step directory
   loads in ``flan-jax infer``), metrics in ``MODEL_DIR/metrics.jsonl`` and TensorBoard,
   and the progress bar.

``MODEL_DIR/distill_summary.json`` records the inputs, the example counts per format and the
alignment fallback rate.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax

from flan_jax import checkpoints
from flan_jax.data.file_io import write_json_atomically
from flan_jax.data.vocabularies import get_vocabulary
from flan_jax.distill import alignment, formats, targets
from flan_jax.distill.kl_loss import SPARSE_KL
from flan_jax.distill.teacher_store import TeacherStore
from flan_jax.errors import ConfigError
from flan_jax.evaluation.math_datasets import MathExample, load_math_dataset
from flan_jax.evaluation.selection import list_checkpoint_steps
from flan_jax.models import t5
from flan_jax.models.config import T5Config
from flan_jax.training import (
    adafactor,
    checkpointing,
    losses,
    metrics,
    optimizers,
    train_step,
    trainer,
)

_LOG = logging.getLogger(__name__)
SUMMARY_FILENAME = "distill_summary.json"


@dataclasses.dataclass(frozen=True)
class StudentRunResult:
    """What a run produced.

    Attributes:
      model_dir: where the step directories and metrics went.
      saved_steps: the saved steps, ascending.
      num_examples: training examples per format.
      fallback_rate: the alignment's fallback rate (None without distribution matching).
      train: the trainer's result (final state and metrics).
    """

    model_dir: str
    saved_steps: tuple[int, ...]
    num_examples: Mapping[str, int]
    fallback_rate: float | None
    train: trainer.TrainResult


def _require(value: Any, macro: str) -> Any:
    if value is None:
        raise ValueError(f"distill train: {macro} is not set; pass --gin.{macro}=...")
    return value


def build_training_examples(
    *,
    vocabulary,
    store: TeacherStore | None,
    distribution: bool,
    teacher_ratios: Mapping[str, float],
    gold: Sequence[MathExample],
    gold_ratios: Mapping[str, float] | None,
    seed: int,
    format_config: formats.FormatConfig,
    stats: alignment.AlignmentStats,
) -> list[targets.StudentExample]:
    """Teacher-store examples (both matching modes) plus optional gold examples.

    Args:
      vocabulary: the student vocabulary.
      store: the teacher samples, or None for gold-only fine-tuning.
      distribution: rows from the aligned teacher top-k (distribution matching).
      teacher_ratios: format ratios of the teacher samples.
      gold: gold training problems (the in-context demonstration pool too).
      gold_ratios: format ratios of the gold examples; None leaves them out.
      seed: the format-mixture seed.
      format_config: the wording.
      stats: updated with the alignment's fallback counts.
    """
    in_context = {
        name
        for ratios in (teacher_ratios, gold_ratios or {})
        for name, ratio in ratios.items()
        if ratio > 0 and name in (formats.ICL_COT, formats.ICL_ANSWER_ONLY)
    }
    if in_context and not gold:
        raise ValueError(
            f"distill train: in-context formats {sorted(in_context)} draw their "
            "demonstrations from TRAIN_DATA, which is not set."
        )
    k = store.k if store is not None else 1
    examples: list[targets.StudentExample] = []
    if store is not None:
        examples += targets.build_teacher_examples(
            store,
            vocabulary,
            distribution=distribution,
            ratios=teacher_ratios,
            seed=seed,
            k=k,
            pool=gold,
            format_config=format_config,
            stats=stats,
        )
    if gold_ratios is not None:
        if not gold:
            raise ValueError(
                "distill train: GOLD_RATIOS is set but TRAIN_DATA gives no gold problems."
            )
        examples += targets.build_gold_examples(
            gold, vocabulary, ratios=gold_ratios, seed=seed, k=k, format_config=format_config
        )
    if not examples:
        raise ValueError("distill train: no training examples (an empty STORE and no GOLD_RATIOS).")
    return examples


def _initial_student_params(student_dir: str, step: int | None, model_config):
    """The trainer's ``initial_params`` hook: the student checkpoint, straight into shardings."""

    def load(abstract_params: Any, shardings: Any) -> Any:
        return checkpointing.load_initial_params(
            student_dir,
            model_config=model_config,
            abstract_params=abstract_params,
            shardings=shardings,
            step=step,
        )

    return load


def train_student(
    *,
    store_dir: str | None,
    student_dir: str | None,
    model_dir: str | None,
    train_steps: int,
    loss_config: losses.LossConfig,
    learning_rate: float | optax.Schedule = 1e-3,
    teacher_ratios: Mapping[str, float] | None = None,
    train_data: str | None = None,
    train_data_format: str = "gsm8k",
    gold_ratios: Mapping[str, float] | None = None,
    format_config: formats.FormatConfig = formats.FormatConfig(),
    batch_size: int = 8,
    feature_lengths: Mapping[str, int] | None = None,
    student_step: int | None = None,
    seed: int = 0,
    optimizer_config: optimizers.OptimizerConfig = adafactor.AdafactorConfig(),
    step_config: train_step.TrainStepConfig = train_step.TrainStepConfig(),
    partitioning_config: trainer.PartitioningConfig = trainer.PartitioningConfig(),
    checkpoint_config: checkpointing.CheckpointConfig = checkpointing.CheckpointConfig(
        period=100, keep=None
    ),
    metrics_config: metrics.MetricsConfig = metrics.MetricsConfig(),
) -> StudentRunResult:
    """Trains a student checkpoint on a teacher store; see the module docstring.

    Args:
      store_dir: the teacher store (gin macro STORE); None for gold-only fine-tuning.
      student_dir: the student's checkpoint directory (STUDENT).
      model_dir: the output checkpoint directory (MODEL_DIR); resumed if it has steps.
      train_steps: total train steps (TRAIN_STEPS).
      loss_config: the loss; its ``kind`` picks the mode (``"sparse_kl"``: distribution
        matching; ``"cross_entropy"``: sample matching and answer-only fine-tuning).
      learning_rate: a constant or a schedule (t5x fine-tuning: constant 1e-3).
      teacher_ratios: format ratios of the teacher samples (default: zero-shot CoT only).
      train_data: gold training problems in ``train_data_format`` (a
        :func:`flan_jax.evaluation.math_datasets.load_math_dataset` name).
      train_data_format: the format of ``train_data``.
      gold_ratios: format ratios of gold examples to mix in; None: no gold examples.
      format_config: the wording of the formats.
      batch_size: rows per step.
      feature_lengths: ``{"inputs": N, "targets": M}`` (default 512 / 256); longer examples
        are cut.
      student_step: the student step to start from (default: its latest).
      seed: format mixture and batch order seed.
      optimizer_config, step_config, partitioning_config, checkpoint_config, metrics_config:
        the trainer's knobs (:func:`flan_jax.training.trainer.fit`); checkpoints keep every
        saved step by default, for ``flan-jax distill select``.

    Returns:
      The saved steps, example counts, fallback rate and the trainer's result.
    """
    student_dir, model_dir = _require(student_dir, "STUDENT"), _require(model_dir, "MODEL_DIR")
    if batch_size <= 0:
        raise ValueError(f"distill train: BATCH_SIZE must be positive; got {batch_size}.")
    teacher_ratios = teacher_ratios or {formats.ZS_COT: 1.0}
    feature_lengths = feature_lengths or {"inputs": 512, "targets": 256}
    missing = {"inputs", "targets"} - set(feature_lengths)
    if missing:
        raise ValueError(
            f"distill train: FEATURE_LENGTHS lacks {sorted(missing)}; got {dict(feature_lengths)}."
        )
    trainer.initialize_distributed_run(partitioning_config)
    metadata = checkpoints.read_model_metadata(student_dir)
    if not isinstance(metadata.config, T5Config):
        # The teacher rows and features of distill.targets are encoder-decoder rows.
        raise ConfigError(
            f"distill train: STUDENT {student_dir} holds a {type(metadata.config).__name__} "
            "model; distillation trains encoder-decoder (T5) students only. Give a T5 "
            "checkpoint, or fine-tune a decoder-only model with `flan-jax train`."
        )
    vocabulary = get_vocabulary(str(metadata.vocab_path), metadata.extra_ids)
    store = TeacherStore(store_dir) if store_dir is not None else None
    gold = load_math_dataset(train_data_format, train_data) if train_data else []
    distribution = loss_config.kind == SPARSE_KL
    stats = alignment.AlignmentStats()
    examples = build_training_examples(
        vocabulary=vocabulary,
        store=store,
        distribution=distribution,
        teacher_ratios=teacher_ratios,
        gold=gold,
        gold_ratios=gold_ratios,
        seed=seed,
        format_config=format_config,
        stats=stats,
    )
    fallback_rate = stats.fallback_rate if distribution and store is not None else None
    counts = dict(collections.Counter(example.format for example in examples))
    _LOG.info(
        "distill train: %d examples %s; alignment fallback rate %s",
        len(examples),
        counts,
        "n/a" if fallback_rate is None else f"{fallback_rate:.2%}",
    )
    write_json_atomically(
        os.path.join(model_dir, SUMMARY_FILENAME),
        {
            "store": store_dir,
            "student": student_dir,
            "student_step": student_step,
            "loss_kind": loss_config.kind,
            "num_examples": counts,
            "alignment_fallback_rate": fallback_rate,
            "num_student_tokens": stats.num_student_tokens,
            "num_fallback": stats.num_fallback,
        },
    )
    batches = targets.DistillationBatches(
        examples,
        batch_size=batch_size,
        inputs_length=feature_lengths["inputs"],
        targets_length=feature_lengths["targets"],
        seed=seed,
        shard_index=jax.process_index(),
        num_shards=jax.process_count(),
    )
    result = trainer.fit(
        model=t5.T5Model(metadata.config),
        batch_source=batches,
        vocabulary=vocabulary,
        model_dir=model_dir,
        train_steps=train_steps,
        batch_size=batch_size,
        feature_lengths=feature_lengths,
        learning_rate=learning_rate,
        initial_params=_initial_student_params(student_dir, student_step, metadata.config),
        seed=seed,
        optimizer_config=optimizer_config,
        loss_config=loss_config,
        step_config=step_config,
        partitioning_config=partitioning_config,
        checkpoint_config=checkpoint_config,
        metrics_config=metrics_config,
    )
    saved = tuple(list_checkpoint_steps(model_dir))
    return StudentRunResult(model_dir, saved, counts, fallback_rate, result)
