"""The instruction synthesizer's training data, built from the collection's context-based tasks.

`tasks/ipt/context_tasks.yaml` names the datasets (Flan 2021, T0, NIv2 and the demo's
reading-style generators) and maps each example's fields to a raw text, an instruction and a
response. Each dataset becomes one seqio task, `ipt_synthesizer__SOURCE__DATASET`, whose
examples are that dataset's one-shot examples (`format.encode_example`: `[BOS] text pairs
[EOS]`) concatenated in source order up to `max_tokens` (4,096 in Instruction Pre-Training,
arXiv 2406.14491):

    inputs             []                               (empty: a decoder-only example)
    targets            [t t t 9 9 1 | 0 t t 9 9 9 1]    (two one-shot examples, BOS 0, EOS 1)
    targets_loss_mask  [0 0 0 1 1 1 | 0 0 0 1 1 1 1]    (1 on the pair tokens and EOS)

The first example's BOS is not stored: the model's start token (which is the BOS,
`register_synthesizer_data` checks) comes first in every decoder row, so the model reads
`[BOS] t t t 9 9 1 0 t t ...` exactly as a synthesis prompt (`synthesis.Prompt.model_row`).
A concatenation (first BOS included) never exceeds `max_tokens` and never mixes datasets; an
example longer than the budget alone is skipped. The loss mask reaches the loss weights
through the training pipeline (`packing.TARGETS_LOSS_MASK`). A mixture over the tasks
(equal rates, ours) is what `flan-jax train` reads (gin_configs/runs/ipt_synthesizer*.gin).

Examples are read through each family's own `load_split` (the one reader of its data), except
T0, whose family fuses passage and question into one promptsource prompt: its rows are read
from the same P3 JSONL files before prompting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
import yaml

from flan_jax import errors
from flan_jax.data import packing
from flan_jax.errors import ConfigError
from flan_jax.ipt import format as ipt_format
from flan_jax.tasks import data_paths, mixtures, registry, sources
from flan_jax.tasks.demo import collection as demo_collection
from flan_jax.tasks.niv2 import registration as niv2_registration
from flan_jax.tasks.t0 import registration as t0_registration

CATALOG_PATH = os.path.join(
    os.path.dirname(os.path.abspath(registry.__file__)), "ipt", "context_tasks.yaml"
)
TASK_PREFIX = "ipt_synthesizer"
PAPER_MAX_TOKENS = 4096  # arXiv 2406.14491: one-shot examples concatenated up to 4,096 tokens.
SOURCES = ("flan2021", "t0", "niv2", "demo")
COLLECTION_SOURCES = ("flan2021", "t0", "niv2")
_SEPARATOR = "__"
_ROW_FIELDS = ("text", "instruction", "response")
# Train only: the trainer's task evaluation scores generated answers to rendered inputs,
# which concatenations of one-shot examples do not have.
SPLITS = ("train",)
_SIGNATURE = {
    "inputs": tf.TensorSpec([None], tf.int32),
    "targets": tf.TensorSpec([None], tf.int32),
    packing.TARGETS_LOSS_MASK: tf.TensorSpec([None], tf.int32),
}


@dataclasses.dataclass(frozen=True)
class ContextDataset:
    """One dataset of the catalog, with its field mapping.

    Attributes:
      source: the registry (`SOURCES`).
      dataset: the family's dataset name (t0: "dataset/subset" of P3).
      text, instruction, response: format strings over the example's fields.
      where: the catalog entry, for error messages ("FILE: datasets[3]").
    """

    source: str
    dataset: str
    text: str
    instruction: str
    response: str
    where: str = ""

    @property
    def task_name(self) -> str:
        return make_task_name(self.source, self.dataset)


def make_task_name(source: str, dataset: str) -> str:
    """`ipt_synthesizer__SOURCE__DATASET`; a t0 "dataset/subset" is written "dataset.subset"."""
    return _SEPARATOR.join([TASK_PREFIX, source, dataset.replace("/", ".")])


def parse_task_name(name: str) -> tuple[str, str]:
    """Inverse of `make_task_name`: (source, dataset)."""
    parts = name.split(_SEPARATOR)
    if len(parts) != 3 or parts[0] != TASK_PREFIX or parts[1] not in SOURCES:
        raise ValueError(f"{name!r} is not of the form {TASK_PREFIX}__SOURCE__DATASET.")
    dataset = parts[2].replace(".", "/") if parts[1] == "t0" else parts[2]
    return parts[1], dataset


def _check_format_string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty format string, got {value!r}.")
    try:
        list(string.Formatter().parse(value))
    except ValueError as error:
        raise ConfigError(
            f"{where}: {error} in {value!r} (write literal braces as {{{{ }}}})."
        ) from error
    return value


def _expand_niv2_selection(selection: Any, where: str) -> list[str]:
    if not isinstance(selection, dict) or set(selection) != {"categories"}:
        raise ConfigError(f"{where}.select must be {{categories: [...]}}, got {selection!r}.")
    categories = set(selection["categories"])
    catalog = niv2_registration.load_niv2_catalog()
    unknown = sorted(categories - {task.category for task in catalog})
    if unknown:
        raise ConfigError(f"{where}.select: unknown NIv2 categories {unknown}.")
    return [
        task.name
        for task in catalog
        if task.category in categories and task.languages == "English" and task.split == "train"
    ]


def load_context_datasets(
    path: str = CATALOG_PATH, *, sources: Sequence[str] | None = None
) -> tuple[ContextDataset, ...]:
    """The catalog's datasets (of `sources`, default all), NIv2 selections expanded.

    Raises:
      ConfigError: naming the file, the entry and the field that is wrong.
    """
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'datasets' list.")
    wanted = set(SOURCES if sources is None else sources)
    if wanted - set(SOURCES):
        raise ConfigError(f"Unknown sources {sorted(wanted - set(SOURCES))}; known: {SOURCES}.")
    entries: list[ContextDataset] = []
    for index, row in enumerate(data["datasets"]):
        where = f"{path}: datasets[{index}]"
        keys = {"source", *_ROW_FIELDS}
        if not isinstance(row, dict) or not keys <= set(row):
            raise ConfigError(f"{where} must have the keys {sorted(keys)}, got {row!r}.")
        unknown = set(row) - keys - {"dataset", "select"}
        if unknown or ("dataset" in row) == ("select" in row):
            raise ConfigError(
                f"{where}: needs exactly one of 'dataset' or 'select' and no other keys "
                f"(unknown: {sorted(unknown)})."
            )
        if row["source"] not in SOURCES:
            raise ConfigError(f"{where}.source must be one of {SOURCES}, got {row['source']!r}.")
        if "select" in row and row["source"] != "niv2":
            raise ConfigError(f"{where}: 'select' is for niv2 rows only.")
        mapping = {f: _check_format_string(row[f], f"{where}.{f}") for f in _ROW_FIELDS}
        if row["source"] not in wanted:
            continue
        names = (
            _expand_niv2_selection(row["select"], where)
            if "select" in row
            else [str(row["dataset"])]
        )
        entries.extend(
            ContextDataset(row["source"], name, **mapping, where=where) for name in names
        )
    seen: set[str] = set()
    for entry in entries:
        if entry.task_name in seen:
            raise ConfigError(f"{entry.where}: dataset {entry.dataset!r} is listed twice.")
        seen.add(entry.task_name)
    return tuple(entries)


def _t0_rows_task(dataset: str, where: str) -> t0_registration.T0Task:
    """A catalog task reading P3 `dataset` ("dataset" or "dataset/subset"): its rows file."""
    name, _, subset = dataset.partition("/")
    for task in t0_registration.load_t0_catalog():
        if (task.dataset, task.subset) == (name, subset):
            return task
    raise ConfigError(f"{where}: no T0 catalog task reads P3 dataset {dataset!r}.")


def iterate_source_examples(
    entry: ContextDataset, *, split: str, paths: data_paths.DataPaths | None, seed: int
) -> Iterator[sources.RawExample]:
    """The (key, fields) examples of `entry`'s split (module docstring: T0 reads rows)."""
    if entry.source != "t0":
        family = registry.get_family(entry.source)
        yield from family.load_split(entry.dataset, split=split, paths=paths, seed=seed)
        return
    task = _t0_rows_task(entry.dataset, entry.where)
    resolved = data_paths.resolve_data_paths(paths)
    path = data_paths.require_path(
        t0_registration.rows_file(task, split, resolved),
        dataset=entry.dataset,
        how_to_get=t0_registration.HOW_TO_GET_DATA,
    )
    for index, row in t0_registration.read_rows(path):
        yield f"{split}:{index}", row


