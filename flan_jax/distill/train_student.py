"""`flan-jax distill train`: a student trained from a checkpoint on a teacher store, bound by gin.

The gin file ``runs/distill.gin`` binds :func:`train_student`; the command line names the
inputs::

    flan-jax distill train --gin_file=runs/distill.gin --gin.STORE=/data/store \\
        --gin.STUDENT=/ckpt/flan_t5_small --gin.MODEL_DIR=/runs/student \\
        --gin.LOSS_KIND='"cross_entropy"'        # sample matching (default: sparse_kl)

Steps:

1. the student checkpoint (params, config, vocabulary) is loaded with
   :func:`flan_jax.checkpoints.load_model_checkpoint`;
2. the teacher store is re-rendered in the configured formats and tokenised by the student
   (:func:`flan_jax.distill.targets.build_teacher_examples`); with ``loss.kind ==
   "sparse_kl"`` (distribution matching) every CoT target token takes its row from the
   teacher's top-k through the tokenizer alignment, whose fallback rate is logged and
   written; with ``"cross_entropy"`` (sample matching) the rows are one-hot;
3. optionally, gold training problems (``train_data``, e.g. GSM8K train) in ``gold_ratios``
   formats are mixed in with one-hot rows (answer-only fine-tuning is ``store_dir=None``
   with ``gold_ratios={"zs_answer_only": 1}``); they are also the pool of in-context
   demonstrations;
4. :mod:`flan_jax.distill.student_training` runs the trainer's train step for
   ``config.num_steps`` steps, in chunks of ``save_period`` steps; after each chunk the
   parameters are saved as step directory ``MODEL_DIR/<step>`` (a self-contained checkpoint
   directory that ``flan-jax distill select`` and ``flan-jax infer`` read) and the chunk's
   per-step metrics are appended to ``MODEL_DIR/metrics.jsonl``.

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

from flan_jax import checkpoints
from flan_jax.distill import alignment, formats, student_training, targets
from flan_jax.distill.kl_loss import SPARSE_KL
from flan_jax.distill.teacher_store import TeacherStore
from flan_jax.evaluation.math_datasets import MathExample, load_math_dataset
from flan_jax.training.task_eval import write_json_atomically
from flan_jax.training.metrics import MetricsWriter

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
      history: per-step ``loss``, ``accuracy`` and ``grad_norm``.
    """

    model_dir: str
    saved_steps: tuple[int, ...]
    num_examples: Mapping[str, int]
    fallback_rate: float | None
    history: Mapping[str, list[float]]


def _require(value: Any, macro: str) -> Any:
    if value is None:
        raise ValueError(f"distill train: {macro} is not set; pass --gin.{macro}=...")
    return value


