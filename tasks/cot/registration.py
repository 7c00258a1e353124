"""The 9 chain-of-thought datasets of the Flan 2022 collection, plus their inverted versions.

Local format (the Flan collection's own files, read in place): `<cot dir>/<dataset>_train.tsv`
with one example per line and three tab-separated columns, question, answer and rationale,
in which line breaks are written as the two characters `\\n`:

    What is 2 + 3?\\nOptions:\\n- 4\\n- 5<TAB>5<TAB>Two plus three is five.

becomes the fields {"question": "What is 2 + 3?\\nOptions:\\n- 4\\n- 5", "answer": "5",
"rationale": "Two plus three is five."}. Answer options, when a dataset has them, are part of
the question, so the CoT tasks have no "noopt" variants.

Templates (`templates/`): each dataset has its own zero-shot set (`<dataset>.yaml`, 10
templates, 15 for the "stream" datasets aqua and qed, as in the Flan collection); the
inverted tasks share `cot_inverted.yaml` (18); few-shot variants render their exemplars and
the example with `cot_few_shot.yaml` or `cot_inverted_few_shot.yaml`. Every original target
ends in a sentence such as "So the answer is X." or "The final answer is X."
(`parse_cot_answer` reads X back, as the evaluation's answer extraction does).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator, Sequence

import seqio

from flan_jax.errors import UserError
from flan_jax.evaluation import metrics
from flan_jax.tasks import data_paths, family, naming, sources, templates
from flan_jax.tasks import few_shot as few_shot_lib

SOURCE = "cot"
# Their example counts live in tasks/counts.tsv, not here.
DATASETS = ("gsm8k", "strategyqa", "creak", "qasc", "esnli", "ecqa", "sensemaking", "aqua", "qed")
VARIANTS = ("zs_opt", "fs_opt")
# Metrics (flan_jax.evaluation.metrics): the originals by the answer after "the answer is";
# the inverted tasks write a question and rationale, scored as generated text.
METRICS = ("cot_accuracy",)
INVERTED_METRICS = ("rouge",)
# FLAN's few-shot forms: 5-shot template mix, and 0 to 10 shots out of 25 candidates.
FEW_SHOT = few_shot_lib.FewShotSettings()
_TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates")
# The final-answer sentence: "<lead-in> the answer is X." or "... the final answer is X."; the
# evaluation (flan_jax.evaluation.answers) reads the same marker.
_ANSWER_MARKER_RE = re.compile(r"\bthe (?:final )?answer is\b", re.IGNORECASE)
_ANSWER_TAIL_RE = re.compile(r"\s*(.+?)\.\s*", re.DOTALL)
HOW_TO_GET = (
    "Copy <dataset>_train.tsv from the Flan collection's flan/v2/cot_data directory "
    "(github.com/google-research/FLAN) into the CoT data directory "
    "($FLAN_JAX_DATA_DIR/cot, or DataPaths.source_dirs['cot'])."
)


class CotFormatError(UserError, ValueError):
    """A CoT TSV line that does not have the three expected columns."""


def parse_cot_answer(target: str) -> str | None:
    """X from a target ending in "... the answer is X." or "... the final answer is X.".

    The last such phrase counts (a rationale may say "the answer is" earlier); None when the
    target does not end in one. "So the answer is 3.5." -> "3.5"; "The final answer is (B)."
    -> "(B)".
    """
    markers = list(_ANSWER_MARKER_RE.finditer(target))
    if not markers:
        return None
    tail = _ANSWER_TAIL_RE.fullmatch(target[markers[-1].end() :])
    return tail.group(1).strip() if tail else None


def cot_template_file(dataset: str, *, inverted: bool, few_shot: bool) -> str:
    """The template file of `dataset`'s tasks: per dataset for zero-shot originals, shared
    otherwise (inverted, few-shot and inverted few-shot)."""
    if dataset not in DATASETS:
        raise ValueError(f"Unknown CoT dataset {dataset!r}; known: {list(DATASETS)}.")
    if inverted:
        name = "cot_inverted_few_shot.yaml" if few_shot else "cot_inverted.yaml"
    else:
        name = "cot_few_shot.yaml" if few_shot else f"{dataset}.yaml"
    return os.path.join(_TEMPLATE_DIR, name)


def load_cot_templates(
    dataset: str, *, inverted: bool = False, few_shot: bool = False
) -> templates.TemplateSet:
    """The templates `dataset`'s task with these traits is rendered with (see
    `cot_template_file`)."""
    return _load_template_file(cot_template_file(dataset, inverted=inverted, few_shot=few_shot))


@functools.cache
def _load_template_file(path: str) -> templates.TemplateSet:
    # Shared sets are read once, not once per dataset.
    return templates.load_template_set(path)


def cot_file(dataset: str, paths: data_paths.DataPaths) -> str:
    return os.path.join(paths.source_dir(SOURCE), f"{dataset}_train.tsv")


def list_cot_datasets() -> tuple[str, ...]:
    """The CoT catalog: `DATASETS`."""
    return DATASETS


def missing_data(dataset: str, *, paths: data_paths.DataPaths | None = None) -> str | None:
    """A message when `dataset`'s file is absent, else None."""
    try:
        path = cot_file(dataset, data_paths.resolve_data_paths(paths))
        data_paths.require_path(path, dataset=dataset, how_to_get=HOW_TO_GET)
    except data_paths.MissingDataError as e:
        return str(e)
    return None


