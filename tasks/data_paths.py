"""Where the local data of the Flan 2022 submixtures lives, and how a missing dataset is reported.

One data root holds a directory per source; each source directory may be overridden, and
TFDS reads from its own `data_dir`:

    $FLAN_JAX_DATA_DIR/            (or `get_data_paths.root` bound by gin)
      cot/          gsm8k_train.tsv, strategyqa_train.tsv, ...      (see tasks/cot)
      niv2/tasks/   task001_quoref_question_generation.json, ...    (see tasks/niv2)
      t0/           adversarial_qa/dbert/train.jsonl, ...            (see tasks/t0)
      t0_templates/ promptsource templates tree (*/templates.yaml)   (see tasks/t0)
      dialog/       wiki_dialog/data_train.jsonl*, qrecc/qrecc_train.json  (see tasks/dialog)

Paths are resolved when data is read, never at import or registration, so a gin binding or
an environment variable set after registration still applies. Nothing here downloads.

A gin file binds the root from the outside:

    from __gin__ import dynamic_registration
    from flan_jax.tasks import data_paths
    data_paths.get_data_paths.root = "/data/flan"
"""
from __future__ import annotations

import collections.abc
import dataclasses
import functools
import os
from typing import Callable, Iterator, Mapping, Sequence

import seqio

from flan_jax.tasks import naming, sources, templates

ENV_DATA_DIR = "FLAN_JAX_DATA_DIR"
ENV_TFDS_DATA_DIR = "TFDS_DATA_DIR"


class MissingDataError(FileNotFoundError):
    """A dataset's local files are absent; the message says which and how to get them."""


@dataclasses.dataclass(frozen=True)
class DataPaths:
    """The resolved data locations.

    Attributes:
      root: the data root; a source's directory defaults to `root/<source>`.
      tfds_data_dir: TFDS `data_dir` for sources that can read prepared TFDS datasets.
      source_dirs: per-source overrides, e.g. {"cot": "/mnt/flan/cot_data"}.
    """

    root: str | None = None
    tfds_data_dir: str | None = None
    source_dirs: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def source_dir(self, source: str) -> str:
        """The directory of `source`; raises MissingDataError when nothing is configured."""
        if source in self.source_dirs:
            return os.fspath(self.source_dirs[source])
        if self.root is None:
            raise MissingDataError(
                f"No data location configured for source {source!r}: set the environment "
                f"variable {ENV_DATA_DIR}, bind data_paths.get_data_paths.root in gin, or "
                f"pass source_dirs={{{source!r}: DIR}}."
            )
        return os.path.join(self.root, source)


def get_data_paths(
    *,
    root: str | None = None,
    tfds_data_dir: str | None = None,
    source_dirs: Mapping[str, str] | None = None,
) -> DataPaths:
    """Resolves the data locations: explicit (or gin-bound) arguments, then environment.

    Args:
      root: the data root; defaults to $FLAN_JAX_DATA_DIR.
      tfds_data_dir: the TFDS data_dir; defaults to $TFDS_DATA_DIR (TFDS's own default
        when that is unset too).
      source_dirs: per-source directory overrides.
    """
    return DataPaths(
        root=root if root is not None else os.environ.get(ENV_DATA_DIR) or None,
        tfds_data_dir=(tfds_data_dir if tfds_data_dir is not None
                       else os.environ.get(ENV_TFDS_DATA_DIR) or None),
        source_dirs=dict(source_dirs or {}),
    )


def resolve_data_paths(paths: DataPaths | None) -> DataPaths:
    """`paths` when given, else the locations configured now (gin binding or environment)."""
    return paths if paths is not None else get_data_paths()


def require_path(path: str, *, dataset: str, how_to_get: str) -> str:
    """Returns `path` if it exists; otherwise raises MissingDataError naming the dataset."""
    if not os.path.exists(path):
        raise MissingDataError(
            f"Data for dataset {dataset!r} not found: expected {path}. {how_to_get}"
        )
    return path


def read_tfds_split(
    name: str, split: str, data_dir: str | None, *, dataset: str, how_to_get: str
) -> Iterator[dict]:
    """Yields numpy examples of an already prepared TFDS dataset; never downloads.

    Args:
      name: the versioned TFDS name, e.g. "qrecc:1.0.0".
      split: the split to read.
      data_dir: the TFDS data_dir (None: TFDS's default).
      dataset: our dataset name, for the error message.
      how_to_get: the instructions appended to the error when the dataset is not prepared.
    """
    import tensorflow_datasets as tfds  # Imported here: most sources never need TFDS.

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        prepared = False
    if not prepared:
        raise MissingDataError(
            f"Data for dataset {dataset!r} not found: TFDS dataset {name!r} is not prepared "
            f"in data_dir {data_dir or 'the TFDS default'}. {how_to_get}"
        )
    yield from tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))


