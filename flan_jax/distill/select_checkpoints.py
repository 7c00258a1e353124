"""`flan-jax distill select`: math accuracy of every saved step, and the step chosen on dev sets.

For every step directory of a checkpoint directory (e.g. ``MODEL_DIR`` of ``flan-jax distill
train``), each evaluation set, read in its original format by
:func:`flan_jax.evaluation.math_datasets.load_math_dataset`, is rendered in one zero-shot
format (:func:`flan_jax.distill.formats.render_inputs`) and decoded by
:class:`flan_jax.inference.Predictor`: greedily, or ``num_samples`` times at ``temperature``
and reduced by majority vote (self-consistency).
Predictions are scored by :mod:`flan_jax.evaluation.selection` (final answers compared with
:func:`flan_jax.evaluation.answers.answers_match`), which builds the
:class:`~flan_jax.evaluation.selection.AccuracyTable` and picks the step with the best mean
accuracy on the dev sets. Dev sets must share no question with the training data; given the
training problems, :func:`run_selection` checks that with
:func:`flan_jax.evaluation.splits.check_no_overlap` before decoding anything.

Worked example::

    result = run_selection(checkpoint_dir="/runs/student",
                           eval_sets={"gsm8k": gsm8k_test, "svamp": svamp},
                           dev_sets=["svamp"], decode=DecodeConfig(max_decode_len=256),
                           format_name="zs_cot", training=gsm8k_train)
    result.table.to_markdown(); result.selection.step
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from flan_jax import checkpoints
from flan_jax.data.file_io import write_json_atomically
from flan_jax.distill import formats
from flan_jax.errors import ConfigError
from flan_jax.evaluation import selection, splits
from flan_jax.evaluation.math_datasets import MathExample, load_math_dataset
from flan_jax.inference import DecodeConfig, Predictor

ZERO_SHOT_FORMATS = (formats.ZS_COT, formats.ZS_ANSWER_ONLY)
# Greedy by default; chains of thought need room.
SELECTION_DECODE = DecodeConfig(max_decode_len=256)


@dataclasses.dataclass(frozen=True)
class SelectionResult:
    """The accuracy table and the selected step."""

    checkpoint_dir: str
    table: selection.AccuracyTable
    selection: selection.Selection
    decode: DecodeConfig
    format_name: str

    def to_json_dict(self) -> dict[str, Any]:
        """The table, per-step accuracies, the selection and the decoding options."""
        accuracy = {
            str(step): {name: self.table.accuracy(step, name) for name in self.table.set_sizes}
            for step in self.table.steps
        }
        return {
            "checkpoint_dir": self.checkpoint_dir,
            "decode": dataclasses.asdict(self.decode),
            "format": self.format_name,
            "table": self.table.to_json_dict(),
            "accuracy": accuracy,
            "selection": dataclasses.asdict(self.selection),
        }


def parse_eval_specs(specs: Sequence[str]) -> dict[str, str]:
    """``["gsm8k=PATH", "svamp=PATH"]`` -> ``{"gsm8k": PATH, ...}`` (names are data set formats)."""
    parsed: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(
                f"--eval expects NAME=PATH (e.g. svamp=/data/svamp.json); got {spec!r}."
            )
        if name in parsed:
            raise ConfigError(f"--eval names {name!r} twice.")
        parsed[name] = path
    return parsed


def load_eval_sets(
    paths: Mapping[str, str], *, max_examples: int | None = None
) -> dict[str, list[MathExample]]:
    """Each set in its original format (its name is the format), cut to ``max_examples``."""
    return {name: load_math_dataset(name, path)[:max_examples] for name, path in paths.items()}


def make_checkpoint_predictor(
    checkpoint_dir: str,
    decode: DecodeConfig,
    *,
    format_name: str = formats.ZS_COT,
    format_config: formats.FormatConfig = formats.FormatConfig(),
) -> selection.PredictFn:
    """``predict(step, examples)`` for :func:`selection.evaluate_checkpoints`.

    Each call restores step ``step`` (the last restored step is kept for the next set).
    Greedy predictions are texts; with ``num_samples > 1`` each is the list of its samples.
    """
    cache: dict[int, checkpoints.LoadedCheckpoint] = {}

    def predict(step: int, examples: Sequence[MathExample]) -> list[Any]:
        if step not in cache:
            cache.clear()
            cache[step] = checkpoints.load_model_checkpoint(checkpoint_dir, step=step)
        loaded = cache[step]
        prompts = [formats.render_inputs(e, format_name, config=format_config) for e in examples]
        return Predictor(loaded.model, loaded.params, loaded.vocabulary, decode).predict(prompts)

    return predict


def run_selection(
    *,
    checkpoint_dir: str,
    eval_sets: Mapping[str, Sequence[MathExample]],
    dev_sets: Sequence[str],
    decode: DecodeConfig = SELECTION_DECODE,
    format_name: str = formats.ZS_COT,
    training: Sequence[MathExample] | None = None,
    format_config: formats.FormatConfig = formats.FormatConfig(),
) -> SelectionResult:
    """Accuracy of every saved step on every set, and the best step on ``dev_sets``.

    Args:
      checkpoint_dir: a checkpoint directory with step directories.
      eval_sets: set name -> problems.
      dev_sets: the selection sets (names in ``eval_sets``).
      decode: decoding options.
      format_name: the zero-shot format the questions are rendered in.
      training: the training problems; when given, a dev set sharing a question with them
        raises ValueError before anything is decoded.
      format_config: the wording of the format.
    """
    if format_name not in ZERO_SHOT_FORMATS:
        raise ValueError(
            f"run_selection: format_name must be one of {ZERO_SHOT_FORMATS}; got {format_name!r}."
        )
    unknown = sorted(set(dev_sets) - set(eval_sets))
    if unknown or not dev_sets:
        raise ValueError(
            f"dev set(s) {unknown or list(dev_sets)} are not among the evaluation "
            f"sets {sorted(eval_sets)}."
        )
    if training is not None:
        for name in dev_sets:
            splits.check_no_overlap(eval_sets[name], training, what=f"dev set {name!r}")
    steps = selection.list_checkpoint_steps(checkpoint_dir)
    if not steps:
        raise FileNotFoundError(f"{checkpoint_dir} holds no checkpoint step directories.")
    predict = make_checkpoint_predictor(
        checkpoint_dir, decode, format_name=format_name, format_config=format_config
    )
    table = selection.evaluate_checkpoints(steps, eval_sets, predict)
    best = selection.select_best_checkpoint(table, dev_sets=list(dev_sets))
    return SelectionResult(os.fspath(checkpoint_dir), table, best, decode, format_name)


def write_selection(path: str, result: SelectionResult) -> None:
    """Writes :meth:`SelectionResult.to_json_dict` atomically."""
    write_json_atomically(path, result.to_json_dict())
