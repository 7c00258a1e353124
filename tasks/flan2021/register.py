"""SeqIO tasks of the Flan 2021 submixture: one per (dataset, variant).

For each dataset FLAN registers (`datasets.yaml` entries not marked `in_flan: false`; the
others only when named in `datasets`) four tasks are registered, `flan2021__<dataset>__zs_opt`,
`__zs_noopt`, `__fs_opt` and `__fs_noopt`. Each draws one template per example from the
dataset's family (its zero-shot and inverted templates alike); "opt" variants show the
answer options, "noopt" variants do not; few-shot variants prepend exemplars from the first
`few_shot_pool_size` train examples, pruned to the input budget. Each task is scored by the
metrics its catalog entry names (`metrics: [rouge]`), on text postprocessed by
`metrics.postprocess_text`; examples drawn with inverted templates get the same metrics.

Data comes from prepared TFDS datasets (`tfds.builder(...).as_dataset`, never a download),
opened only when a split is iterated: registering reads nothing, and a dataset that is not
prepared fails when read with a message naming it and the command that prepares it.

    import seqio
    from flan_jax.tasks import data_paths, flan2021
    paths = data_paths.get_data_paths(tfds_data_dir="/data/tfds")
    names = flan2021.FAMILY.register(vocabulary, paths=paths)
    seqio.get_mixture_or_task("flan2021__rte__zs_opt").get_dataset(...)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence

import seqio

from flan_jax.evaluation import metrics
from flan_jax.tasks import data_paths, family, naming, sources, templates, tfds_reading
from flan_jax.tasks import few_shot as few_shot_lib
from flan_jax.tasks.flan2021 import catalog, preprocessors

SOURCE = "flan2021"
VARIANTS = naming.VARIANTS
# FLAN's few-shot forms: 5-shot template mix, and 0 to 10 shots out of 25 candidates.
FEW_SHOT = few_shot_lib.FewShotSettings()


def how_to_prepare(entry: catalog.DatasetEntry) -> str:
    """The instructions appended to a missing-data error for `entry`."""
    message = (
        f"Prepare it once with `tfds build {entry.tfds} --data_dir=DIR` on a machine "
        f"with network access, then set ${data_paths.ENV_TFDS_DATA_DIR}=DIR (or bind "
        f"data_paths.get_data_paths.tfds_data_dir in gin)."
    )
    if entry.manual_download:
        message += (
            " This dataset needs its source files placed by hand first: see the "
            "TFDS catalog page of the dataset for where to put them."
        )
    return message


def list_flan2021_datasets() -> tuple[str, ...]:
    """FLAN's Flan 2021 datasets: the catalog's names, less those marked `in_flan: false`."""
    return tuple(entry.name for entry in catalog.load_catalog() if entry.in_flan)


@functools.cache
def load_family_templates(family: str) -> templates.TemplateSet:
    """The template set of a family (`templates/<family>.yaml`), read once."""
    return templates.load_template_set(os.path.join(catalog.TEMPLATE_DIR, f"{family}.yaml"))


def load_flan2021_split(
    dataset: str, *, split: str, paths: data_paths.DataPaths | None = None, seed: int = 0
) -> Iterator[sources.RawExample]:
    """Yields ("<split>:<index>", template fields) for one split of a Flan 2021 dataset.

    Indices count the rows of the catalog's slice (skipped rows included), so a key names
    the same row in every run. Rows `preprocessors.make_fields` cannot render (unlabeled,
    no answer) are skipped.

    Args:
      dataset: the catalog name, e.g. "anli_r1".
      split: one of the dataset's catalog splits ("train", "validation", ...), read as the
        catalog slices it (e.g. "train[:-200]").
      paths: data locations (`tfds_data_dir` is read); None resolves them when read
        ($TFDS_DATA_DIR or the TFDS default).
      seed: unused (rows are read as they are).
    """
    del seed
    entry = catalog.get_entry(dataset)
    if split not in entry.splits:
        raise ValueError(
            f"Flan 2021 dataset {dataset!r} has splits {sorted(entry.splits)}, not {split!r}."
        )
    data_dir = data_paths.resolve_data_paths(paths).tfds_data_dir
    rows = tfds_reading.read_tfds_split(
        entry.tfds, entry.splits[split], data_dir, dataset=dataset, how_to_get=how_to_prepare(entry)
    )
    for index, raw in enumerate(rows):
        fields = preprocessors.make_fields(entry, raw)
        if fields is not None:
            yield f"{split}:{index}", fields


def missing_data(dataset: str, *, paths: data_paths.DataPaths | None = None) -> str | None:
    """A message saying how to prepare `dataset` when its TFDS data is absent, else None."""
    entry = catalog.get_entry(dataset)
    return tfds_reading.missing_tfds_message(
        entry.tfds,
        data_paths.resolve_data_paths(paths).tfds_data_dir,
        dataset=dataset,
        how_to_get=how_to_prepare(entry),
    )


def register_flan2021_tasks(
    vocabulary: seqio.Vocabulary,
    *,
    datasets: Sequence[str] | None = None,
    paths: data_paths.DataPaths | None = None,
    seed: int = 0,
    few_shot: few_shot_lib.FewShotSettings | None = None,
) -> list[str]:
    """Registers the four variants of each Flan 2021 dataset; returns the task names.

    Idempotent (an already registered name is kept) and free of I/O beyond reading the
    catalog and template files shipped with the package.

    Args:
      vocabulary: the output features' vocabulary (also counts few-shot prompt tokens).
      datasets: catalog names to register; None registers FLAN's (`list_flan2021_datasets`),
        leaving out entries marked `in_flan: false` unless they are named here.
      paths: data locations (`tfds_data_dir` is read); None resolves them when read.
      seed: the rendering seed.
      few_shot: few-shot settings (None: `FEW_SHOT`; exemplars come from the first
        `pool_size` train examples).
    """
    names_to_register = list_flan2021_datasets() if datasets is None else datasets
    entries = tuple(catalog.get_entry(name) for name in names_to_register)
    names = []
    for entry in entries:
        load_split = family.bind_split(load_flan2021_split, entry.name, paths=paths, seed=seed)
        # One lazily read pool, shared by the two few-shot variants of the dataset.
        spec_few_shot = few_shot_lib.make_few_shot_spec(
            functools.partial(load_split, "train"), vocabulary, settings=few_shot or FEW_SHOT
        )
        template_set = load_family_templates(entry.family)
        metric_fns = metrics.get_metric_fns(entry.metrics, where=catalog.CATALOG_PATH)
        for variant in VARIANTS:
            task_id = naming.TaskId(SOURCE, entry.name, variant)
            spec = sources.RenderSpec(
                task_id,
                template_set.templates,
                seed=seed,
                few_shot=spec_few_shot if task_id.few_shot else None,
            )
            sources.register_rendered_task(
                spec,
                load_split,
                vocabulary=vocabulary,
                splits=list(entry.splits),
                metric_fns=metric_fns,
                postprocess_fn=metrics.postprocess_text,
            )
            names.append(spec.task_name)
    return names


FAMILY = family.TaskFamily(
    SOURCE, list_flan2021_datasets, load_flan2021_split, missing_data, register_flan2021_tasks
)
