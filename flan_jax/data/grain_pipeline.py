"""The Grain example source: a task's or mixture's cached ArrayRecord shards, read by index.

The "grain" input pipeline of `pipeline.make_train_iterator` reads the ArrayRecord shards
that `flan-jax data cache --array_record` writes next to seqio's cache
(`array_record_cache.py`). For each task of the mixture with a positive rate, in the
mixture's task order:

    ArrayRecordDataSource(index.shard_paths)        record i of the split, any i, O(1)
      .shuffle(seed=task seed)                      a fresh permutation every epoch
      [shard_index::num_shards]                     this process's records of each epoch
      .repeat(num_epochs)
      .map(decode + the task's post-cache steps)    as seqio's `get_dataset(use_cached=True)`

and the tasks are mixed by `grain.MapDataset.mix` with the seqio mixture's rates
(`Mixture.get_rate`): element k of the mixture is a pure function of k (which task, which
index in it), computed in time independent of k, so buffer b of `TrainIterator` is read
directly and a restore reads nothing. The task seed is drawn from (seed, task name), the
same in every process, so the processes' slices of each epoch are disjoint and together
hold every record once.

Cost per element: Grain's index shuffle (a keyed permutation of the task's records) takes
about 2-20 us from a thousand records up on this CPU, but about 0.3 ms on a 50-record task,
so tasks of a few dozen records read slowly; decoding takes about 5 us.

The mixture interleaves its tasks deterministically in the proportions of the rates
(Grain rounds them to integers with the smallest at 100, so a share is off by under 1% of
itself), so every packing buffer holds the tasks in those proportions; the row shuffle of
`TrainIterator` mixes them within batches. With `num_epochs` set, the mixture ends when its
first task runs out, as Grain's mix does.

Post-cache steps: our cacheable tasks (`tasks/sources.py`) run only seqio's
`append_eos_after_trim` after their `CacheDatasetPlaceholder`; it is redone here in numpy
(cut to length - 1, append EOS, for features with `add_eos`), then every output feature is
cut to its length, as seqio's `trim_output_features` does. A task with other post-cache
preprocessors is refused: its examples would differ from seqio's.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
import seqio

from flan_jax.data import array_record_cache, export
from flan_jax.errors import UserError

# The features a training example keeps (as the seqio source does).
TRAIN_FEATURES = ("inputs", "targets", "targets_loss_mask")
# The post-cache preprocessors redone by `PostCacheSteps`.
_SUPPORTED_POST_CACHE = (seqio.preprocessors.append_eos_after_trim,)


def _task_cache_dir(task: seqio.Task) -> str | None:
    """The task's completed seqio cache directory in the global cache dirs, or None."""
    return task.cache_dir if task.supports_caching else None


def has_array_record_caches(mixture_or_task_name: str, split: str) -> bool:
    """Whether every task of the mixture has an ArrayRecord index for `split` in its cache."""
    for task, _ in export.get_task_rates(mixture_or_task_name, split):
        cache_dir = _task_cache_dir(task)
        if cache_dir is None or not array_record_cache.has_index(cache_dir, split):
            return False
    return True


def read_task_index(task: seqio.Task, split: str) -> array_record_cache.ArrayRecordIndex:
    """The task's ArrayRecord index; a `UserError` saying how to build it when missing."""
    if not task.supports_caching:
        raise UserError(
            f"task {task.name!r} has no seqio.CacheDatasetPlaceholder, so it cannot be cached; "
            "train it with DataConfig.input_pipeline='seqio'"
        )
    cache_dir = _task_cache_dir(task)
    if cache_dir is None:
        raise UserError(
            f"task {task.name!r} has no completed cache in seqio's cache dirs "
            f"{seqio.utils.get_global_cache_dirs()}; build it with `flan-jax data cache "
            "--array_record` and name its directory in DataConfig.cache_dirs"
        )
    return array_record_cache.read_index(cache_dir, split)


