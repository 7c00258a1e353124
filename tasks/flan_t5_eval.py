"""The Flan-T5 evaluation suite as seqio tasks: one per setting and subject / task / language.

Names are `flan_t5_eval__<setting>__<subset>`, built by `make_eval_task_name` and parsed back
by `parse_eval_task_name`:

    flan_t5_eval__mmlu_direct__abstract_algebra    flan_t5_eval__bbh_cot__navigate
    flan_t5_eval__tydiqa_direct__bengali           flan_t5_eval__mgsm_cot__sw

Each task has one split, "test" (MMLU's test questions, BBH's examples, TyDiQA-GoldP's dev
questions, MGSM's problems), read from the original files when the dataset is built
(`flan_jax.evaluation.flan_t5_data`), and the suite's own scoring as its metric: the
postprocessor keeps a prediction's text and turns a target into its gold answers, and the
metric is `flan_t5_suite.score_predictions`. So seqio's evaluator and
`flan_t5_suite.score_suite` report the same numbers.

Examples carry `inputs`, `targets` (the reference completion), `answers` (the golds),
`num_options` (0 for free-form answers) and `_example_key`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import seqio
import tensorflow as tf

from flan_jax import errors
from flan_jax.evaluation import flan_t5_data, flan_t5_suite
from flan_jax.tasks import data_paths, sources

PREFIX = "flan_t5_eval"
SPLIT = "test"
_SEPARATOR = "__"
_SIGNATURE = {
    "inputs": tf.TensorSpec([], tf.string),
    "targets": tf.TensorSpec([], tf.string),
    "answers": tf.TensorSpec([None], tf.string),
    "num_options": tf.TensorSpec([], tf.int32),
    "_example_key": tf.TensorSpec([], tf.string),
}


def make_eval_task_name(setting: str, subset: str) -> str:
    """`("bbh_cot", "navigate")` -> `"flan_t5_eval__bbh_cot__navigate"`."""
    flan_t5_suite.get_setting(setting)
    if not subset or _SEPARATOR in subset:
        raise ValueError(f"Subset names must be non-empty and without '__', got {subset!r}.")
    return _SEPARATOR.join((PREFIX, setting, subset))


def parse_eval_task_name(name: str) -> tuple[str, str]:
    """Inverse of `make_eval_task_name`: (setting, subset); ValueError for other names."""
    parts = name.split(_SEPARATOR)
    if len(parts) != 3 or parts[0] != PREFIX or parts[1] not in flan_t5_suite.SETTINGS:
        raise ValueError(
            f"Task name {name!r} is not of the form {PREFIX}__<setting>__<subset> with a setting "
            f"in {list(flan_t5_suite.SETTINGS)}."
        )
    return parts[1], parts[2]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def postprocess(output: Any, example: Any = None, is_target: bool = False) -> Any:
    """A prediction stays its text; a target becomes `{"answers": [...], "num_options": k}`."""
    if not is_target:
        return _text(output)
    return {
        "answers": [_text(a) for a in example["answers"]],
        "num_options": int(example["num_options"]),
    }


def make_metric_fn(setting: str):
    """seqio's `metric_fn(targets, predictions)` for `setting`: `score_predictions`'s dict."""

    def metric_fn(targets: Sequence[dict], predictions: Sequence[str]) -> dict[str, float]:
        examples = [
            flan_t5_data.EvalExample(
                key="",
                inputs="",
                target="",
                answers=tuple(t["answers"]),
                num_options=t["num_options"],
            )
            for t in targets
        ]
        return flan_t5_suite.score_predictions(setting, examples, predictions)

    metric_fn.__name__ = f"flan_t5_{setting}"
    return metric_fn


def _make_source(
    setting: str, subset: str, paths: data_paths.DataPaths | None, seed: int
) -> seqio.DataSource:
    def generate():
        for example in flan_t5_suite.load_examples(setting, subset, paths=paths, seed=seed):
            yield {
                "inputs": example.inputs,
                "targets": example.target,
                "answers": list(example.answers),
                "num_options": example.num_options,
                "_example_key": example.key,
            }

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split, shuffle_files, seed  # one split; evaluation order is the file's
        # A missing file raised while reading reaches the caller through find_user_error.
        return tf.data.Dataset.from_generator(
            lambda: errors.carry_user_errors(generate), output_signature=_SIGNATURE
        )

    return seqio.FunctionDataSource(dataset_fn, splits=[SPLIT])


def register_flan_t5_eval_tasks(
    vocabulary: seqio.Vocabulary,
    *,
    settings: Sequence[str] = flan_t5_suite.SETTING_NAMES,
    paths: data_paths.DataPaths | None = None,
    seed: int = 0,
) -> list[str]:
    """Registers the suite's tasks (every catalog subset of `settings`); returns their names.

    Idempotent and reads no data: a missing file is reported by name when a task's dataset
    is read.

    Args:
      vocabulary: the output features' vocabulary.
      settings: which of `flan_t5_suite.SETTING_NAMES` to register.
      paths: data locations; None resolves them when the data is read.
      seed: the TyDiQA exemplar draw's seed.
    """
    names = []
    for setting in settings:
        benchmark = flan_t5_suite.get_setting(setting).benchmark
        for subset in flan_t5_data.benchmark_subsets(benchmark):
            name = make_eval_task_name(setting, subset)
            names.append(name)
            if name in seqio.TaskRegistry.names():
                continue
            seqio.TaskRegistry.add(
                name,
                source=_make_source(setting, subset, paths, seed),
                preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
                output_features=sources.make_output_features(vocabulary),
                postprocess_fn=postprocess,
                metric_fns=[make_metric_fn(setting)],
            )
    return names
