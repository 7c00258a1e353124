"""The registry entry point: register the task families and the mixtures over them.

    import seqio
    from flan_jax.tasks import registry
    report = registry.register_all(vocabulary, skip_missing=True)
    report.skipped   # {"t0/adversarial_qa_dbert_based_on": "Data for dataset ... not found ..."}
    seqio.get_mixture_or_task("flan2022_submix")

Every family is driven through the same `family.TaskFamily` functions. Registration is
explicit and idempotent; it reads only our own template and catalog files unless
`skip_missing=True`, which checks each dataset's local files exist (without reading them)
and leaves out, by name, those that do not.

Entry points (the CLI, gin run configs) register the whole catalog with `register_catalog`:

    from __gin__ import dynamic_registration
    from flan_jax.tasks import registry as task_registry
    task_registry.register_catalog.vocabulary_path = %VOCABULARY_PATH
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import seqio

from flan_jax.errors import ConfigError
from flan_jax.tasks import (
    cot,
    data_paths,
    demo,
    dialog,
    family,
    flan2021,
    flan_names,
    mixtures,
    niv2,
    t0,
)

# The families of the Flan 2022 collection, in the order their tasks are registered.
FLAN2022_FAMILIES: tuple[family.TaskFamily, ...] = (
    flan2021.FAMILY,
    t0.FAMILY,
    niv2.FAMILY,
    cot.FAMILY,
    dialog.FAMILY,
)
FAMILY_SOURCES = tuple(f.name for f in FLAN2022_FAMILIES)
# Every family, the demo collection included.
FAMILIES: tuple[family.TaskFamily, ...] = FLAN2022_FAMILIES + (demo.FAMILY,)
_FAMILY_BY_NAME = {f.name: f for f in FAMILIES}
# The macros of the run config (gin_configs/runs/finetune.gin) that
# `register_catalog`'s vocabulary arguments are bound to; its error names them.
VOCABULARY_MACRO = "VOCABULARY_PATH"
ALLOW_DEMO_VOCABULARY_MACRO = "ALLOW_DEMO_VOCABULARY"


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


def get_family(source: str) -> family.TaskFamily:
    """The family named `source` (one of `FAMILIES`)."""
    if source not in _FAMILY_BY_NAME:
        raise ValueError(f"Unknown task family {source!r}; known: {list(_FAMILY_BY_NAME)}.")
    return _FAMILY_BY_NAME[source]


def _available_datasets(
    task_family: family.TaskFamily, paths: data_paths.DataPaths, skipped: dict[str, str]
) -> tuple[str, ...]:
    """The family's datasets whose local data is present; records the others in `skipped`."""
    available = []
    for dataset in task_family.list_datasets():
        why = task_family.missing_data(dataset, paths=paths)
        if why is None:
            available.append(dataset)
        else:
            skipped[f"{task_family.name}/{dataset}"] = why
    return tuple(available)


def register_all(
    vocabulary: seqio.Vocabulary,
    *,
    sources: Sequence[str] = FAMILY_SOURCES,
    paths: data_paths.DataPaths | None = None,
    skip_missing: bool = False,
    seed: int = 0,
    counts_path: str = mixtures.COUNTS_PATH,
    flan_task_names: bool = False,
) -> RegistrationReport:
    """Registers the tasks of the Flan 2022 families `sources` and the mixtures over them.

    Args:
      vocabulary: the vocabulary of every task's output features.
      sources: which families to register (a subset of FAMILY_SOURCES).
      paths: data locations; None resolves them when data is read (or now, with
        `skip_missing`).
      skip_missing: leave out datasets whose local data is absent, and say which.
      seed: the rendering seed of every task.
      counts_path: the example-count table the mixture rates come from.
      flan_task_names: also register FLAN's names of the tasks and of their single
        templates (`flan_names.register_flan_task_names`; about 20,000 more tasks).
    """
    unknown = sorted(set(sources) - set(FAMILY_SOURCES))
    if unknown:
        raise ConfigError(f"Unknown sources {unknown}; known: {list(FAMILY_SOURCES)}.")
    skipped: dict[str, str] = {}
    tasks: list[str] = []
    for source in sources:
        task_family = get_family(source)
        datasets = task_family.list_datasets()
        if skip_missing:
            datasets = _available_datasets(
                task_family, data_paths.resolve_data_paths(paths), skipped
            )
        tasks.extend(task_family.register(vocabulary, datasets=datasets, paths=paths, seed=seed))
    if skipped:
        shown = sorted(skipped)
        logging.warning(
            "Skipped %d datasets without local data (RegistrationReport.skipped says why): %s%s",
            len(shown),
            ", ".join(shown[:20]),
            ", ..." if len(shown) > 20 else "",
        )
    mixture_names = mixtures.register_flan2022_mixtures(tasks, mixtures.load_counts(counts_path))
    mixture_names += list(flan_names.register_flan_mixture_aliases())
    if flan_task_names:
        flan_names.register_flan_task_names(tasks)
    return RegistrationReport(tuple(tasks), tuple(mixture_names), skipped)