def missing_data(entry: ContextDataset, *, paths: data_paths.DataPaths | None) -> str | None:
    """None when `entry`'s train data is present, else what is missing (the family's words)."""
    if entry.source != "t0":
        return registry.get_family(entry.source).missing_data(entry.dataset, paths=paths)
    task = _t0_rows_task(entry.dataset, entry.where)
    try:
        path = t0_registration.rows_file(task, "train", data_paths.resolve_data_paths(paths))
        data_paths.require_path(
            path, dataset=entry.dataset, how_to_get=t0_registration.HOW_TO_GET_DATA
        )
    except data_paths.MissingDataError as error:
        return str(error)
    return None


def make_record(
    entry: ContextDataset, fields: Mapping[str, Any], *, key: str
) -> ipt_format.SynthesisRecord | None:
    """The one-shot record of one example, or None when it cannot be one (module docstring).

    Raises:
      ConfigError: a format string names a field the example does not have.
    """
    values = {}
    for name in _ROW_FIELDS:
        try:
            values[name] = getattr(entry, name).format_map(fields).strip()
        except KeyError as error:
            raise ConfigError(
                f"{entry.where}.{name}: example {key} of {entry.source}/{entry.dataset} has no "
                f"field {error}; its fields are {sorted(fields)}."
            ) from error
        except (IndexError, TypeError):  # e.g. "{answers[text][0]}" of an unanswered row
            return None
    pair = ipt_format.Pair(values["instruction"], values["response"])
    if not all(values.values()) or any(ipt_format.has_marker(v) for v in values.values()):
        return None
    return ipt_format.SynthesisRecord(values["text"], (pair,))


