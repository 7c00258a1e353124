"""The embedded CPU demo: `flan-jax train` with no arguments.

It trains the tiny T5 on the built-in synthetic instruction collection
(:mod:`flan_jax.tasks.demo`) and shows what instruction tuning buys, per task cluster:

- accuracy on held-out *instances* of the trained templates ("seen templates"), and
- accuracy on held-out *templates*, instructions never trained on ("unseen templates"),

before training (random initialisation) and after. It prints the results table, leaves a
checkpoint in ``MODEL_DIR`` (default ``./runs/demo``) and prints the ``flan-jax infer``
command that runs the checkpoint on a new instruction. Nothing is downloaded: the tasks
are generated and the SentencePiece vocabulary is built locally.

The run is configured by ``gin_configs/runs/demo_cpu.gin``; this module only orchestrates
(evaluate, train, evaluate, report).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
from absl import logging as absl_logging

from flan_jax.data import file_io
from flan_jax.models.interface import Model
from flan_jax.tasks import demo as demo_tasks
from flan_jax.training import task_eval, trainer

# A new instruction for the printed `flan-jax infer` example, worded unlike any template.
NEW_INSTRUCTIONS = (
    "Tell me whether this review is positive or negative: The pasta was very tasty.",
    "Lena has 4 shells. Lena finds 3 more. How many shells does Lena have now? Explain your steps.",
)


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Accuracies (percent) per cluster and split of templates.

    Attributes:
        before: ``{cluster: {"seen": acc, "unseen": acc}}`` at initialisation.
        after: the same after training.
        model_dir: where the checkpoint is.
        train: the trainer's result.
    """

    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    model_dir: str
    train: trainer.TrainResult


def measure_cluster_accuracy(
    evaluator: task_eval.Evaluator, params: Any, eval_tasks: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, float]]:
    """Exact-match accuracy per cluster on its seen- and unseen-template tasks."""
    return {
        cluster: {
            kind: evaluator.evaluate_task(params, name)["accuracy"] for kind, name in tasks.items()
        }
        for cluster, tasks in eval_tasks.items()
    }


def format_results_table(
    before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]
) -> str:
    """The printed table: one row per cluster and a mean row; accuracies in percent."""
    header = (
        f"{'cluster':<12}{'held-out instances':>24}{'held-out templates':>24}\n"
        f"{'':<12}{'before':>12}{'after':>12}{'before':>12}{'after':>12}"
    )
    lines = [header, "-" * 60]
    columns = [(before, "seen"), (after, "seen"), (before, "unseen"), (after, "unseen")]
    for cluster in before:
        cells = "".join(f"{table[cluster][kind]:>11.1f}%" for table, kind in columns)
        lines.append(f"{cluster:<12}{cells}")
    means = "".join(f"{sum(t[c][kind] for c in t) / max(len(t), 1):>11.1f}%" for t, kind in columns)
    lines += ["-" * 60, f"{'mean':<12}{means}"]
    return "\n".join(lines)


def write_new_instructions(model_dir: str) -> str:
    """Writes the example instructions as JSONL for `flan-jax infer`; returns the path."""
    path = os.path.join(model_dir, "new_instructions.jsonl")
    file_io.write_jsonl(path, ({"inputs": text} for text in NEW_INSTRUCTIONS))
    return path


def run_demo(
    *,
    model_dir: str,
    model: Model,
    task_feature_lengths: Mapping[str, int],
    train_fn: Callable[[], trainer.TrainResult],
    num_eval_examples: int = 50,
    eval_batch_size: int = 50,
    seed: int = 0,
) -> DemoResult:
    """Evaluates at initialisation, trains, evaluates again and prints the report.

    Args:
        model_dir: the run's checkpoint directory (the same ``MODEL_DIR`` as ``train_fn``'s).
        model: the model (the same as ``train_fn``'s).
        task_feature_lengths: evaluation lengths.
        train_fn: the gin-bound :func:`flan_jax.training.trainer.train`.
        num_eval_examples: held-out examples per evaluation task.
        eval_batch_size: rows per decoding batch.
        seed: the trainer's seed (the "before" model is its initialisation).
    """
    # seqio warns once per task that the generated demo tasks are not cached; the demo
    # knows, and the warnings would bury its table.
    absl_logging.set_verbosity(absl_logging.ERROR)
    vocabulary = demo_tasks.get_demo_vocabulary()
    demo_tasks.register_demo_tasks(vocabulary)
    eval_tasks = demo_tasks.demo_eval_tasks()
    names = [name for tasks in eval_tasks.values() for name in tasks.values()]
    evaluator = task_eval.Evaluator(
        model,
        vocabulary,
        names,
        task_feature_lengths,
        task_eval.EvalConfig(
            max_examples=num_eval_examples,
            batch_size=eval_batch_size,
            teacher_forced=False,
            inference=True,
        ),
    )
    print(
        f"demo: evaluating the untrained model on {len(names)} tasks x "
        f"{num_eval_examples} held-out examples ...",
        flush=True,
    )
    initial = model.init_params(jax.random.key(seed))
    before = measure_cluster_accuracy(evaluator, initial, eval_tasks)
    print("demo: training ...", flush=True)
    result = train_fn()
    after = measure_cluster_accuracy(evaluator, result.state.params, eval_tasks)
    report = format_results_table(before, after)
    prompts = write_new_instructions(model_dir)
    print("\nExact-match accuracy on held-out examples (greedy decoding)\n")
    print(report)
    print(
        f"\ntrained {result.step} steps; packing efficiency "
        f"{100 * result.packing_efficiency:.1f}%; checkpoint: {result.model_dir}"
    )
    print(
        "Try the checkpoint on new instructions:\n"
        f"  flan-jax infer --checkpoint {model_dir} --input_file {prompts} "
        f"--output_file {os.path.join(model_dir, 'predictions.jsonl')} --max_decode_len "
        f"{task_feature_lengths['targets']}"
    )
    return DemoResult(before, after, result.model_dir, result)
