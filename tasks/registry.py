"""The registry entry point: register every Flan 2022 task family and the mixtures over them.

    import seqio
    from flan_jax.tasks import registry
    report = registry.register_all(vocabulary, skip_missing=True)
    report.skipped   # {"t0/adversarial_qa_dbert_based_on": "Data for dataset ... not found ..."}
    seqio.get_mixture_or_task("flan2022_submix")

Registration is explicit and idempotent; it reads only our own template and catalog files
unless `skip_missing=True`, which checks each dataset's local files exist (without reading
them) and leaves out, by name, those that do not.
"""
from __future__ import annotations

import dataclasses
import logging
from types import ModuleType
from typing import Callable, Iterable, Sequence

import seqio

from flan_jax.tasks import cot, data_paths, dialog, mixtures, niv2, t0
from flan_jax.tasks.flan2021 import catalog as flan2021_catalog
from flan_jax.tasks.flan2021 import register as flan2021_register

FAMILY_SOURCES = ("flan2021", "t0", "niv2", "cot", "dialog")


@dataclasses.dataclass(frozen=True)
class RegistrationReport:
    """What `register_all` registered and what it left out.

    Attributes:
      tasks: registered task names.
      mixtures: registered mixture names.
      skipped: {"source/dataset": why it was left out}.
    """

    tasks: tuple[str, ...]
    mixtures: tuple[str, ...]
    skipped: dict[str, str]


@dataclasses.dataclass(frozen=True)
class _Family:
    """How the registry drives one task family (the families differ in small ways)."""

    datasets: Callable[[], tuple[str, ...]]
    missing_data: Callable[[str, data_paths.DataPaths], str | None]
    register: Callable[..., list[str]]
    # (dataset, paths) -> train examples read from local data; None: counts live elsewhere.
    load_train: Callable[[str, data_paths.DataPaths], Iterable] | None = None


def _local_family(module: ModuleType, source: str) -> _Family:
    load_split = getattr(module, f"load_{source}_split")
    if source == "t0":
        load_train = lambda d, paths: load_split(d, paths, 0, "train")  # noqa: E731
    else:
        load_train = lambda d, paths: load_split(d, paths, "train")  # noqa: E731
    catalog = {"t0": lambda: tuple(t.name for t in t0.load_t0_catalog()),
               "niv2": lambda: tuple(t.name for t in niv2.load_niv2_catalog())}
    return _Family(
        datasets=catalog.get(source, lambda: tuple(module.DATASETS)),
        missing_data=module.missing_data,
        register=lambda vocabulary, datasets, paths, seed: getattr(
            module, f"register_{source}_tasks")(vocabulary, datasets=datasets, paths=paths,
                                                seed=seed),
        load_train=load_train,
    )


def _flan2021_family() -> _Family:
    tfds_dir = lambda paths: paths.tfds_data_dir if paths is not None else None  # noqa: E731
    return _Family(
        datasets=lambda: tuple(entry.name for entry in flan2021_catalog.load_catalog()),
        missing_data=lambda d, paths: flan2021_register.missing_data(
            d, tfds_data_dir=tfds_dir(paths)),
        register=lambda vocabulary, datasets, paths, seed: (
            flan2021_register.register_flan2021_tasks(
                vocabulary, datasets=datasets, tfds_data_dir=tfds_dir(paths), seed=seed)),
    )


def _family(source: str) -> _Family:
    if source == "flan2021":
        return _flan2021_family()
    return _local_family({"t0": t0, "niv2": niv2, "cot": cot, "dialog": dialog}[source], source)


def _flan2021_counts() -> dict[tuple[str, str], int | None]:
    # The Flan 2021 catalog carries its own train counts.
    return {("flan2021", e.name): e.train_examples for e in flan2021_catalog.load_catalog()}


def register_all(
    vocabulary: seqio.Vocabulary,
    *,
    sources: Sequence[str] = FAMILY_SOURCES,
    paths: data_paths.DataPaths | None = None,
    skip_missing: bool = False,
    seed: int = 0,
    counts_path: str = mixtures.COUNTS_PATH,
) -> RegistrationReport:
    """Registers the tasks of `sources` and the mixtures over them.

    Args:
      vocabulary: the vocabulary of every task's output features.
      sources: which families to register (a subset of FAMILY_SOURCES).
      paths: data locations; None resolves them when data is read (or now, with
        `skip_missing`).
      skip_missing: leave out datasets whose local data is absent, and say which.
      seed: the rendering seed of every task.
      counts_path: the example-count table the mixture rates come from.
    """
    unknown = sorted(set(sources) - set(FAMILY_SOURCES))
    if unknown:
        raise ValueError(f"Unknown sources {unknown}; known: {list(FAMILY_SOURCES)}.")
    skipped: dict[str, str] = {}
    tasks: list[str] = []
    for source in sources:
        family = _family(source)
        datasets = family.datasets()
        if skip_missing:
            resolved = data_paths.resolve_data_paths(paths)
            missing = {d: family.missing_data(d, resolved) for d in datasets}
            missing = {d: why for d, why in missing.items() if why is not None}
            skipped.update({f"{source}/{d}": why for d, why in missing.items()})
            datasets = tuple(d for d in datasets if d not in missing)
        tasks.extend(family.register(vocabulary, datasets, paths, seed))
    if skipped:
        shown = sorted(skipped)
        logging.warning("Skipped %d datasets without local data (RegistrationReport.skipped "
                        "says why): %s%s", len(shown), ", ".join(shown[:20]),
                        ", ..." if len(shown) > 20 else "")
    counts = mixtures.load_counts(counts_path)
    counts.update(_flan2021_counts())
    mixture_names = mixtures.register_flan2022_mixtures(tasks, counts)
    return RegistrationReport(tuple(tasks), tuple(mixture_names), skipped)


def count_local_examples(source: str, dataset: str, paths: data_paths.DataPaths) -> int | None:
    """Training examples of a dataset read from local data; None when it is absent."""
    family = _family(source)
    if family.load_train is None or family.missing_data(dataset, paths):
        return None
    return sum(1 for _ in family.load_train(dataset, paths))


def recompute_counts(data_root: str | None = None, *,
                     paths: data_paths.DataPaths | None = None,
                     path: str = mixtures.COUNTS_PATH) -> list[mixtures.CountRow]:
    """Rebuilds the example-count table from local data (rows without data are kept).

    Args:
      data_root: the data root (overrides $FLAN_JAX_DATA_DIR); ignored when `paths` given.
      paths: full data locations.
      path: the table to rewrite.
    """
    paths = paths if paths is not None else data_paths.get_data_paths(root=data_root)
    return mixtures.recompute_counts(paths, count_examples=count_local_examples, path=path)
