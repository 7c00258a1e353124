"""SeqIO tasks of the Flan 2021 submixture: one per (dataset, variant).

For each dataset of `datasets.yaml` four tasks are registered, `flan2021__<dataset>__zs_opt`,
`__zs_noopt`, `__fs_opt` and `__fs_noopt`. Each draws one template per example from the
dataset's family (its zero-shot and inverted templates alike); "opt" variants show the
answer options, "noopt" variants do not; few-shot variants prepend exemplars from the first
`few_shot_pool_size` train examples, pruned to the input budget.

Data comes from prepared TFDS datasets (`tfds.builder(...).as_dataset`, never a download),
opened only when a split is iterated: registering reads nothing, and a dataset that is not
prepared fails when read with a message naming it and the command that prepares it.

    import seqio
    from flan_jax.tasks.flan2021 import register
    names = register.register_flan2021_tasks(vocabulary, tfds_data_dir="/data/tfds")
    seqio.get_mixture_or_task("flan2021__rte__zs_opt").get_dataset(...)
"""
from __future__ import annotations

import functools
import os
from typing import Iterator, Sequence

import seqio

from flan_jax.tasks import data_paths, naming, sources, templates
from flan_jax.tasks.flan2021 import catalog, preprocessors

SOURCE = "flan2021"
VARIANTS = naming.VARIANTS


def how_to_prepare(entry: catalog.DatasetEntry) -> str:
    """The instructions appended to a missing-data error for `entry`."""
    message = (f"Prepare it once with `tfds build {entry.tfds} --data_dir=DIR` on a machine "
               f"with network access, then pass tfds_data_dir=DIR (or set "
               f"${data_paths.ENV_TFDS_DATA_DIR}).")
    if entry.manual_download:
        message += (" This dataset needs its source files placed by hand first: see the "
                    "TFDS catalog page of the dataset for where to put them.")
    return message


@functools.cache
def load_family_templates(family: str) -> templates.TemplateSet:
    """The template set of a family (`templates/<family>.yaml`), read once."""
    return templates.load_template_set(os.path.join(catalog.TEMPLATE_DIR, f"{family}.yaml"))


def load_flan2021_split(
    dataset: str, tfds_data_dir: str | None, split: str
) -> Iterator[sources.RawExample]:
    """Yields ("<split>:<index>", template fields) for one split of a Flan 2021 dataset.

    Indices count TFDS rows (skipped rows included), so a key names the same row in every
    run. Rows `preprocessors.make_fields` cannot render (unlabeled, no answer) are skipped.

    Args:
      dataset: the catalog name, e.g. "anli_r1".
      tfds_data_dir: the TFDS data_dir; None resolves it when read ($TFDS_DATA_DIR or
        the TFDS default).
      split: one of the dataset's catalog splits ("train", "validation", ...).
    """
    entry = catalog.get_entry(dataset)
    if split not in entry.splits:
        raise ValueError(f"Flan 2021 dataset {dataset!r} has splits {sorted(entry.splits)}, "
                         f"not {split!r}.")
    data_dir = tfds_data_dir or data_paths.get_data_paths().tfds_data_dir
    rows = data_paths.read_tfds_split(entry.tfds, entry.splits[split], data_dir,
                                      dataset=dataset, how_to_get=how_to_prepare(entry))
    for index, raw in enumerate(rows):
        fields = preprocessors.make_fields(entry, raw)
        if fields is not None:
            yield f"{split}:{index}", fields


def missing_data(dataset: str, *, tfds_data_dir: str | None = None) -> str | None:
    """A message saying how to prepare `dataset` when its TFDS data is absent, else None."""
    import tensorflow_datasets as tfds  # Only callers that check for data pay the import.

    entry = catalog.get_entry(dataset)
    data_dir = tfds_data_dir or data_paths.get_data_paths().tfds_data_dir
    try:
        prepared = tfds.builder(entry.tfds, data_dir=data_dir).is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        prepared = False
    if prepared:
        return None
    return (f"Data for dataset {dataset!r} not found: TFDS dataset {entry.tfds!r} is not "
            f"prepared in data_dir {data_dir or 'the TFDS default'}. {how_to_prepare(entry)}")


def register_flan2021_tasks(
    vocabulary: seqio.Vocabulary,
    *,
    datasets: Sequence[str] | None = None,
    tfds_data_dir: str | None = None,
    seed: int = 0,
    num_shots: int = 5,
    max_input_tokens: int = 1920,
    few_shot_pool_size: int = 256,
) -> list[str]:
    """Registers the four variants of each Flan 2021 dataset; returns the task names.

    Idempotent (an already registered name is kept) and free of I/O beyond reading the
    catalog and template files shipped with the package.

    Args:
      vocabulary: the output features' vocabulary (also counts few-shot prompt tokens).
      datasets: catalog names to register; None registers all of them.
      tfds_data_dir: the TFDS data_dir; None resolves it when data is read.
      seed: the rendering seed.
      num_shots: exemplars per few-shot prompt before pruning to `max_input_tokens`.
      max_input_tokens: the few-shot input budget (1920 in the Flan 2022 collection).
      few_shot_pool_size: how many leading train examples few-shot exemplars come from.
    """
    entries = catalog.load_catalog()
    if datasets is not None:
        entries = tuple(catalog.get_entry(name) for name in datasets)
    names = []
    for entry in entries:
        load_split = functools.partial(load_flan2021_split, entry.name, tfds_data_dir)
        # One lazily read pool, shared by the two few-shot variants of the dataset.
        few_shot = data_paths.make_few_shot_spec(
            functools.partial(load_split, "train"), vocabulary, num_shots=num_shots,
            max_input_tokens=max_input_tokens, pool_size=few_shot_pool_size)
        template_set = load_family_templates(entry.family)
        for variant in VARIANTS:
            task_id = naming.TaskId(SOURCE, entry.name, variant)
            spec = sources.RenderSpec(task_id, template_set.templates, seed=seed,
                                      few_shot=few_shot if task_id.few_shot else None)
            sources.register_rendered_task(
                spec, load_split, vocabulary=vocabulary, splits=list(entry.splits),
                num_input_examples={"train": entry.train_examples})
            names.append(spec.task_name)
    return names
