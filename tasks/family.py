"""The interface every task family implements, and the helpers families register with.

A task family is the datasets of one submixture (`flan2021`, `t0`, `niv2`, `cot`, `dialog`)
or the built-in `demo` collection. Each family package exports `FAMILY`, a `TaskFamily`
whose four functions take the same arguments in every family, so the registry drives all
of them the same way:

    from flan_jax.tasks import cot
    cot.FAMILY.list_datasets()                      # ("gsm8k", "strategyqa", ...)
    cot.FAMILY.missing_data("esnli", paths=paths)   # None, or what is missing and how to get it
    rows = cot.FAMILY.load_split("gsm8k", split="train", paths=paths, seed=0)
    next(iter(rows))                                # ("train:0", {"question": ..., ...})
    cot.FAMILY.register(vocabulary, datasets=["gsm8k"], paths=paths)
    # ["cot__gsm8k__zs_opt", "cot__gsm8k__fs_opt", "cot__gsm8k__inverted__zs_opt", ...]

`TaskFamily` checks the signatures when a family is built (at import of its package), so
a family that drifts from the interface fails naming the function and the expected
arguments. Families whose data is generated (the demo) ignore `paths` and `seed` where
they do not apply.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import seqio

from flan_jax.evaluation import metrics
from flan_jax.tasks import data_paths, naming, sources, templates
from flan_jax.tasks import few_shot as few_shot_lib


class ListDatasets(Protocol):
    """The family's catalog: every dataset it can register, in registration order."""

    def __call__(self) -> tuple[str, ...]: ...


class LoadSplit(Protocol):
    """Yields the (key, template fields) examples of one split of a dataset.

    Reads local data lazily; `paths=None` resolves the data locations when read; `seed`
    seeds any rendering done while loading (T0's promptsource prompts).
    """

    def __call__(
        self, dataset: str, *, split: str, paths: data_paths.DataPaths | None = None, seed: int = 0
    ) -> Iterable[sources.RawExample]: ...


class MissingData(Protocol):
    """None when `dataset`'s local data is present, else what is missing and how to get it."""

    def __call__(
        self, dataset: str, *, paths: data_paths.DataPaths | None = None
    ) -> str | None: ...


class Register(Protocol):
    """Registers the seqio tasks of `datasets` (None: the whole catalog); returns their names.

    Idempotent, and reads no data: `few_shot=None` uses the family's own Flan 2022 settings.
    """

    def __call__(
        self,
        vocabulary: seqio.Vocabulary,
        *,
        datasets: Sequence[str] | None = None,
        paths: data_paths.DataPaths | None = None,
        seed: int = 0,
        few_shot: few_shot_lib.FewShotSettings | None = None,
    ) -> list[str]: ...


# Field of `TaskFamily` -> the protocol its function must match.
INTERFACE: dict[str, type] = {
    "list_datasets": ListDatasets,
    "load_split": LoadSplit,
    "missing_data": MissingData,
    "register": Register,
}


