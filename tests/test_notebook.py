"""The Colab notebook: generated from its script, in sync with README, and executed on CPU.

The execution runs every cell in a fresh kernel (nbclient, the ipykernel of this Python) with
the tiny configuration of the notebook's parameters cell (a few training steps, few
evaluation examples), then checks what the run wrote: the checkpoint, the metrics, the
evaluation results and the predictions.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "flan_jax_colab.ipynb"
README = REPO_ROOT / "README.md"
TINY_ENV = {
    "FLAN_JAX_NB_TRAIN_STEPS": "4",
    "FLAN_JAX_NB_BATCH_SIZE": "8",
    "FLAN_JAX_NB_EVAL_EXAMPLES": "2",
}


def _load_generator():
    sys.path.insert(0, str(NOTEBOOK.parent))
    try:
        import make_flan_jax_colab
    finally:
        sys.path.remove(str(NOTEBOOK.parent))
    return make_flan_jax_colab


def notebook_commands(notebook: nbformat.NotebookNode) -> list[str]:
    """The README command line of each ``flan_jax(...)`` call, in cell order."""
    commands = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "flan_jax":
                first = node.args[0]
                # A literal, so that the README comparison sees the whole command.
                assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                    f"flan_jax(...) must get a literal command line: {ast.unparse(node)}"
                )
                commands.append(" ".join(first.value.split()))
    return commands


def readme_notebook_commands(readme: str) -> list[str]:
    """The ``flan-jax`` lines of the first code block under README's "Colab notebook"."""
    section = readme.split("\n## Colab notebook", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README's Colab notebook section has no ```bash block"
    joined = block.group(1).replace("\\\n", " ")
    return [
        " ".join(line.split())
        for line in joined.splitlines()
        if line.strip().startswith("flan-jax")
    ]


def test_notebook_is_the_generator_output():
    """Edit notebooks/make_flan_jax_colab.py, then run it: the two never drift apart."""
    generated = _load_generator().build_notebook()
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in generated.cells
    ]
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")


def test_notebook_commands_are_readme_commands():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    commands = notebook_commands(notebook)
    assert "flan-jax train" in commands  # the demo, with no flags
    assert commands == readme_notebook_commands(README.read_text())


def test_command_extraction_sees_a_changed_command():
    """The sync check can fail: a flag added to a notebook command is a mismatch."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in notebook.cells if "flan-jax infer" in c.source)
    cell.source = cell.source.replace("--max_decode_len 32", "--max_decode_len 64")
    assert notebook_commands(notebook) != readme_notebook_commands(README.read_text())


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Runs the notebook once in a temporary directory; returns (directory, notebook)."""
    from nbclient import NotebookClient

    workdir = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TINY_ENV.items():
            patch.setenv(name, value)  # the kernel inherits this environment
        client = NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",  # ipykernel's own spec: this interpreter
            resources={"metadata": {"path": str(workdir)}},
        )
        client.execute()
    return workdir, notebook


def _text_outputs(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


@pytest.mark.slow
def test_notebook_runs_on_cpu(executed):
    workdir, notebook = executed
    run_dir = workdir / "runs" / "demo"
    text = _text_outputs(notebook)
    steps = int(TINY_ENV["FLAN_JAX_NB_TRAIN_STEPS"])

    # The preview printed rendered examples; the tiny flags reached the commands.
    assert "=== example 3: " in text and "_task_name=demo__arith__zs_noopt" in text
    assert f"--gin.TRAIN_STEPS={steps}" in text
    assert "T5 1.1 small skipped" in text  # CPU runtime

    # Training: the checkpoint of the last step, and metrics up to it.
    assert (run_dir / str(steps)).is_dir()
    assert json.loads((run_dir / "flan_jax_config.json").read_text())
    metric_steps = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(metric_steps) == steps
    assert "Exact-match accuracy on held-out examples" in text
    assert re.search(r"\nmean +\d+\.\d%", text)

    # Evaluation: the one step scored, on the tiny number of examples per task.
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert str(steps) in json.dumps(results)
    assert "| demo |" in text and "demo/words" in text

    # Inference: one prediction per new instruction, printed by the last cell.
    inputs = (run_dir / "new_instructions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(inputs) > 0
    assert all(isinstance(row["prediction"], str) for row in rows)
    assert f"{rows[0]['inputs']!r}\n  -> {rows[0]['prediction']!r}" in text
