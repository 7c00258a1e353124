"""Evaluation during and after training: teacher-forced loss and seqio inference metrics.

Two measurements per evaluation task, on a fixed list of its examples (the first
``max_examples`` of the split, in source order, so every evaluation of a run sees the same
examples):

- teacher-forced: the mean per-token cross-entropy of the targets and the token accuracy
  (``eval/<task>/loss``, ``eval/<task>/token_accuracy``);
- inference: greedy decoding by :class:`flan_jax.inference.Predictor`, the task's
  ``postprocess_fn`` on the decoded text and on the target text, then the task's predict
  metrics, as ``seqio.Evaluator`` would compute them (``eval/<task>/<metric>``, for
  example ``eval/demo__arith__zs_noopt/accuracy``).

:class:`Evaluator` loads the examples once and is called with the current parameters
every ``eval_period`` steps by the trainer; :func:`evaluate_checkpoint` is the
``flan-jax eval`` entry point.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import numpy as np
import seqio

from flan_jax import checkpoints, inference
from flan_jax.data import file_io, pipeline
from flan_jax.errors import ConfigError
from flan_jax.models.interface import Model
from flan_jax.training import losses


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how often.

    Attributes:
        eval_period: evaluate every ``eval_period`` train steps (0: only at the end).
        tasks: seqio task or mixture names to evaluate; empty means the tasks of the
            training mixture that have ``split``.
        split: the split to read (held-out instances).
        max_examples: examples per task (the first ones of the split); None for all.
        batch_size: rows per evaluation batch.
        teacher_forced: compute the teacher-forced loss.
        inference: decode and compute the task metrics.
        max_decode_len: generated tokens per example; None uses the targets length.
    """

    eval_period: int = 1000
    tasks: tuple[str, ...] = ()
    split: str = "validation"
    max_examples: int | None = 200
    batch_size: int = 32
    teacher_forced: bool = True
    inference: bool = True
    max_decode_len: int | None = None

    def __post_init__(self) -> None:
        if self.eval_period < 0:
            raise ConfigError(f"EvalConfig.eval_period must be >= 0; got {self.eval_period}")
        if self.batch_size < 1:
            raise ConfigError(f"EvalConfig.batch_size must be >= 1; got {self.batch_size}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(
                f"EvalConfig.max_examples must be >= 1 or None; got {self.max_examples}"
            )
        if isinstance(self.tasks, str):
            raise ConfigError(
                f"EvalConfig.tasks must be a tuple of names, got the string {self.tasks!r}; "
                f"write ({self.tasks!r},)"
            )


def list_eval_tasks(names: Sequence[str], split: str) -> list[str]:
    """Expands mixtures into their tasks and keeps the tasks that have ``split``."""
    tasks: list[str] = []
    for name in names:
        provider = seqio.get_mixture_or_task(name)
        members = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
        tasks += [t.name for t in members if split in t.splits and t.name not in tasks]
    return tasks


def _make_loss_fn(model: Model):
    # Summed loss over real tokens, no z-loss: the mean follows after summing all batches.
    loss_config = losses.LossConfig(z_loss=0.0, normalization="sum")

    @jax.jit
    def loss_fn(params, batch):
        hidden = model.hidden_states(params, batch)
        stats = losses.compute_loss(hidden, model.output_kernel(params), batch, loss_config)
        return stats.loss, stats.num_correct, stats.num_real_target_tokens

    return loss_fn


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