class PostCacheSteps:
    """Decodes a cached record and applies a task's post-cache steps (module docstring).

    Example, `targets` with `add_eos` (EOS 1) and length 4: cached `[5, 6, 7, 8, 9]` becomes
    `[5, 6, 7, 1]`; cached `[5, 6]` becomes `[5, 6, 1]`.
    """

    def __init__(self, task: seqio.Task, features: Mapping[str, str], lengths: Mapping[str, int]):
        post_cache = task.preprocessors[task.preprocessors.index(_placeholder(task)) + 1 :]
        for preprocessor in post_cache:
            if getattr(preprocessor, "func", preprocessor) not in _SUPPORTED_POST_CACHE:
                raise UserError(
                    f"task {task.name!r}: the grain pipeline redoes only "
                    f"{[f.__name__ for f in _SUPPORTED_POST_CACHE]} after the cache, and the "
                    f"task has {getattr(preprocessor, '__name__', preprocessor)!r}; train it "
                    "with DataConfig.input_pipeline='seqio'"
                )
        if "targets" not in features:
            raise UserError(f"task {task.name!r}: its cache has no 'targets' feature")
        self._features = {name: features[name] for name in TRAIN_FEATURES if name in features}
        outputs = {k: v for k, v in task.output_features.items() if k in self._features}
        self._eos = {
            name: int(feature.vocabulary.eos_id)
            for name, feature in outputs.items()
            if post_cache and feature.add_eos
        }
        self._lengths = {name: int(lengths[name]) for name in outputs if name in lengths}

    def __call__(self, record: bytes) -> dict[str, np.ndarray]:
        example = array_record_cache.decode_example(record, self._features)
        return _append_eos_and_trim(example, eos_ids=self._eos, lengths=self._lengths)


def _append_eos_and_trim(
    example: dict[str, np.ndarray], *, eos_ids: Mapping[str, int], lengths: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """seqio's `append_eos_after_trim` for the `eos_ids` features, then the cut to `lengths`."""
    for name, eos_id in eos_ids.items():
        value = example[name]
        if name in lengths:  # seqio appends EOS after trimming only with a length
            value = value[: lengths[name] - 1]
        example[name] = np.append(value, np.int32(eos_id)).astype(example[name].dtype)
    for name, length in lengths.items():
        example[name] = example[name][:length]
    return example


class ExportedTextSteps:
    """Tokenizes an exported record (`flan-jax data export`) as the task's features would.

    The export holds the rendered text of each example (its tasks' sources and text
    preprocessors, before tokenization); this does the rest of what our tasks do after
    that: tokenize `inputs` and `targets` with the features' vocabulary, then
    `append_eos_after_trim` and the cut to the feature lengths.
    """

    def __init__(self, task: seqio.Task, lengths: Mapping[str, int]):
        features = {k: v for k, v in task.output_features.items() if k in ("inputs", "targets")}
        self._vocabularies = {name: feature.vocabulary for name, feature in features.items()}
        self._eos = {
            name: int(feature.vocabulary.eos_id)
            for name, feature in features.items()
            if feature.add_eos
        }
        self._lengths = {name: int(lengths[name]) for name in features if name in lengths}

    def __call__(self, record: bytes) -> dict[str, np.ndarray]:
        text = json.loads(record)
        example = {
            name: np.asarray(vocabulary.encode(text[name]), np.int32)
            for name, vocabulary in self._vocabularies.items()
        }
        return _append_eos_and_trim(example, eos_ids=self._eos, lengths=self._lengths)


def _placeholder(task: seqio.Task) -> seqio.CacheDatasetPlaceholder:
    return next(p for p in task.preprocessors if isinstance(p, seqio.CacheDatasetPlaceholder))


def task_seed(seed: int, task_name: str) -> int:
    """The task's shuffle seed: the same in every process, different for every task."""
    sequence = np.random.SeedSequence([int(seed), zlib.crc32(task_name.encode("utf-8"))])
    return int(sequence.generate_state(1)[0])


def make_task_dataset(
    task: seqio.Task,
    *,
    split: str,
    task_feature_lengths: Mapping[str, int],
    seed: int,
    shard_index: int,
    num_shards: int,
    num_epochs: int | None,
) -> grain.MapDataset:
    """This process's examples of one cached task, shuffled per epoch (module docstring)."""
    index = read_task_index(task, split)
    if index.num_records < num_shards:
        raise UserError(
            f"task {task.name!r}: {index.num_records} cached {split!r} records cannot be shared "
            f"by {num_shards} processes"
        )
    records = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(index.shard_paths))
    dataset = records.shuffle(seed=task_seed(seed, task.name))[shard_index::num_shards]
    return dataset.repeat(num_epochs).map(
        PostCacheSteps(task, index.features, task_feature_lengths)
    )