def get_catalog_vocabulary(
    *, vocabulary_path: str | None, extra_ids: int, allow_demo_vocabulary: bool
) -> seqio.Vocabulary:
    """The vocabulary the Flan 2022 tasks are registered with by `register_catalog`.

    Raises:
      ValueError: without `vocabulary_path` unless `allow_demo_vocabulary`, naming the gin
        macro to set.
    """
    if vocabulary_path is not None:
        from flan_jax.data import vocabularies

        return vocabularies.get_vocabulary(vocabulary_path, extra_ids)
    if not allow_demo_vocabulary:
        raise ConfigError(
            f"No vocabulary for the Flan 2022 tasks: set the gin macro {VOCABULARY_MACRO} to "
            f"the T5 SentencePiece model, e.g. --gin.{VOCABULARY_MACRO}=/path/spiece.model "
            "(the spiece.model of a converted checkpoint; from Python: "
            "register_catalog(vocabulary_path=...)). To try things out with the built-in "
            f"demo vocabulary instead, set --gin.{ALLOW_DEMO_VOCABULARY_MACRO}=True."
        )
    logging.warning(
        "Registering the Flan 2022 tasks with the demo vocabulary, as asked (no "
        "vocabulary path given): its token counts also prune few-shot prompts. "
        "Real runs give the T5 model: --gin.%s=/path/spiece.model in run configs, "
        "--vocabulary in `flan-jax tasks` and `flan-jax data`.",
        VOCABULARY_MACRO,
    )
    return demo.get_demo_vocabulary()


def register_catalog(
    *,
    vocabulary_path: str | None = None,
    extra_ids: int = 100,
    allow_demo_vocabulary: bool = False,
    flan_task_names: bool = False,
) -> RegistrationReport:
    """Registers the demo collection and the Flan 2022 collection; idempotent.

    The demo tasks always use the demo vocabulary (built offline on first use). The Flan
    2022 tasks use `vocabulary_path`; without it this fails, naming the gin macro
    `VOCABULARY_PATH`, unless `allow_demo_vocabulary` asks for the demo vocabulary (with a
    warning).

    Args:
      vocabulary_path: the SentencePiece model of the Flan 2022 tasks' features.
      extra_ids: sentinel ids added on top of `vocabulary_path` (T5: 100).
      allow_demo_vocabulary: without `vocabulary_path`, register the Flan 2022 tasks with
        the demo vocabulary instead of failing.
      flan_task_names: also register FLAN's task names (see `register_all`), e.g. to train
        on `cot_gsm8k_template_mix_five_shot`.

    Returns:
      The report of the Flan 2022 registration.
    """
    vocabulary = get_catalog_vocabulary(
        vocabulary_path=vocabulary_path,
        extra_ids=extra_ids,
        allow_demo_vocabulary=allow_demo_vocabulary,
    )
    demo.FAMILY.register(demo.get_demo_vocabulary())
    return register_all(vocabulary, flan_task_names=flan_task_names)


def count_local_examples(source: str, dataset: str, paths: data_paths.DataPaths) -> int | None:
    """Training examples of a dataset read from local data; None when it is absent."""
    task_family = get_family(source)
    if task_family.missing_data(dataset, paths=paths):
        return None
    return sum(1 for _ in task_family.load_split(dataset, split="train", paths=paths))


def recompute_counts(
    data_root: str | None = None,
    *,
    paths: data_paths.DataPaths | None = None,
    path: str = mixtures.COUNTS_PATH,
) -> list[mixtures.CountRow]:
    """Rebuilds the example-count table from local data (rows without data are kept).

    Args:
      data_root: the data root (overrides $FLAN_JAX_DATA_DIR); ignored when `paths` given.
      paths: full data locations.
      path: the table to rewrite.
    """
    paths = paths if paths is not None else data_paths.get_data_paths(root=data_root)
    return mixtures.recompute_counts(paths, count_examples=count_local_examples, path=path)