class Evaluator:
    """Evaluates parameters on fixed examples of several tasks.

    Args:
        model: the model.
        vocabulary: decodes predictions (the tasks' output vocabulary).
        task_names: tasks or mixtures (expanded by :func:`list_eval_tasks`).
        task_feature_lengths: ``{"inputs": .., "targets": ..}`` of the evaluation batches.
        config: evaluation options.
    """

    def __init__(
        self,
        model: Model,
        vocabulary: seqio.Vocabulary,
        task_names: Sequence[str],
        task_feature_lengths: Mapping[str, int],
        config: EvalConfig,
    ) -> None:
        self.model = model
        self.config = config
        self.vocabulary = vocabulary
        self.lengths = dict(task_feature_lengths)
        self.decode_config = inference.DecodeConfig(
            method="greedy",
            max_decode_len=config.max_decode_len or self.lengths["targets"],
            batch_size=config.batch_size,
            max_input_len=self.lengths["inputs"],
        )
        self.task_names = list_eval_tasks(task_names, config.split)
        if not self.task_names:
            raise ValueError(
                f"no evaluation task among {list(task_names)} has split {config.split!r}"
            )
        self.examples = {
            name: pipeline.make_eval_examples(
                name,
                config.split,
                task_feature_lengths=self.lengths,
                max_examples=config.max_examples,
            )
            for name in self.task_names
        }
        self._loss_fn = _make_loss_fn(self.model)

    def _batches(self, examples):
        return pipeline.make_eval_batches(
            examples, batch_size=self.config.batch_size, task_feature_lengths=self.lengths
        )

    def compute_loss(self, params: Any, task_name: str) -> dict[str, float]:
        """Teacher-forced mean token loss and token accuracy of one task."""
        total = correct = tokens = 0.0
        for batch, _ in self._batches(self.examples[task_name]):
            loss, num_correct, num_tokens = self._loss_fn(params, batch)
            total += float(loss)
            correct += float(num_correct)
            tokens += float(num_tokens)
        return {"loss": total / max(tokens, 1.0), "token_accuracy": correct / max(tokens, 1.0)}

    def predict(self, params: Any, task_name: str) -> list[str]:
        """Greedy-decoded texts of one task's examples, in order."""
        predictor = inference.Predictor(self.model, params, self.vocabulary, self.decode_config)
        completions = predictor.predict_tokens(
            [example["inputs"] for example in self.examples[task_name]]
        )
        # Greedy decoding (num_samples == 1): one array per example.
        return [predictor.detokenize(tokens) for tokens in cast(list[np.ndarray], completions)]

    def evaluate_task(self, params: Any, task_name: str) -> dict[str, float]:
        """Every enabled measurement of one task, keyed by metric name."""
        metrics: dict[str, float] = {}
        if self.config.teacher_forced:
            metrics.update(self.compute_loss(params, task_name))
        if self.config.inference:
            task = seqio.get_mixture_or_task(task_name)
            predictions = self.predict(params, task_name)
            metrics.update(compute_task_metrics(task, self.examples[task_name], predictions))
        return metrics

    def __call__(self, params: Any) -> dict[str, float]:
        """``{"eval/<task>/<metric>": value}`` over every task."""
        out: dict[str, float] = {}
        # Decoding and the eval loss have no sharding annotations of their own; running
        # them without the train mesh context lets jit follow the parameters' shardings.
        with nn.logical_axis_rules(()):
            for name in self.task_names:
                for metric, value in self.evaluate_task(params, name).items():
                    out[f"eval/{name}/{metric}"] = value
        return out


def evaluate_checkpoint(
    *,
    checkpoint_path: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    output_path: str | None = None,
    config: EvalConfig = EvalConfig(),
    step: int | None = None,
) -> dict[str, float]:
    """Evaluates a checkpoint directory on a task or mixture (``flan-jax eval``).

    Args:
        checkpoint_path: a flan_jax checkpoint directory (training run or converted).
        mixture_or_task_name: what to evaluate; mixtures are expanded into tasks.
        task_feature_lengths: evaluation lengths.
        output_path: where to write the metrics JSON (atomically); None writes nothing.
        config: evaluation options (``tasks`` is ignored: ``mixture_or_task_name`` names them).
        step: the checkpoint step; the latest when None.

    Returns:
        ``{"eval/<task>/<metric>": value}``.
    """
    loaded = checkpoints.load_model_checkpoint(checkpoint_path, step=step)
    evaluator = Evaluator(
        loaded.model, loaded.vocabulary, [mixture_or_task_name], task_feature_lengths, config
    )
    results = evaluator(loaded.params)
    for name, value in sorted(results.items()):
        logging.info("%s = %.4f", name, value)
    if output_path:
        file_io.write_json_atomically(
            output_path,
            {
                "checkpoint": os.path.abspath(checkpoint_path),
                "step": loaded.step,
                "metrics": dict(sorted(results.items())),
            },
        )
    return results
