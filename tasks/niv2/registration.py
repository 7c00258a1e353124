"""Super-NaturalInstructions v2: one seqio task per NIv2 task, from local task JSONs.

Local format: the natural-instructions repository's `tasks/` directory, read in place from
`<niv2 dir>/tasks/<task>.json` (the `<niv2 dir>` is `$FLAN_JAX_DATA_DIR/niv2` or
`DataPaths.source_dirs["niv2"]`; pointing it at a checkout of the repository works). A task
file is a JSON object with, among others,

    {"Definition": ["Repeat the phrase as asked."],
     "Positive Examples": [{"input": "Repeat 2 times hi", "output": "hi hi", ...}],
     "Instances": [{"id": "task062-...", "input": "...", "output": ["..."]}], ...}

Each instance becomes one example: its definition, its input, the first of its outputs as
the answer, and (few-shot) the task's positive examples with their explanations, which
`Niv2FewShot` shows in FLAN's two forms. Real NIv2 files contain bare `NaN` values, which
Python's json reads; malformed files raise errors naming the file and the field.

The catalog (`catalog.tsv`) lists the 1,556 tasks of the Flan 2022 collection: the
MMLU-derived tasks (ids 664-667 and 685-737) are excluded so evaluation on MMLU stays clean.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from flan_jax.errors import UserError
from flan_jax.evaluation import metrics
from flan_jax.tasks import data_paths, family, naming, sources, templates
from flan_jax.tasks import few_shot as few_shot_lib

SOURCE = "niv2"
VARIANTS = ("zs_opt", "fs_opt")
# Metrics (flan_jax.evaluation.metrics): NIv2's own protocol, exact match and ROUGE-L.
METRICS = ("niv2",)
# Few-shot prompts show the task's positive examples: 2 in the 0-to-10 form, as FLAN's
# `niv2_few_shot_exemplar_lookup_fn` samples (flan/v2/preprocessors.py); the template-mix
# form shows the first one inline (num_shots and pool_size are unused).
FEW_SHOT = few_shot_lib.FewShotSettings(num_candidates=2)
_HERE = os.path.dirname(__file__)
CATALOG_PATH = os.path.join(_HERE, "catalog.tsv")
# Task ids derived from MMLU, excluded from training (see the module docstring).
MMLU_TASK_NUMBERS = frozenset(range(664, 668)) | frozenset(range(685, 738))
# The placeholder that marks a template-mix (inline) few-shot template in niv2_fs.yaml.
INLINE_PLACEHOLDER = "ex_input"
HOW_TO_GET = (
    "Clone github.com/allenai/natural-instructions and point the NIv2 data directory "
    "($FLAN_JAX_DATA_DIR/niv2, or DataPaths.source_dirs['niv2']) at the checkout, so that "
    "its tasks/ directory holds the task JSON files."
)


class Niv2FormatError(UserError, ValueError):
    """A task JSON file that does not follow the NIv2 schema."""


@dataclasses.dataclass(frozen=True)
class Niv2Task:
    """One catalog row.

    Attributes:
      number: the NI task number (unique).
      name: our dataset id, the NI file name made safe for task names.
      ni_name: the NI file stem, or "" when only the number is known.
      category: the task category.
      source_dataset: the dataset the task was built from.
      languages: the task's languages, comma separated.
      split: the NI default English-track split ("train", "test" or "" when outside it).
    """

    number: int
    name: str
    ni_name: str
    category: str
    source_dataset: str
    languages: str
    split: str


@functools.cache
def load_niv2_catalog() -> tuple[Niv2Task, ...]:
    """The NIv2 task catalog shipped in tasks/niv2/catalog.tsv."""
    with open(CATALOG_PATH, encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    rows = []
    for row in csv.DictReader(lines, delimiter="\t"):
        rows.append(
            Niv2Task(
                number=int(row["number"]),
                name=row["name"],
                ni_name=row["ni_name"],
                category=row["category"],
                source_dataset=row["source_dataset"],
                languages=row["languages"],
                split=row["split"],
            )
        )
    return tuple(rows)


def list_niv2_datasets() -> tuple[str, ...]:
    """The NIv2 catalog: the task names of `load_niv2_catalog()`."""
    return tuple(task.name for task in load_niv2_catalog())


@functools.cache
def load_niv2_templates(few_shot: bool) -> templates.TemplateSet:
    name = "niv2_fs.yaml" if few_shot else "niv2_zs.yaml"
    return templates.load_template_set(os.path.join(_HERE, "templates", name))


def make_safe_name(ni_name: str) -> str:
    """An NI file stem as a dataset id: characters other than letters, digits, "_" and "."
    become "_", runs of "_" collapse (task names use "__" as their separator)."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_.]", "_", ni_name)).strip("_")


