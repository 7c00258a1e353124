"""Entry point of the `flan-jax` command.

Each subcommand lives in its own module under `flan_jax.cli` and exposes
`main(argv: list[str]) -> int`. Modules are imported lazily so `flan-jax tasks list`
does not pay for importing JAX or TensorFlow it never uses.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("flan_jax.cli.train", "train a model from gin configs (no arguments: the CPU demo)"),
    "eval": ("flan_jax.cli.evaluate", "evaluate a checkpoint on seqio tasks from gin configs"),
    "infer": ("flan_jax.cli.infer", "decode predictions for a JSONL file of inputs"),
    "score": ("flan_jax.cli.score", "log-likelihood of given targets for a JSONL file"),
    "convert": ("flan_jax.cli.convert", "convert checkpoints to and from Hugging Face T5"),
    "distill": (
        "flan_jax.cli.distill",
        "CoT distillation: teacher store, alignment, training, model selection",
    ),
    "data": ("flan_jax.cli.data", "export rendered mixtures to JSONL / ArrayRecord"),
    "tasks": ("flan_jax.cli.tasks", "list, show and preview registered tasks"),
}


def _usage() -> str:
    lines = ["usage: flan-jax COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<9} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "`flan-jax COMMAND --help` describes a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"flan-jax: unknown command {command!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
