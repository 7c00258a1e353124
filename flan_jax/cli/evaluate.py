"""`flan-jax eval`: evaluate a checkpoint on seqio tasks from gin configs.

    flan-jax eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH=runs/demo \\
        --gin.MIXTURE_OR_TASK_NAME=demo__arith__zs_noopt \\
        --gin.TASK_FEATURE_LENGTHS="{'inputs': 96, 'targets': 48}" \\
        --gin.ALLOW_DEMO_VOCABULARY=True

(a demo checkpoint; a Flan checkpoint takes `--gin.VOCABULARY_PATH=/path/spiece.model`).

Prints one line per metric (`eval/<task>/<metric> = value`) and, with
`--gin.EVAL_OUTPUT_PATH=...`, writes them as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def run(register_tasks: Sequence[Callable[[], Any]] = ()) -> dict[str, float]:
    """Registers the tasks, then runs the gin-bound `evaluate_checkpoint` and prints it."""
    import gin

    from flan_jax.training import task_eval

    for register in register_tasks:
        register()
    results = gin.get_configurable(task_eval.evaluate_checkpoint)()
    for name, value in sorted(results.items()):
        print(f"{name} = {value:.4f}")
    return results


def main(argv: list[str]) -> int:
    """Entry point of `flan-jax eval`."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    from flan_jax.cli import gin_flags

    return gin_flags.run_gin_command(argv, run)