def build_training_examples(*, vocabulary, store: TeacherStore | None, distribution: bool,
                            teacher_ratios: Mapping[str, float],
                            gold: Sequence[MathExample],
                            gold_ratios: Mapping[str, float] | None, seed: int,
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
    in_context = {name for ratios in (teacher_ratios, gold_ratios or {})
                  for name, ratio in ratios.items()
                  if ratio > 0 and name in (formats.ICL_COT, formats.ICL_ANSWER_ONLY)}
    if in_context and not gold:
        raise ValueError(f"distill train: in-context formats {sorted(in_context)} draw their "
                         "demonstrations from TRAIN_DATA, which is not set.")
    k = store.k if store is not None else 1
    examples: list[targets.StudentExample] = []
    if store is not None:
        examples += targets.build_teacher_examples(
            store, vocabulary, distribution=distribution, ratios=teacher_ratios, seed=seed,
            k=k, pool=gold, format_config=format_config, stats=stats)
    if gold_ratios is not None:
        if not gold:
            raise ValueError("distill train: GOLD_RATIOS is set but TRAIN_DATA gives no "
                             "gold problems.")
        examples += targets.build_gold_examples(gold, vocabulary, ratios=gold_ratios,
                                                seed=seed, k=k, format_config=format_config)
    if not examples:
        raise ValueError("distill train: no training examples (an empty STORE and no "
                         "GOLD_RATIOS).")
    return examples


def _save_steps(num_steps: int, save_period: int) -> list[int]:
    """Multiples of ``save_period``, and the last step (none for a 0-step run)."""
    if num_steps == 0:
        return []
    return sorted(set(range(save_period, num_steps + 1, save_period)) | {num_steps})


def _train_and_save(trainer: student_training.StudentTrainer, batches, *, num_steps: int,
                    save_period: int, model_dir: str, vocab_path: str, extra_ids: int
                    ) -> tuple[list[int], dict[str, list[float]]]:
    """Runs the steps in chunks ending at the save steps; saves and logs after each chunk."""
    history: dict[str, list[float]] = collections.defaultdict(list)
    writer = MetricsWriter(model_dir, tensorboard=False)
    saved, done = [], 0
    try:
        for step in _save_steps(num_steps, save_period):
            chunk = student_training.run_student_training(trainer, batches,
                                                          num_steps=step - done)
            for offset in range(step - done):
                writer.write_scalars(done + offset + 1,
                                     {name: values[offset] for name, values in chunk.items()})
            for name, values in chunk.items():
                history[name] += values
            checkpoints.save_model_checkpoint(
                model_dir, params=trainer.params, config=trainer.model_config,
                vocab_path=vocab_path, extra_ids=extra_ids, step=step)
            saved.append(step)
            done = step
            _LOG.info("distill train: step %d, loss %.4f, saved %s/%d", step, chunk["loss"][-1],
                      model_dir, step)
    finally:
        writer.close()
    return saved, dict(history)


def train_student(*, store_dir: str | None, student_dir: str | None, model_dir: str | None,
                  config: student_training.StudentTrainConfig,
                  teacher_ratios: Mapping[str, float] | None = None,
                  train_data: str | None = None, train_data_format: str = "gsm8k",
                  gold_ratios: Mapping[str, float] | None = None,
                  format_config: formats.FormatConfig = formats.FormatConfig(),
                  batch_size: int = 8,
                  feature_lengths: Mapping[str, int] | None = None,
                  save_period: int = 100, student_step: int | None = None,
                  seed: int = 0) -> StudentRunResult:
    """Trains a student checkpoint on a teacher store; see the module docstring.

    Args:
      store_dir: the teacher store (gin macro STORE); None for gold-only fine-tuning.
      student_dir: the student's checkpoint directory (STUDENT).
      model_dir: the output checkpoint directory (MODEL_DIR).
      config: steps, learning rate, loss (its ``kind`` picks the mode) and optimizer.
      teacher_ratios: format ratios of the teacher samples (default: zero-shot CoT only).
      train_data: gold training problems in ``train_data_format`` (a
        :func:`flan_jax.evaluation.math_datasets.load_math_dataset` name).
      train_data_format: the format of ``train_data``.
      gold_ratios: format ratios of gold examples to mix in; None: no gold examples.
      format_config: the wording of the formats.
      batch_size: rows per step.
      feature_lengths: ``{"inputs": N, "targets": M}`` (default 512 / 256); longer examples
        are cut.
      save_period: save a step directory every this many steps (and at the end).
      student_step: the student step to start from (default: its latest).
      seed: format mixture and batch order seed.

    Returns:
      The saved steps, example counts, fallback rate and metrics.
    """
    student_dir, model_dir = _require(student_dir, "STUDENT"), _require(model_dir, "MODEL_DIR")
    if save_period <= 0 or batch_size <= 0:
        raise ValueError(f"distill train: SAVE_PERIOD ({save_period}) and BATCH_SIZE "
                         f"({batch_size}) must be positive.")
    teacher_ratios = teacher_ratios or {formats.ZS_COT: 1.0}
    feature_lengths = feature_lengths or {"inputs": 512, "targets": 256}
    missing = {"inputs", "targets"} - set(feature_lengths)
    if missing:
        raise ValueError(f"distill train: FEATURE_LENGTHS lacks {sorted(missing)}; got "
                         f"{dict(feature_lengths)}.")
    student = checkpoints.load_model_checkpoint(student_dir, step=student_step)
    metadata = checkpoints.read_model_metadata(student_dir)
    store = TeacherStore(store_dir) if store_dir is not None else None
    gold = load_math_dataset(train_data_format, train_data) if train_data else []
    distribution = config.loss.kind == SPARSE_KL
    stats = alignment.AlignmentStats()
    examples = build_training_examples(
        vocabulary=student.vocabulary, store=store, distribution=distribution,
        teacher_ratios=teacher_ratios, gold=gold, gold_ratios=gold_ratios, seed=seed,
        format_config=format_config, stats=stats)
    fallback_rate = stats.fallback_rate if distribution and store is not None else None
    counts = dict(collections.Counter(example.format for example in examples))
    _LOG.info("distill train: %d examples %s; alignment fallback rate %s", len(examples),
              counts, "n/a" if fallback_rate is None else f"{fallback_rate:.2%}")
    write_json_atomically(os.path.join(model_dir, SUMMARY_FILENAME), {
        "store": store_dir, "student": student_dir, "student_step": student.step,
        "loss_kind": config.loss.kind, "num_examples": counts,
        "alignment_fallback_rate": fallback_rate,
        "num_student_tokens": stats.num_student_tokens, "num_fallback": stats.num_fallback})
    trainer = student_training.build_student_trainer(student.config, config,
                                                     init_params=student.params)
    batches = targets.iterate_batches(examples, batch_size=batch_size,
                                      inputs_length=feature_lengths["inputs"],
                                      targets_length=feature_lengths["targets"], seed=seed)
    saved, history = _train_and_save(trainer, batches, num_steps=config.num_steps,
                                     save_period=save_period, model_dir=model_dir,
                                     vocab_path=str(metadata.vocab_path),
                                     extra_ids=metadata.extra_ids)
    return StudentRunResult(model_dir, tuple(saved), counts, fallback_rate, history)