def _end_sentence(text: str) -> str:
    # Some rationales (AQuA's equations) stop without punctuation; the target appends a
    # final-answer sentence ("So the answer is X."), which should start a new sentence.
    return text if not text or text[-1] in ".!?" else text + "."


def read_cot_tsv(path: str) -> Iterator[sources.RawExample]:
    """Yields ("train:<line>", fields) from a CoT TSV; malformed lines name file and line."""
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            columns = line.split("\t")
            if len(columns) != 3:
                raise CotFormatError(
                    f"{path}:{line_number}: expected 3 tab-separated columns (question, "
                    f"answer, rationale), got {len(columns)}."
                )
            question, answer, rationale = (c.replace("\\n", "\n").strip() for c in columns)
            yield (
                f"train:{line_number - 1}",
                {
                    "question": question,
                    "answer": answer,
                    "rationale": _end_sentence(rationale),
                },
            )


def load_cot_split(
    dataset: str, *, split: str, paths: data_paths.DataPaths | None = None, seed: int = 0
) -> Iterator[sources.RawExample]:
    """The examples of `dataset`'s `split` (only "train" exists); `seed` is unused."""
    del seed  # The rows are read as they are.
    if split != "train":
        raise ValueError(f"CoT dataset {dataset!r} has only a 'train' split, got {split!r}.")
    path = cot_file(dataset, data_paths.resolve_data_paths(paths))
    return read_cot_tsv(data_paths.require_path(path, dataset=dataset, how_to_get=HOW_TO_GET))


def register_cot_tasks(
    vocabulary: seqio.Vocabulary,
    *,
    datasets: Sequence[str] | None = None,
    paths: data_paths.DataPaths | None = None,
    seed: int = 0,
    few_shot: few_shot_lib.FewShotSettings | None = None,
) -> list[str]:
    """Registers the CoT tasks (originals and inverted, zero- and few-shot); returns names.

    Registration reads nothing: the TSVs are opened when a dataset is iterated, so a
    missing file fails then, with a message naming the dataset and how to get it.

    Args:
      vocabulary: the output features' vocabulary (also counts few-shot prompt tokens).
      datasets: which of `DATASETS` to register (None: all).
      paths: data locations; None resolves them when data is read.
      seed: the rendering seed.
      few_shot: few-shot prompt settings (None: `FEW_SHOT`).
    """
    names = []
    for dataset in family.select_datasets(SOURCE, datasets, DATASETS):
        load_split = family.bind_split(load_cot_split, dataset, paths=paths, seed=seed)
        for inverted in (False, True):
            for variant in VARIANTS:
                task_id = naming.TaskId(SOURCE, dataset, variant, inverted=inverted)
                # Few-shot variants render exemplars and example with the few-shot set.
                task_templates = load_cot_templates(
                    dataset, inverted=inverted, few_shot=task_id.few_shot
                ).templates
                names.append(
                    family.register_dataset_task(
                        task_id,
                        task_templates,
                        load_split,
                        vocabulary,
                        splits=["train"],
                        seed=seed,
                        few_shot=few_shot or FEW_SHOT,
                        metric_fns=metrics.get_metric_fns(
                            INVERTED_METRICS if inverted else METRICS, where=__name__
                        ),
                    )
                )
    return names


FAMILY = family.TaskFamily(
    SOURCE, list_cot_datasets, load_cot_split, missing_data, register_cot_tasks
)