@functools.cache
def _catalog_by_name() -> dict[str, Niv2Task]:
    return {task.name: task for task in load_niv2_catalog()}


def _catalog_entry(dataset: str) -> Niv2Task:
    if dataset not in _catalog_by_name():
        raise ValueError(f"Unknown NIv2 task {dataset!r}; see {CATALOG_PATH}.")
    return _catalog_by_name()[dataset]


def find_task_file(dataset: str, paths: data_paths.DataPaths) -> str:
    """The JSON file of catalog task `dataset`; MissingDataError when absent."""
    task = _catalog_entry(dataset)
    tasks_dir = os.path.join(paths.source_dir(SOURCE), "tasks")
    if task.ni_name:
        candidates = [os.path.join(tasks_dir, f"{task.ni_name}.json")]
    else:
        # NI task numbers are not unique (two task1168 files exist): among the files with
        # the number, take the one whose name made safe is ours.
        candidates = [
            path
            for path in sorted(glob.glob(os.path.join(tasks_dir, f"task{task.number:03d}_*.json")))
            if make_safe_name(os.path.basename(path)[: -len(".json")]) == task.name
        ]
    if not candidates:
        candidates = [os.path.join(tasks_dir, f"task{task.number:03d}_*.json")]
    return data_paths.require_path(candidates[0], dataset=dataset, how_to_get=HOW_TO_GET)


def missing_data(dataset: str, *, paths: data_paths.DataPaths | None = None) -> str | None:
    """A message when `dataset`'s task file is absent, else None."""
    try:
        find_task_file(dataset, data_paths.resolve_data_paths(paths))
    except data_paths.MissingDataError as e:
        return str(e)
    return None


def _require_field(data: dict, field: str, kind: type | tuple[type, ...], where: str) -> Any:
    if field not in data:
        raise Niv2FormatError(f"{where}: missing field {field!r}.")
    if not isinstance(data[field], kind):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise Niv2FormatError(
            f"{where}: field {field!r} must be a {expected}, got {type(data[field]).__name__}."
        )
    return data[field]


def read_task_file(path: str) -> dict:
    """Parses a task JSON (bare NaN allowed) and checks the fields the templates use."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise Niv2FormatError(f"{path}: line {e.lineno} column {e.colno}: {e.msg}.") from e
    if not isinstance(data, dict):
        raise Niv2FormatError(f"{path}: expected a JSON object at the top level.")
    definition = _require_field(data, "Definition", list, path)
    if not definition or not all(isinstance(d, str) for d in definition):
        raise Niv2FormatError(f"{path}: field 'Definition' must be a non-empty list of strings.")
    for field in ("Positive Examples", "Instances"):
        for index, item in enumerate(_require_field(data, field, list, path)):
            where = f"{path}: {field}[{index}]"
            if not isinstance(item, dict):
                raise Niv2FormatError(f"{where}: expected an object.")
            _require_field(item, "input", str, where)
            output = _require_field(item, "output", (str, list), where)
            if not output or not all(
                isinstance(o, str) for o in ([output] if isinstance(output, str) else output)
            ):
                raise Niv2FormatError(f"{where}: field 'output' must be non-empty text.")
    return data


def _first_output(output: str | list[str]) -> str:
    return output if isinstance(output, str) else output[0]


def _positive_examples(data: dict) -> tuple[dict[str, str], ...]:
    """The task's positive examples as {input, output, explanation} (explanation "" if absent)."""
    return tuple(
        {
            "input": ex["input"],
            "output": _first_output(ex["output"]),
            "explanation": ex["explanation"] if isinstance(ex.get("explanation"), str) else "",
        }
        for ex in data["Positive Examples"]
    )


