"""T0-SF: the 193 P3 tasks of the Flan 2022 collection that do not overlap Flan 2021.

Each task is one promptsource prompt applied to one dataset (`catalog.tsv`). Two local
directories are read, in place:

- the promptsource templates: `<t0_templates dir>/<dataset>/[<subset>/]templates.yaml`
  (`$FLAN_JAX_DATA_DIR/t0_templates` or `DataPaths.source_dirs["t0_templates"]`; the
  extracted promptsource package, with its `promptsource/templates/` prefix, works too);
- the dataset rows: `<t0 dir>/<dataset>/[<subset>/]<split>.jsonl`, one JSON object per line
  with the fields of the dataset's public (Hugging Face) schema, which the prompts refer to:

      {"context": "...", "question": "...", "answers": {"text": ["..."], "answer_start": [3]}}

A row is rendered through the prompt (input, target, answer choices) and then through one
of our instruction wrappers, drawn per example with the example's seeded generator. As in
FLAN, the wrappers depend on the task's type (the catalog's `flan_type` column, FLAN's
`task_type`): free text, choices listed in the prompt, or choices shown apart from it;
`templates/t0_<flan_type>.yaml` holds ten wrappers of each type. Every wrapper has the
`{options_}` slot, so "opt" variants add a seeded options block whenever the prompt has
answer choices it does not already list. Rows for which the prompt yields no target are
skipped, as in P3. The catalog's `metrics` column names each task's metrics (accuracy,
squad or rouge, by what its prompt's target is).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence

import seqio

from flan_jax.data import file_io
from flan_jax.evaluation import metrics
from flan_jax.tasks import data_paths, family, naming, sources, templates
from flan_jax.tasks import few_shot as few_shot_lib
from flan_jax.tasks.t0 import promptsource

SOURCE = "t0"
TEMPLATES_SOURCE = "t0_templates"
SPLITS = ("train", "validation")
# FLAN's wrapper types of T0 tasks (google-research/FLAN flan/v2/constants_t0.py,
# T0_TRAIN_TASK_METADATA "task_type", without the "t0_" prefix).
FLAN_TYPES = ("question_answer", "multiple_choice", "multiple_choice_separated_options")
# FLAN's few-shot forms: 5-shot template mix, and 0 to 10 shots out of 25 candidates.
FEW_SHOT = few_shot_lib.FewShotSettings()
_HERE = os.path.dirname(__file__)
CATALOG_PATH = os.path.join(_HERE, "catalog.tsv")
HOW_TO_GET_DATA = (
    "Export the dataset's rows from the Hugging Face hub (datasets.load_dataset(dataset, "
    "subset)[split].to_json(path)) into <t0 dir>/<dataset>/[<subset>/]<split>.jsonl, with "
    "<t0 dir> = $FLAN_JAX_DATA_DIR/t0 or DataPaths.source_dirs['t0']."
)
HOW_TO_GET_TEMPLATES = (
    "Unpack the promptsource 0.2.3 templates (the promptsource/templates tree of its sdist) "
    "into $FLAN_JAX_DATA_DIR/t0_templates or DataPaths.source_dirs['t0_templates']."
)


@dataclasses.dataclass(frozen=True)
class T0Task:
    """One catalog row: a P3 task name, the promptsource prompt it uses, its FLAN type and
    the names of its metrics (`flan_jax.evaluation.metrics.METRIC_FNS`)."""

    name: str
    dataset: str
    subset: str
    prompt: str
    category: str
    flan_type: str
    metrics: tuple[str, ...]


@functools.cache
def load_t0_catalog() -> tuple[T0Task, ...]:
    """The T0-SF catalog shipped in tasks/t0/catalog.tsv."""
    with open(CATALOG_PATH, encoding="utf-8") as f:
        numbered = [(n, line) for n, line in enumerate(f, start=1) if not line.startswith("#")]
    rows = csv.DictReader([line for _, line in numbered], delimiter="\t")
    catalog = []
    for (line_number, _), row in zip(numbered[1:], rows):
        where = f"{CATALOG_PATH}:{line_number}"
        if row["flan_type"] not in FLAN_TYPES:
            raise ValueError(
                f"{where}: flan_type must be one of {FLAN_TYPES}, "
                f"got {row['flan_type']!r} (task {row['name']!r})."
            )
        names = tuple(name.strip() for name in (row.pop("metrics") or "").split(",") if name)
        metrics.get_metric_fns(names, where=f"{where}: column 'metrics' (task {row['name']!r})")
        catalog.append(T0Task(**row, metrics=names))
    return tuple(catalog)


def list_t0_datasets() -> tuple[str, ...]:
    """The T0 catalog: the task names of `load_t0_catalog()`."""
    return tuple(task.name for task in load_t0_catalog())


@functools.cache
def _catalog_by_name() -> dict[str, T0Task]:
    return {task.name: task for task in load_t0_catalog()}


def _catalog_entry(dataset: str) -> T0Task:
    if dataset not in _catalog_by_name():
        raise ValueError(f"Unknown T0 task {dataset!r}; see {CATALOG_PATH}.")
    return _catalog_by_name()[dataset]


@functools.cache
def load_t0_wrapper_templates(flan_type: str) -> templates.TemplateSet:
    """The instruction wrappers of T0 tasks of `flan_type` (one of `FLAN_TYPES`)."""
    if flan_type not in FLAN_TYPES:
        raise ValueError(f"T0 flan_type must be one of {FLAN_TYPES}, got {flan_type!r}.")
    return templates.load_template_set(os.path.join(_HERE, "templates", f"t0_{flan_type}.yaml"))


def templates_file(task: T0Task, paths: data_paths.DataPaths) -> str:
    """The templates.yaml of `task`'s dataset; MissingDataError when absent."""
    root = paths.source_dir(TEMPLATES_SOURCE)
    relative = os.path.join(task.dataset, task.subset, "templates.yaml")
    for prefix in ("", os.path.join("promptsource", "templates")):
        path = os.path.join(root, prefix, relative)
        if os.path.exists(path):
            return path
    return data_paths.require_path(
        os.path.join(root, relative), dataset=task.name, how_to_get=HOW_TO_GET_TEMPLATES
    )


