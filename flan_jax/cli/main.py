"""Entry point of the `flan-jax` command.

Each subcommand lives in its own module under `flan_jax.cli` and exposes
`main(argv: list[str]) -> int`. Modules are imported lazily so `flan-jax tasks list`
does not pay for importing JAX or TensorFlow it never uses.

This is the one error boundary of every command: a user error (`flan_jax.errors`) prints
one message and exits with status 2, without a traceback; `--debug` anywhere in the
arguments (or FLAN_JAX_DEBUG=1) shows the traceback instead. Any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable

from flan_jax import errors

USER_ERROR_STATUS = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "FLAN_JAX_DEBUG"

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("flan_jax.cli.train", "train a model from gin configs (no arguments: the CPU demo)"),
    "eval": (
        "flan_jax.cli.evaluate",
        "score checkpoints on evaluation suites (flan_t5, math, ...)",
    ),
    "infer": ("flan_jax.cli.infer", "decode predictions for a JSONL file of inputs"),
    "score": ("flan_jax.cli.score", "log-likelihood of given targets for a JSONL file"),
    "convert": (
        "flan_jax.cli.convert",
        "Hugging Face T5 / OPT / Llama / Mistral checkpoints both ways; merge LoRA adapters",
    ),
    "distill": (
        "flan_jax.cli.distill",
        "CoT distillation: teacher store, alignment, training, model selection",
    ),
    "data": (
        "flan_jax.cli.data",
        "export rendered mixtures (JSONL / ArrayRecord); cache tasks offline with Beam",
    ),
    "synthesize": (
        "flan_jax.cli.synthesize",
        "instruction-response pairs for raw texts (Instruction Pre-Training)",
    ),
    "tasks": ("flan_jax.cli.tasks", "list, show and preview registered tasks"),
}


def _usage() -> str:
    lines = ["usage: flan-jax COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += [
        "",
        "`flan-jax COMMAND --help` describes a command's arguments; `--debug` (or",
        f"{DEBUG_ENV}=1) shows the traceback of an error.",
    ]
    return "\n".join(lines)


def run_reporting_errors(prog: str, run: Callable[[], int | None], *, debug: bool) -> int:
    """Runs a command: a user error is one message on stderr and status 2.

    Args:
      prog: the message prefix (`flan-jax infer`).
      run: the command; returns its exit status (None: 0).
      debug: print the traceback of a user error too.
    """
    try:
        return int(run() or 0)
    except SystemExit as exit_request:  # argparse: --help (0) and bad flags (2, printed).
        if exit_request.code is None or isinstance(exit_request.code, int):
            return exit_request.code or 0
        print(exit_request.code, file=sys.stderr)
        return 1
    except Exception as error:
        user_error = errors.find_user_error(error)
        if user_error is None:
            raise  # A bug: the traceback is what its reader needs.
        if debug:
            traceback.print_exception(error)
        print(f"{prog}: error: {errors.describe(user_error)}", file=sys.stderr)
        if not debug:
            print(f"({DEBUG_FLAG} shows the traceback)", file=sys.stderr)
        return USER_ERROR_STATUS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"flan-jax: unknown command {command!r}.\n\n{_usage()}", file=sys.stderr)
        return USER_ERROR_STATUS
    # TensorFlow and XLA log at length from C++ when imported (CUDA stubs on CPU machines);
    # set before any command imports them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = importlib.import_module(COMMANDS[command][0])
    return run_reporting_errors(f"flan-jax {command}", lambda: module.main(rest), debug=debug)


if __name__ == "__main__":
    sys.exit(main())