def read_niv2_examples(
    path: str, *, with_positive_examples: bool = False
) -> Iterator[sources.RawExample]:
    """Yields one (key, fields) example per instance of the task file at `path`.

    Args:
      path: the task JSON.
      with_positive_examples: add the task's positive examples as `positive_examples`
        (a tuple of {input, output, explanation}) for the few-shot builder.
    """
    data = read_task_file(path)
    definition = "\n".join(d.strip() for d in data["Definition"])
    positives = _positive_examples(data) if with_positive_examples else ()
    for instance in data["Instances"]:
        fields: dict[str, Any] = {
            "definition": definition,
            "input": instance["input"],
            "answer": _first_output(instance["output"]),
        }
        if with_positive_examples:
            fields["positive_examples"] = positives
        yield f"train:{instance.get('id', '')}", fields


@dataclasses.dataclass(frozen=True)
class Niv2FewShot:
    """NIv2's few-shot prompts in FLAN's two forms, from the task's positive examples.

    - "template_mix" (FLAN's `_template_mix_five_shot` for NIv2, built from its
      `INLINE_FS_PATTERNS`, flan/v2/tasks.py and templates.py): an inline template shows
      the definition, the task's first positive example with its explanation, then the
      instance.
    - "zero_to_ten" (FLAN's `_template_0to10_x_shot`): the definition, then
      `num_exemplars` positive examples drawn per instance and the instance, all through
      the instance's pair template and its delimiters (`few_shot.template_delimiters`).

    Exemplars are pruned from the end to `max_input_tokens`; an instance left with none (a
    task without positive examples, or a prompt over budget) is dropped.
    """

    count_tokens: Callable[[str], int]
    max_input_tokens: int = 1920
    num_exemplars: int = 2
    forms: tuple[str, ...] = few_shot_lib.FEW_SHOT_FORMS

    def __post_init__(self):
        object.__setattr__(self, "forms", few_shot_lib.check_forms(self.forms, "Niv2FewShot"))

    def render(
        self,
        task_templates: Sequence[templates.Template],
        key: str,
        example: Mapping[str, Any],
        *,
        task_name: str,
        seed: int,
        with_options: bool,
        rng: np.random.Generator,
        where: str,
    ) -> templates.Rendered | None:
        del key, task_name, seed  # The exemplars are the task's, never other instances.
        form = few_shot_lib.draw_form(
            few_shot_lib.forms_for_task(self.forms, with_options=with_options), rng
        )
        inline = [t for t in task_templates if INLINE_PLACEHOLDER in t.placeholders]
        pairs = [t for t in task_templates if INLINE_PLACEHOLDER not in t.placeholders]
        kind = inline if form == "template_mix" else pairs
        template = kind[int(rng.integers(len(kind)))]
        positives = example["positive_examples"]
        if form == "template_mix":
            if not positives:
                return None
            first = positives[0]
            rendered = templates.render(
                template,
                dict(
                    example,
                    ex_input=first["input"],
                    ex_output=first["output"],
                    ex_explanation=first["explanation"],
                ),
                with_options=with_options,
                rng=rng,
                where=where,
            )
            fits = self.count_tokens(rendered.inputs) <= self.max_input_tokens
            return rendered if fits else None
        return self._render_pairs(template, example, positives, with_options, rng, where)

    def _render_pairs(self, template, example, positives, with_options, rng, where):
        query = templates.render(template, example, with_options=with_options, rng=rng, where=where)
        chosen = rng.choice(
            len(positives), size=min(self.num_exemplars, len(positives)), replace=False
        )
        delimiter, separator = few_shot_lib.template_delimiters(template)
        shots = []
        for index in chosen:
            shot = templates.render(
                template,
                {
                    "input": positives[int(index)]["input"],
                    "answer": positives[int(index)]["output"],
                },
                with_options=with_options,
                rng=rng,
                where=f"{where} positive example {int(index)}",
            )
            shots.append(shot.inputs + delimiter + shot.targets)
        head = [example["definition"]]
        kept = few_shot_lib.keep_leading_within_budget(
            head,
            shots,
            query.inputs,
            separator=separator,
            max_tokens=self.max_input_tokens,
            count_tokens=self.count_tokens,
        )
        if not kept:
            return None
        return dataclasses.replace(query, inputs=separator.join([*head, *kept, query.inputs]))


