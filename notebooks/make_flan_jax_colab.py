"""Writes ``notebooks/flan_jax_colab.ipynb`` (outputs empty) from the cells below.

The notebook is generated so that its text has one source: edit the cells here, then run

    python notebooks/make_flan_jax_colab.py

``tests/test_notebook.py`` checks that the committed notebook is this script's output, executes
it on CPU with a tiny configuration, and checks that its ``flan-jax`` command lines are the
ones README's "Colab notebook" block lists.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

NOTEBOOK_PATH = Path(__file__).with_name("flan_jax_colab.ipynb")

CELLS: list[tuple[str, str]] = [
    (
        "markdown",
        """# flan_jax on Colab: instruction tuning end to end

Install, register the tasks, preview one, fine-tune, evaluate and decode, with the same
`flan-jax` commands as the README (its "Colab notebook" block lists them).

- **CPU runtime**: the README's demo, a tiny T5 on the built-in synthetic instruction
  collection (about 3 minutes on 2 fast cores; more on Colab's CPUs).
- **TPU runtime** (Runtime > Change runtime type > TPU): the same demo, then T5 1.1 small on
  the same collection in bfloat16, data-parallel over every TPU core JAX finds.

The commands run inside this kernel (`flan_jax.cli.main.main`) rather than as `!flan-jax`
subprocesses: only one process can hold a TPU, and this kernel holds it once JAX starts.""",
    ),
    (
        "code",
        """# Parameters. Empty values run the README demo as it is; CI sets the environment
# variables for a run of a few seconds (tests/test_notebook.py).
import os

# Where pip installs flan_jax from: a git URL of your copy of the repository, or the path of a
# checkout uploaded to the runtime. Skipped when flan_jax is already installed.
FLAN_JAX_SOURCE = os.environ.get("FLAN_JAX_SOURCE", "git+https://github.com/YOUR_FORK/flan_jax.git")
TRAIN_STEPS = os.environ.get("FLAN_JAX_NB_TRAIN_STEPS", "")  # demo: 1500
BATCH_SIZE = os.environ.get("FLAN_JAX_NB_BATCH_SIZE", "")  # demo: 32
EVAL_EXAMPLES = os.environ.get("FLAN_JAX_NB_EVAL_EXAMPLES", "")  # demo: 50 per task

# Flags appended to the README commands below; none by default.
TINY_TRAIN_FLAGS: list[str] = []
TINY_EVAL_FLAGS: list[str] = []
if TRAIN_STEPS:
    # The demo warms the learning rate up over 100 steps; a shorter run needs less.
    warmup = max(1, min(100, int(TRAIN_STEPS) // 10))
    TINY_TRAIN_FLAGS += [
        f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
        f"--gin.schedules.linear_decay.warmup_steps={warmup}",
    ]
if BATCH_SIZE:
    TINY_TRAIN_FLAGS += [f"--gin.BATCH_SIZE={BATCH_SIZE}"]
if EVAL_EXAMPLES:
    TINY_TRAIN_FLAGS += [f"--gin.demo.run_demo.num_eval_examples={EVAL_EXAMPLES}"]
    TINY_EVAL_FLAGS += ["--max_examples", EVAL_EXAMPLES]
print("extra train flags:", TINY_TRAIN_FLAGS, "extra eval flags:", TINY_EVAL_FLAGS)""",
    ),
    ("markdown", "## Install"),
    (
        "code",
        """import importlib.util
import subprocess
import sys


def on_tpu_runtime() -> bool:
    \"\"\"A Colab / Cloud TPU VM, seen before JAX is imported (importing it holds the TPU).\"\"\"
    return bool(os.environ.get("TPU_ACCELERATOR_TYPE") or os.environ.get("COLAB_TPU_ADDR")) or (
        os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")
    )


if importlib.util.find_spec("flan_jax") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", FLAN_JAX_SOURCE], check=True)
    if on_tpu_runtime():
        # flan_jax pins jax; add the TPU runtime (libtpu) of that same version.
        version = subprocess.run(
            [sys.executable, "-c", "import jax; print(jax.__version__)"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", f"jax[tpu]=={version}"], check=True
        )
else:
    print("flan_jax is already installed; skipping pip")""",
    ),
    (
        "code",
        """import shlex

import jax

from flan_jax.cli import main as flan_jax_cli

ON_TPU = jax.default_backend() == "tpu"
print(f"JAX {jax.__version__}: {jax.device_count()} x {jax.devices()[0].device_kind}")


def flan_jax(command_line: str, *extra_flags: str) -> None:
    \"\"\"Runs a README `flan-jax ...` command line, plus `extra_flags`, in this kernel.\"\"\"
    argv = shlex.split(command_line)[1:] + list(extra_flags)
    print("$", shlex.join(["flan-jax", *argv]), flush=True)
    status = flan_jax_cli.main(argv)
    if status:
        raise RuntimeError(f"flan-jax exited with status {status}")""",
    ),
    (
        "markdown",
        """## Register the tasks and preview one

The demo collection has five task clusters (arithmetic with chain-of-thought targets,
sentiment, NLI, word manipulation, reading), each with templates for training, held-out
templates and inverted templates. Registration is an explicit, idempotent call.""",
    ),
    (
        "code",
        """import seqio

from flan_jax.tasks import demo as demo_tasks

demo_tasks.register_demo_tasks(vocabulary=demo_tasks.get_demo_vocabulary())
mixture = seqio.get_mixture_or_task("demo_mixture")
print(f"demo_mixture: {len(mixture.tasks)} tasks, e.g. {sorted(t.name for t in mixture.tasks)[:3]}")
flan_jax("flan-jax tasks list --mixture demo_mixture")""",
    ),
    ("code", 'flan_jax("flan-jax tasks preview demo__arith__zs_noopt -n 3")'),
    (
        "markdown",
        """## Fine-tune

`flan-jax train` with no arguments is the demo: `models/t5_1_1_tiny.gin`, `runs/finetune.gin`
and `runs/demo_cpu.gin`. It evaluates exact match before and after training on held-out
instances and held-out templates, and writes a self-contained checkpoint to `./runs/demo`.""",
    ),
    ("code", 'flan_jax("flan-jax train", *TINY_TRAIN_FLAGS)'),
    (
        "markdown",
        """On a TPU runtime, T5 1.1 small on the same collection: bfloat16 activations, and a
batch of 8 rows per core over a data-parallel mesh of every core
(`MeshConfig.data = jax.device_count()`). Skipped on other runtimes.""",
    ),
    (
        "code",
        """if ON_TPU:
    cores = jax.device_count()
    flan_jax(
        "flan-jax train --gin_file=models/t5_1_1_small.gin --gin_file=runs/finetune.gin "
        "--gin_file=runs/demo_cpu.gin --gin.MODEL_DIR=./runs/demo_small",
        "--gin.ACTIVATION_DTYPE=bfloat16",
        f"--gin.BATCH_SIZE={8 * cores}",
        f"--gin.partitioning.MeshConfig.data={cores}",
        *TINY_TRAIN_FLAGS,
    )
else:
    print(f"not a TPU runtime ({jax.default_backend()}): T5 1.1 small skipped")""",
    ),
    (
        "markdown",
        """## Evaluate

`flan-jax eval` scores every saved step of a checkpoint on evaluation suites. Here: FLAN
2021's held-out-cluster suite on the demo's word-manipulation cluster (its zero-shot tasks).""",
    ),
    (
        "code",
        """flan_jax(
    "flan-jax eval --checkpoint ./runs/demo --suite heldout_clusters:demo/words "
    "--out ./runs/demo/eval --max_examples 50",
    *TINY_EVAL_FLAGS,
)
print(open("./runs/demo/eval/results.md").read())""",
    ),
    (
        "markdown",
        """## Infer

The demo wrote new instructions to `./runs/demo/new_instructions.jsonl`; each output line
gains a `"prediction"`.""",
    ),
    (
        "code",
        """import json

flan_jax(
    "flan-jax infer --checkpoint ./runs/demo --input_file ./runs/demo/new_instructions.jsonl "
    "--output_file ./runs/demo/predictions.jsonl --max_decode_len 32"
)
with open("./runs/demo/predictions.jsonl") as predictions:
    for line in predictions:
        row = json.loads(line)
        print(f"{row['inputs']!r}\\n  -> {row['prediction']!r}")""",
    ),
]


def build_notebook() -> nbformat.NotebookNode:
    """The notebook of ``CELLS``, with empty outputs and a Python 3 kernel."""
    notebook = nbformat.v4.new_notebook()
    makers = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    notebook.cells = [makers[kind](source) for kind, source in CELLS]
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"  # stable ids: regenerating changes nothing
    notebook.metadata = {
        "accelerator": "TPU",
        "colab": {"provenance": []},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return notebook


def main() -> int:
    nbformat.write(build_notebook(), NOTEBOOK_PATH)
    print(f"wrote {NOTEBOOK_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