def concatenate_examples(
    encoded: Iterable[tuple[np.ndarray, np.ndarray]], *, max_tokens: int
) -> Iterator[dict[str, np.ndarray]]:
    """Greedily joins consecutive (tokens, loss_mask) examples into rows of <= `max_tokens`.

    Example: lengths 3, 4, 2, 5 with `max_tokens=7` give rows of 3 + 4, 2 + 5; an example
    longer than `max_tokens` is skipped (cutting it would cut its pairs). Each row leaves
    out its first token, the first example's BOS (module docstring).
    """
    tokens: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    length = 0
    for example_tokens, example_mask in encoded:
        if len(example_tokens) > max_tokens:
            continue
        if length + len(example_tokens) > max_tokens:
            yield _joined(tokens, masks)
            tokens, masks, length = [], [], 0
        tokens.append(example_tokens)
        masks.append(example_mask)
        length += len(example_tokens)
    if tokens:
        yield _joined(tokens, masks)


def _joined(tokens: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "inputs": np.zeros([0], np.int32),
        "targets": np.concatenate(tokens)[1:].astype(np.int32),
        packing.TARGETS_LOSS_MASK: np.concatenate(masks)[1:].astype(np.int32),
    }


@dataclasses.dataclass(frozen=True)
class SynthesizerDataConfig:
    """The synthesizer's training data.

    Attributes:
      sources: the catalog sources to register; ("demo",) is the CPU collection, which
        always uses the demo vocabulary.
      max_tokens: the token budget of one concatenation (paper: 4,096); the run's
        `TASK_FEATURE_LENGTHS["targets"]` must be at least this.
      start_token_id: BOS of every one-shot example: the model's `start_token_id`; None
        takes it from the model given to `register_synthesizer_data`.
      vocabulary_path: the model's vocabulary (collection sources); see
        `registry.get_catalog_vocabulary`.
      extra_ids: sentinels added to `vocabulary_path` (decoder vocabularies: 0).
      skip_missing: leave out (and log) datasets whose local data is absent.
      seed: the families' reading seed.
      catalog_path: the dataset catalog.
      mixture_name: the mixture over the tasks.
    """

    sources: tuple[str, ...] = COLLECTION_SOURCES
    max_tokens: int = PAPER_MAX_TOKENS
    start_token_id: int | None = None
    vocabulary_path: str | None = None
    extra_ids: int = 0
    skip_missing: bool = True
    seed: int = 0
    catalog_path: str = CATALOG_PATH
    mixture_name: str = TASK_PREFIX

    def __post_init__(self):
        if isinstance(self.sources, str) or not set(self.sources) <= set(SOURCES):
            raise ConfigError(
                f"SynthesizerDataConfig.sources must be a tuple of {SOURCES}, got {self.sources!r}."
            )
        if "demo" in self.sources and len(self.sources) > 1:
            raise ConfigError(
                "SynthesizerDataConfig.sources: the demo uses its own vocabulary; register "
                f"('demo',) alone, got {self.sources!r}."
            )
        if self.max_tokens < 2:
            raise ConfigError(
                f"SynthesizerDataConfig.max_tokens must be >= 2, got {self.max_tokens}."
            )
        if self.start_token_id is not None and self.start_token_id < 0:
            raise ConfigError(
                f"SynthesizerDataConfig.start_token_id must be >= 0, got {self.start_token_id}."
            )