def find_prompt(task: T0Task, paths: data_paths.DataPaths) -> promptsource.PromptTemplate:
    """The promptsource prompt named by `task`."""
    path = templates_file(task, paths)
    for prompt in promptsource.read_templates_file(path):
        if prompt.name == task.prompt:
            return prompt
    raise promptsource.PromptTemplateError(
        f"{path}: no prompt named {task.prompt!r} (needed by T0 task {task.name!r})."
    )


def rows_file(task: T0Task, split: str, paths: data_paths.DataPaths) -> str:
    return os.path.join(paths.source_dir(SOURCE), task.dataset, task.subset, f"{split}.jsonl")


def missing_data(dataset: str, *, paths: data_paths.DataPaths | None = None) -> str | None:
    """A message when `dataset`'s prompt file or train rows are absent, else None."""
    task = _catalog_entry(dataset)
    paths = data_paths.resolve_data_paths(paths)
    try:
        templates_file(task, paths)
        data_paths.require_path(
            rows_file(task, "train", paths), dataset=dataset, how_to_get=HOW_TO_GET_DATA
        )
    except data_paths.MissingDataError as e:
        return str(e)
    return None


def read_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(line index, row) of a JSONL file; a malformed line names file and line."""
    for line_number, row in file_io.read_jsonl_objects(path):
        yield line_number - 1, row


def render_rows(
    task: T0Task,
    prompt: promptsource.PromptTemplate,
    rows: Iterator[tuple[int, dict]],
    split: str,
    seed: int,
) -> Iterator[sources.RawExample]:
    """Renders dataset rows through the prompt into our wrapper templates' fields."""
    for index, row in rows:
        key = f"{split}:{index}"
        rng = templates.example_rng(seed, f"promptsource:{task.name}", key)
        rendered = promptsource.render_prompt(prompt, row, rng)
        if rendered is None:
            continue
        fields = {"prompt": rendered.inputs, "answer": rendered.targets}
        # A prompt that already lists its choices must not get a second options block.
        if rendered.answer_choices and not prompt.choices_in_prompt:
            fields["options"] = list(rendered.answer_choices)
        yield key, fields


def load_t0_split(
    dataset: str, *, split: str, paths: data_paths.DataPaths | None = None, seed: int = 0
) -> Iterator[sources.RawExample]:
    """The examples of T0 task `dataset` for `split`, rendered through its prompt (`seed`)."""
    task = _catalog_entry(dataset)
    paths = data_paths.resolve_data_paths(paths)
    prompt = find_prompt(task, paths)
    path = data_paths.require_path(
        rows_file(task, split, paths), dataset=dataset, how_to_get=HOW_TO_GET_DATA
    )
    return render_rows(task, prompt, read_rows(path), split, seed)


def register_t0_tasks(
    vocabulary: seqio.Vocabulary,
    *,
    datasets: Sequence[str] | None = None,
    paths: data_paths.DataPaths | None = None,
    seed: int = 0,
    few_shot: few_shot_lib.FewShotSettings | None = None,
) -> list[str]:
    """Registers the four variants of each catalog T0 task; returns the task names.

    Args:
      vocabulary: the output features' vocabulary (also counts few-shot prompt tokens).
      datasets: catalog names to register (None: all 193).
      paths: data locations; None resolves them when data is read.
      seed: the rendering seed (of the prompts and of the per-example wrapper draw).
      few_shot: few-shot prompt settings (None: `FEW_SHOT`).
    """
    datasets = list_t0_datasets() if datasets is None else datasets
    names = []
    for dataset in datasets:
        entry = _catalog_entry(dataset)
        wrappers = load_t0_wrapper_templates(entry.flan_type).templates
        metric_fns = metrics.get_metric_fns(entry.metrics, where=CATALOG_PATH)
        load_split = family.bind_split(load_t0_split, dataset, paths=paths, seed=seed)
        for variant in naming.VARIANTS:
            names.append(
                family.register_dataset_task(
                    naming.TaskId(SOURCE, dataset, variant),
                    wrappers,
                    load_split,
                    vocabulary,
                    splits=SPLITS,
                    seed=seed,
                    few_shot=few_shot or FEW_SHOT,
                    metric_fns=metric_fns,
                )
            )
    return names


FAMILY = family.TaskFamily(SOURCE, list_t0_datasets, load_t0_split, missing_data, register_t0_tasks)