def make_mixture_dataset(
    mixture_or_task_name: str,
    *,
    split: str,
    task_feature_lengths: Mapping[str, int],
    seed: int,
    shard_index: int = 0,
    num_shards: int = 1,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """This process's index-addressed examples of a cached task or mixture (module docstring)."""
    tasks_and_rates = export.get_task_rates(mixture_or_task_name, split)
    datasets = [
        make_task_dataset(
            task,
            split=split,
            task_feature_lengths=task_feature_lengths,
            seed=seed,
            shard_index=shard_index,
            num_shards=num_shards,
            num_epochs=num_epochs,
        )
        for task, _ in tasks_and_rates
    ]
    if len(datasets) == 1:
        return datasets[0]
    return grain.MapDataset.mix(datasets, weights=[rate for _, rate in tasks_and_rates])


def make_export_dataset(
    export_dir: str,
    *,
    mixture_or_task_name: str,
    split: str,
    task_feature_lengths: Mapping[str, int],
    seed: int,
    shard_index: int = 0,
    num_shards: int = 1,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """This process's index-addressed examples of an ArrayRecord export of the mixture.

    The export (`flan-jax data export --format arrayrecord`) is already mixed, so its
    records are shuffled per epoch, sliced per process and tokenized; the mixture (or
    task) names the features and their vocabulary and must be the one exported.
    """
    manifest = export.read_manifest(export_dir)
    if manifest is None:
        raise UserError(f"{export_dir}: no {export.MANIFEST_NAME}; not an export directory")
    where = os.path.join(export_dir, export.MANIFEST_NAME)
    expected = {"format": "arrayrecord", "name": mixture_or_task_name, "split": split}
    for field, value in expected.items():
        if manifest.get(field) != value:
            raise UserError(
                f"{where}: {field} is {manifest.get(field)!r}, but training needs {value!r}"
                + (" (export with --format arrayrecord)" if field == "format" else "")
            )
    paths = [os.path.join(export_dir, shard["file"]) for shard in manifest["shards"]]
    if sum(shard["num_examples"] for shard in manifest["shards"]) < num_shards:
        raise UserError(f"{where}: too few examples to share by {num_shards} processes")
    task, _ = export.get_task_rates(mixture_or_task_name, split)[0]
    records = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths))
    dataset = records.shuffle(seed=task_seed(seed, mixture_or_task_name))[shard_index::num_shards]
    return dataset.repeat(num_epochs).map(ExportedTextSteps(task, task_feature_lengths))


class GrainExampleSource:
    """A `pipeline.ExampleSource` over a Grain `MapDataset`: buffer b is a range of indices."""

    def __init__(self, dataset: grain.MapDataset, *, pipeline_name: str = "grain"):
        self._dataset = dataset
        # In the data state: a run resumes only from the same kind of data.
        self.pipeline_name = pipeline_name

    def read_buffer(self, buffer_index: int, buffer_size: int) -> list[dict[str, Any]]:
        length = len(self._dataset)
        start = min(buffer_index * buffer_size, length)
        return [self._dataset[i] for i in range(start, min(start + buffer_size, length))]


def make_example_source(
    mixture_or_task_name: str, *, export_dir: str | None = None, **dataset_args: Any
) -> GrainExampleSource:
    """The grain source of a mixture: its tasks' caches, or its export when `export_dir`.

    `dataset_args`: the keyword arguments of `make_mixture_dataset` (split, lengths, seed,
    process shard, epochs).
    """
    if export_dir is None:
        return GrainExampleSource(make_mixture_dataset(mixture_or_task_name, **dataset_args))
    dataset = make_export_dataset(
        export_dir, mixture_or_task_name=mixture_or_task_name, **dataset_args
    )
    return GrainExampleSource(dataset, pipeline_name="grain-export")