def iterate_task_examples(
    entry: ContextDataset,
    vocabulary: seqio.Vocabulary,
    *,
    split: str,
    config: SynthesizerDataConfig,
    paths: data_paths.DataPaths | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The concatenated examples of one dataset's split (module docstring)."""
    if config.start_token_id is None:
        raise ConfigError("SynthesizerDataConfig.start_token_id must be set to read examples.")
    bos_id = config.start_token_id

    def encoded() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for key, fields in iterate_source_examples(
            entry, split=split, paths=paths, seed=config.seed
        ):
            record = make_record(entry, fields, key=key)
            if record is not None:
                yield ipt_format.encode_example(vocabulary, record, bos_id=bos_id)

    return concatenate_examples(encoded(), max_tokens=config.max_tokens)


def make_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """Token features without an added EOS, and the loss mask as an output feature.

    The mask must be an output feature: a seqio mixture keeps only those (and needs every
    member to have the same ones, so these tasks mix with each other, not with tasks of
    plain targets). seqio trims only `inputs` and `targets` to their lengths; the packer
    cuts the mask with its targets (`packing.trim_example`).
    """
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=False, required=False),
        "targets": seqio.Feature(vocabulary, add_eos=False),
        packing.TARGETS_LOSS_MASK: seqio.Feature(
            seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.int32
        ),
    }


class SynthesizerDataSource(seqio.FunctionDataSource):
    """A function source that remembers the dataset and settings it concatenates."""

    def __init__(self, entry: ContextDataset, config: SynthesizerDataConfig, dataset_fn, **kwargs):
        super().__init__(dataset_fn, **kwargs)
        self.entry = entry
        self.config = config