def parameters_of(function: Callable) -> tuple[tuple[str, Any, Any], ...]:
    """(name, kind, default) of each parameter: what "the same signature" compares."""
    return tuple(
        (p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()
    )


def interface_parameters(field: str) -> tuple[tuple[str, Any, Any], ...]:
    """The parameters `field`'s function must have (the protocol's, without `self`)."""
    return parameters_of(INTERFACE[field].__call__)[1:]


def _format_parameters(function: Callable, *, skip_self: bool = False) -> str:
    """ "(dataset, *, split, paths=None, seed=0)": the parameters without annotations."""
    parameters = list(inspect.signature(function).parameters.values())[int(skip_self) :]
    return str(
        inspect.Signature([p.replace(annotation=inspect.Parameter.empty) for p in parameters])
    )


@dataclasses.dataclass(frozen=True)
class TaskFamily:
    """One task family, driven through the same four functions as every other.

    Attributes:
      name: the family's source name in task names (one of `naming.SOURCES`).
      list_datasets: see `ListDatasets`.
      load_split: see `LoadSplit`.
      missing_data: see `MissingData`.
      register: see `Register`.
    """

    name: str
    list_datasets: ListDatasets
    load_split: LoadSplit
    missing_data: MissingData
    register: Register

    def __post_init__(self):
        if self.name not in naming.SOURCES:
            raise ValueError(f"TaskFamily.name must be one of {naming.SOURCES}, got {self.name!r}.")
        for field in INTERFACE:
            function = getattr(self, field)
            if parameters_of(function) != interface_parameters(field):
                raise TypeError(
                    f"TaskFamily {self.name!r}: {field} = {function.__qualname__}"
                    f"{_format_parameters(function)} must take the arguments "
                    f"{_format_parameters(INTERFACE[field].__call__, skip_self=True)} (see "
                    f"{INTERFACE[field].__name__})."
                )


def select_datasets(
    source: str, datasets: Sequence[str] | None, known: Sequence[str]
) -> tuple[str, ...]:
    """`datasets` checked against the catalog `known` (None: all of `known`).

    Raises:
      ValueError: naming the unknown datasets and the closest known names.
    """
    if datasets is None:
        return tuple(known)
    unknown = [d for d in datasets if d not in known]
    if unknown:
        closest = sorted({c for d in unknown for c in difflib.get_close_matches(d, known, n=3)})
        raise ValueError(
            f"Unknown {source} datasets {unknown}; closest known: {closest} "
            f"(all: {source} FAMILY.list_datasets())."
        )
    return tuple(datasets)


def bind_split(
    load_split: LoadSplit, dataset: str, *, paths: data_paths.DataPaths | None, seed: int
) -> sources.LoadSplitFn:
    """`split -> load_split(dataset, split=split, paths=paths, seed=seed)`: a seqio source's
    loader for one dataset."""

    def load(split: str) -> Iterable[sources.RawExample]:
        return load_split(dataset, split=split, paths=paths, seed=seed)

    return load


def register_dataset_task(
    task_id: naming.TaskId,
    task_templates: Sequence[templates.Template],
    load_split: sources.LoadSplitFn,
    vocabulary: seqio.Vocabulary,
    *,
    splits: Sequence[str],
    seed: int,
    few_shot: few_shot_lib.FewShotSettings,
    metric_fns: Sequence[metrics.MetricFn],
) -> str:
    """Registers one variant of a dataset read from local files; returns its task name.

    The registration the CoT, dialog and T0 families share: few-shot variants draw their
    exemplars from `load_split("train")`, read on first use (`few_shot.make_few_shot_spec`).

    Args:
      task_id: the task's identity (source, dataset, variant, inverted).
      task_templates: the templates one is drawn from per example.
      load_split: yields the (key, fields) examples of a split; reads nothing until called.
      vocabulary: the output features' vocabulary (also counts few-shot prompt tokens).
      splits: the splits the task offers.
      seed: the rendering seed.
      few_shot: shots, input budget and pool size of few-shot variants.
      metric_fns: the task's metrics, on text postprocessed by `metrics.postprocess_text`.
    """
    spec_few_shot = None
    if task_id.few_shot:
        spec_few_shot = few_shot_lib.make_few_shot_spec(
            functools.partial(load_split, "train"), vocabulary, settings=few_shot
        )
    spec = sources.RenderSpec(task_id, task_templates, seed=seed, few_shot=spec_few_shot)
    sources.register_rendered_task(
        spec,
        load_split,
        vocabulary=vocabulary,
        splits=list(splits),
        metric_fns=metric_fns,
        postprocess_fn=metrics.postprocess_text,
    )
    return spec.task_name


def register_original_and_inverted(
    source: str,
    dataset: str,
    variants: Sequence[str],
    load_templates: Callable[[bool], templates.TemplateSet],
    load_split: sources.LoadSplitFn,
    vocabulary: seqio.Vocabulary,
    *,
    splits: Sequence[str],
    seed: int,
    few_shot: few_shot_lib.FewShotSettings,
    metric_fns: Sequence[metrics.MetricFn],
    inverted_metric_fns: Sequence[metrics.MetricFn],
) -> list[str]:
    """Registers every variant of a dataset, with the original and the inverted templates.

    Args:
      source: the family (`cot`, `dialog`).
      dataset: the dataset name.
      variants: the variants to register.
      load_templates: `inverted -> TemplateSet`.
      load_split: yields the (key, fields) examples of a split.
      vocabulary, splits, seed, few_shot: as in `register_dataset_task`.
      metric_fns: the metrics of the original tasks.
      inverted_metric_fns: the metrics of the inverted tasks (their targets are inputs of
        the original task, e.g. a question, so they are scored as generated text).
    """
    return [
        register_dataset_task(
            naming.TaskId(source, dataset, variant, inverted=inverted),
            load_templates(inverted).templates,
            load_split,
            vocabulary,
            splits=splits,
            seed=seed,
            few_shot=few_shot,
            metric_fns=inverted_metric_fns if inverted else metric_fns,
        )
        for inverted in (False, True)
        for variant in variants
    ]
