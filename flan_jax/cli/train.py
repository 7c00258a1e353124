"""`flan-jax train`: train from gin configs, t5x style; with no arguments, the CPU demo.

    flan-jax train                                  # the demo (DEMO_GIN_FILES)
    flan-jax train --gin_file=models/t5_1_1_small.gin --gin_file=runs/finetune.gin \\
        --gin.MODEL_DIR=/tmp/run --gin.MIXTURE_OR_TASK_NAME=flan2022_submix \\
        --gin.VOCABULARY_PATH=/ckpts/flan_t5_small/spiece.model

The gin files bind `run.entry_point` (the trainer, or the demo around it) and every
argument of `flan_jax.training.trainer.train`. Gin files are looked up as given, then
under the shipped `gin_configs/`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEMO_GIN_FILES = ("models/t5_1_1_tiny.gin", "runs/finetune.gin", "runs/demo_cpu.gin")


def run(entry_point: Callable[[], Any] | None = None) -> Any:
    """Calls the gin-bound entry point of a training run.

    Args:
        entry_point: ``@trainer.train`` (finetune/pretrain configs) or ``@demo.run_demo``.
    """
    if entry_point is None:
        raise ValueError(
            "no training entry point: include a run config such as "
            "runs/finetune.gin, which binds train_cli.run.entry_point"
        )
    return entry_point()


def main(argv: list[str]) -> int:
    """Entry point of `flan-jax train`."""
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from flan_jax.cli import gin_flags

    return gin_flags.run_gin_command(argv, run, default_files=DEMO_GIN_FILES)