def _register_task(
    entry: ContextDataset, vocabulary: seqio.Vocabulary, config: SynthesizerDataConfig
) -> str:
    name = entry.task_name
    if name in seqio.TaskRegistry.names():
        source = seqio.TaskRegistry.get(name).source
        settings = ("max_tokens", "start_token_id", "seed")
        if not isinstance(source, SynthesizerDataSource) or any(
            getattr(source.config, s) != getattr(config, s) for s in settings
        ):
            raise ConfigError(
                f"Task {name} is already registered with other settings; register the "
                f"synthesizer data once per process (settings: {settings})."
            )
        return name

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # Concatenation is in source order; the pipeline shuffles.
        return tf.data.Dataset.from_generator(
            lambda: errors.carry_user_errors(
                lambda: iterate_task_examples(entry, vocabulary, split=split, config=config)
            ),
            output_signature=_SIGNATURE,
        )

    seqio.TaskRegistry.add(
        name,
        source=SynthesizerDataSource(entry, config, dataset_fn, splits=list(SPLITS)),
        preprocessors=[],  # Already tokens, with BOS/EOS per one-shot example.
        output_features=make_output_features(vocabulary),
    )
    return name


@dataclasses.dataclass(frozen=True)
class SynthesizerData:
    """What `register_synthesizer_data` registered: the mixture, its tasks, the skipped."""

    mixture: str
    tasks: tuple[str, ...]
    skipped: dict[str, str]


def _resolve_start_token(config: SynthesizerDataConfig, model: Any) -> SynthesizerDataConfig:
    """`config` with the model's start token (a decoder-only model's `feature_format`'s)."""
    if model is None:
        if config.start_token_id is None:
            raise ConfigError(
                "register_synthesizer_data needs the model (gin: "
                "synth_data.register_synthesizer_data.model = %MODEL) or "
                "SynthesizerDataConfig.start_token_id."
            )
        return config
    model_start = getattr(model.feature_format, "start_token_id", 0)
    if config.start_token_id not in (None, model_start):
        raise ConfigError(
            f"SynthesizerDataConfig.start_token_id is {config.start_token_id} but the model "
            f"starts from {model_start}; leave it unset to take the model's."
        )
    return dataclasses.replace(config, start_token_id=model_start)


def register_synthesizer_data(
    *, config: SynthesizerDataConfig = SynthesizerDataConfig(), model: Any = None
) -> SynthesizerData:
    """Registers one task per catalog dataset of `config.sources` and their mixture.

    Idempotent for the same settings. Reads no data unless `skip_missing`, which checks
    each dataset's files exist (without reading them).

    Args:
      config: the data's settings.
      model: the `interface.Model` to train: its start token is every example's BOS.
    """
    config = _resolve_start_token(config, model)
    if config.sources == ("demo",):
        vocabulary: seqio.Vocabulary = demo_collection.get_demo_vocabulary()
    else:
        vocabulary = registry.get_catalog_vocabulary(
            vocabulary_path=config.vocabulary_path,
            extra_ids=config.extra_ids,
            allow_demo_vocabulary=False,
        )
    skipped: dict[str, str] = {}
    tasks = []
    for entry in load_context_datasets(config.catalog_path, sources=config.sources):
        why = missing_data(entry, paths=None) if config.skip_missing else None
        if why is not None:
            skipped[f"{entry.source}/{entry.dataset}"] = why
            continue
        tasks.append(_register_task(entry, vocabulary, config))
    if skipped:
        logging.warning(
            "Synthesizer data: skipped %d datasets without local data: %s",
            len(skipped),
            ", ".join(sorted(skipped)[:20]),
        )
    if not tasks:
        raise ConfigError(
            f"No synthesizer training data: every dataset of {config.sources} lacks local "
            "data (set $FLAN_JAX_DATA_DIR; `flan-jax tasks` lists what is missing)."
        )
    # Equal rates per dataset (ours: the paper gives no per-dataset weights in REFERENCE.md).
    mixture = mixtures.add_mixture(config.mixture_name, [(task, 1.0) for task in tasks])
    return SynthesizerData(mixture, tuple(tasks), skipped)