class LazyExemplarPool(collections.abc.Sequence):
    """Few-shot exemplars read from the train split on first use, not at registration.

    `sources.FewShotSpec.pool` is indexed and iterated; this sequence defers the read so
    registering thousands of few-shot tasks does no I/O. At most `max_size` examples are
    kept (the first ones of the split, so the pool is the same in every process).
    """

    def __init__(self, load_examples: Callable[[], Iterator[tuple[str, Mapping]]],
                 max_size: int = 256):
        self._load_examples = load_examples
        self._max_size = max_size
        self._examples: Sequence[tuple[str, Mapping]] | None = None

    def _materialize(self) -> Sequence[tuple[str, Mapping]]:
        if self._examples is None:
            examples = []
            for item in self._load_examples():
                if len(examples) >= self._max_size:
                    break
                examples.append(item)
            self._examples = tuple(examples)
        return self._examples

    def __getitem__(self, index):
        return self._materialize()[index]

    def __len__(self) -> int:
        return len(self._materialize())


def make_few_shot_spec(
    load_examples: Callable[[], Iterator[tuple[str, Mapping]]],
    vocabulary: seqio.Vocabulary,
    *,
    num_shots: int = 5,
    max_input_tokens: int = 1920,
    pool_size: int = 256,
) -> sources.FewShotSpec:
    """A few-shot spec over a lazily read train split, pruned by `vocabulary`'s token count.

    Args:
      load_examples: yields (key, fields) train examples; called on first use only.
      vocabulary: counts prompt tokens for the input budget.
      num_shots: exemplars drawn per example before pruning.
      max_input_tokens: the input budget (1920 in the Flan 2022 collection).
      pool_size: how many train examples the pool keeps.
    """
    return sources.FewShotSpec(
        pool=LazyExemplarPool(load_examples, max_size=pool_size),
        num_shots=num_shots,
        max_input_tokens=max_input_tokens,
        count_tokens=lambda text: len(vocabulary.encode(text)),
    )


def register_dataset_task(
    task_id: naming.TaskId,
    task_templates: Sequence[templates.Template],
    load_split: sources.LoadSplitFn,
    vocabulary: seqio.Vocabulary,
    *,
    splits: Sequence[str],
    seed: int,
    num_shots: int,
    max_input_tokens: int,
) -> str:
    """Registers one variant of a dataset read from local files; returns its task name.

    The registration the CoT, dialog and T0 sources share: few-shot variants draw their
    exemplars from `load_split("train")`, read on first use (see `make_few_shot_spec`).

    Args:
      task_id: the task's identity (source, dataset, variant, inverted).
      task_templates: the templates one is drawn from per example.
      load_split: yields the (key, fields) examples of a split; reads nothing until called.
      vocabulary: the output features' vocabulary (also counts few-shot prompt tokens).
      splits: the splits the task offers.
      seed: the rendering seed.
      num_shots: exemplars per few-shot prompt before pruning to `max_input_tokens`.
      max_input_tokens: the few-shot input budget.
    """
    few_shot = None
    if task_id.few_shot:
        few_shot = make_few_shot_spec(functools.partial(load_split, "train"), vocabulary,
                                      num_shots=num_shots, max_input_tokens=max_input_tokens)
    spec = sources.RenderSpec(task_id, task_templates, seed=seed, few_shot=few_shot)
    sources.register_rendered_task(spec, load_split, vocabulary=vocabulary, splits=list(splits))
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
    num_shots: int,
    max_input_tokens: int,
) -> list[str]:
    """Registers every variant of a dataset, with the original and the inverted templates.

    Args:
      source: the submixture (`cot`, `dialog`).
      dataset: the dataset name.
      variants: the variants to register.
      load_templates: `inverted -> TemplateSet`.
      load_split: yields the (key, fields) examples of a split.
      vocabulary, splits, seed, num_shots, max_input_tokens: as in `register_dataset_task`.
    """
    return [
        register_dataset_task(
            naming.TaskId(source, dataset, variant, inverted=inverted),
            load_templates(inverted).templates, load_split, vocabulary, splits=splits,
            seed=seed, num_shots=num_shots, max_input_tokens=max_input_tokens)
        for inverted in (False, True)
        for variant in variants
    ]