def _read_split(
    dataset: str, split: str, paths: data_paths.DataPaths | None, **example_options
) -> Iterator[sources.RawExample]:
    """The instances of NIv2 task `dataset`, with `read_niv2_examples`'s options."""
    if split != "train":
        raise ValueError(f"NIv2 task {dataset!r} has only a 'train' split, got {split!r}.")
    path = find_task_file(dataset, data_paths.resolve_data_paths(paths))
    return read_niv2_examples(path, **example_options)


def load_niv2_split(
    dataset: str, *, split: str, paths: data_paths.DataPaths | None = None, seed: int = 0
) -> Iterator[sources.RawExample]:
    """The zero-shot fields of NIv2 task `dataset`'s instances (only a "train" split: all of
    them); `seed` is unused. Few-shot tasks add the positive examples (see `Niv2FewShot`)."""
    del seed  # The instances are read as they are.
    return _read_split(dataset, split, paths)


def register_niv2_tasks(
    vocabulary: seqio.Vocabulary,
    *,
    datasets: Sequence[str] | None = None,
    paths: data_paths.DataPaths | None = None,
    seed: int = 0,
    few_shot: few_shot_lib.FewShotSettings | None = None,
) -> list[str]:
    """Registers the zero-shot and few-shot task of each catalog NIv2 task; returns names.

    Args:
      vocabulary: the output features' vocabulary (also counts few-shot prompt tokens).
      datasets: catalog names to register (None: the whole catalog).
      paths: data locations; None resolves them when data is read.
      seed: the rendering seed.
      few_shot: few-shot settings (None: `FEW_SHOT`): `num_candidates` positive examples
        in the 0-to-10 form, the `forms` used, and the `max_input_tokens` budget.
    """
    datasets = list_niv2_datasets() if datasets is None else datasets
    settings = few_shot or FEW_SHOT
    builder = Niv2FewShot(
        count_tokens=lambda text: len(vocabulary.encode(text)),
        max_input_tokens=settings.max_input_tokens,
        num_exemplars=settings.num_candidates,
        forms=settings.forms,
    )
    names = []
    for dataset in datasets:
        _catalog_entry(dataset)
        for variant in VARIANTS:
            task_id = naming.TaskId(SOURCE, dataset, variant)
            spec = sources.RenderSpec(
                task_id,
                load_niv2_templates(task_id.few_shot).templates,
                seed=seed,
                few_shot=builder if task_id.few_shot else None,
            )
            load_split = functools.partial(
                _read_split, dataset, paths=paths, with_positive_examples=task_id.few_shot
            )
            sources.register_rendered_task(
                spec,
                load_split,
                vocabulary=vocabulary,
                splits=["train"],
                metric_fns=metrics.get_metric_fns(METRICS, where=__name__),
                postprocess_fn=metrics.postprocess_text,
            )
            names.append(spec.task_name)
    return names


FAMILY = family.TaskFamily(
    SOURCE, list_niv2_datasets, load_niv2_split, missing_data, register_niv2_tasks
)
