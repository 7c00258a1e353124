"""Evaluation during training: teacher-forced loss and the evaluation suites' scores.

Every ``eval_period`` steps the trainer calls an :class:`Evaluator` with the current
parameters. It measures, on a fixed list of examples (the first ``max_examples`` of each
unit, in source order, so every evaluation of a run sees the same examples):

- teacher-forced, per evaluation task: the mean per-token cross-entropy of the targets and
  the token accuracy (``eval/<task>/loss``, ``eval/<task>/token_accuracy``);
- inference, through the same suites and scoring as ``flan-jax eval``
  (:mod:`flan_jax.evaluation.suites`, run by :func:`flan_jax.evaluation.runner.run_suite`
  with :class:`flan_jax.inference.Predictor` decoding greedily): the evaluation tasks as a
  ``tasks:`` suite scored by their own metric_fns (``eval/<task>/<metric>``, for example
  ``eval/demo__arith__zs_noopt/accuracy``), and every suite of ``EvalConfig.suites``
  (``eval/<benchmark>/<metric>``, ``eval/<suite>/<average>``), e.g. ``"math:gsm8k"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import seqio

from flan_jax import inference
from flan_jax.data import pipeline
from flan_jax.errors import ConfigError
from flan_jax.evaluation import runner, suites
from flan_jax.evaluation.task_suite import TaskSuite
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
        suites: suite specs scored every evaluation besides the tasks (the ``--suite``
            values of ``flan-jax eval``, e.g. ``("math:gsm8k", "flan_t5:bbh_cot")``); their
            data is found as ``flan-jax eval`` finds it (``data_paths`` gin binding or
            ``$FLAN_JAX_DATA_DIR``), cut to ``max_examples`` per unit.
    """

    eval_period: int = 1000
    tasks: tuple[str, ...] = ()
    split: str = "validation"
    max_examples: int | None = 200
    batch_size: int = 32
    teacher_forced: bool = True
    inference: bool = True
    max_decode_len: int | None = None
    suites: tuple[str, ...] = ()

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
        if isinstance(self.suites, str):
            raise ConfigError(
                f"EvalConfig.suites must be a tuple of suite specs, got the string "
                f"{self.suites!r}; write ({self.suites!r},)"
            )
        for spec in self.suites:
            suites.parse_suite_spec(spec)


def _make_loss_fn(model: Model):
    # Summed loss over real tokens, no z-loss: the mean follows after summing all batches.
    loss_config = losses.LossConfig(z_loss=0.0, normalization="sum")

    @jax.jit
    def loss_fn(params, batch):
        hidden = model.hidden_states(params, batch)
        stats = losses.compute_loss(hidden, model.output_kernel(params), batch, loss_config)
        return stats.loss, stats.num_correct, stats.num_real_target_tokens

    return loss_fn


class Evaluator:
    """Evaluates parameters on fixed examples of tasks and suites.

    Args:
        model: the model.
        vocabulary: tokenises prompts and decodes predictions (the tasks' vocabulary).
        task_names: tasks or mixtures (expanded into their tasks that have the split).
        task_feature_lengths: ``{"inputs": .., "targets": ..}`` of the evaluation batches
            (inputs: the prompt length; targets: the decoding length unless
            ``config.max_decode_len``).
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
        self.task_suite = TaskSuite(
            "tasks",
            items=task_names,
            max_examples=config.max_examples,
            split=config.split,
            task_feature_lengths=self.lengths,
        )
        self.task_names = self.task_suite.task_names
        self.suites = [
            suites.make_suite(spec, max_examples=config.max_examples, task_options=self._options())
            for spec in config.suites
        ]
        self._loss_fn = _make_loss_fn(self.model)

    def _options(self) -> dict[str, Any]:
        return {"split": self.config.split, "task_feature_lengths": self.lengths}

    def _examples(self, task_name: str) -> Sequence[Mapping[str, Any]]:
        return self.task_suite.load(suites.Unit(task_name, task_name)).examples

    def compute_loss(self, params: Any, task_name: str) -> dict[str, float]:
        """Teacher-forced mean token loss and token accuracy of one task."""
        total = correct = tokens = 0.0
        batches = pipeline.make_eval_batches(
            self._examples(task_name),
            batch_size=self.config.batch_size,
            task_feature_lengths=self.lengths,
            feature_format=self.model.feature_format,
        )
        for batch, _ in batches:
            loss, num_correct, num_tokens = self._loss_fn(params, batch)
            total += float(loss)
            correct += float(num_correct)
            tokens += float(num_tokens)
        return {"loss": total / max(tokens, 1.0), "token_accuracy": correct / max(tokens, 1.0)}

    def _predict_fn(self, params: Any) -> runner.Predict:
        return inference.Predictor(self.model, params, self.vocabulary, self.decode_config).predict

    def evaluate_task(self, params: Any, task_name: str) -> dict[str, float]:
        """Every enabled measurement of one task, keyed by metric name."""
        metrics: dict[str, float] = {}
        if self.config.teacher_forced:
            metrics.update(self.compute_loss(params, task_name))
        if self.config.inference:
            unit = suites.Unit(task_name, task_name)
            data = self.task_suite.load(unit)
            predictions = self._predict_fn(params)(data.prompts)
            scores = self.task_suite.score(unit, data, predictions)
            metrics.update({k: v for k, v in scores.items() if k != "num_examples"})
        return metrics

    def __call__(self, params: Any) -> dict[str, float]:
        """``{"eval/<name>/<metric>": value}`` over every task and suite."""
        out: dict[str, float] = {}
        # Decoding and the eval loss have no sharding annotations of their own; running
        # them without the train mesh context lets jit follow the parameters' shardings.
        with nn.logical_axis_rules(()):
            if self.config.teacher_forced:
                for name in self.task_names:
                    for metric, value in self.compute_loss(params, name).items():
                        out[f"eval/{name}/{metric}"] = value
            scored = ([self.task_suite] if self.config.inference else []) + self.suites
            predict = self._predict_fn(params)
            for suite in scored:
                result = runner.run_suite(suite, predict)
                out.update({f"eval/{name}": value for name, value in result.scalars().items()})
        return out
