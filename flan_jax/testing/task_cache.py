"""A small, in-process writer of a task's offline cache, for tests and benchmarks.

`write_task_cache` writes what `flan-jax data cache --array_record` writes for one task
split (`array_record_cache.py`): seqio's cache (info / stats JSON, TFRecord shards,
COMPLETED) and the ArrayRecord shards with their index, from the task's examples after its
pre-cache preprocessors, in source order, cut into contiguous shards. It runs in this
process without Beam, for a few thousand examples at most; real caches come from the Beam
command.

`register_counting_tasks` registers cacheable tasks of synthetic token examples whose
tokens say which task and which example they are, so tests can count and compare them
without a tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import seqio
import tensorflow as tf
from array_record.python import array_record_module

from flan_jax.data import array_record_cache, file_io

# Example `i` of counting task `t`: inputs `[ID_OFFSET + i, ...]`, targets `[TASK_OFFSET + t, ...]`.
ID_OFFSET = 1000
TASK_OFFSET = 10
COUNTING_VOCABULARY = seqio.PassThroughVocabulary(size=1 << 20, eos_id=1)
_INDEX_DTYPES = {"int32": "int32", "int64": "int64", "float32": "float32", "string": "string"}


def write_task_cache(
    task_name: str,
    *,
    cache_dir: str,
    split: str = "train",
    num_shards: int = 2,
    max_examples: int | None = None,
) -> array_record_cache.ArrayRecordIndex:
    """Writes seqio's cache and the ArrayRecord cache of `task_name`'s `split` under `cache_dir`.

    Returns the ArrayRecord index; `seqio.add_global_cache_dirs([cache_dir])` makes seqio
    (`use_cached=True`) and the grain pipeline find both.
    """
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.preprocess_precache(task.source.get_dataset(split=split, shuffle=False))
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    examples = list(dataset.as_numpy_iterator())
    features = {
        name: {"shape": [None] * spec.shape.rank, "dtype": spec.dtype.name}
        for name, spec in dataset.element_spec.items()
    }
    task_dir = os.path.join(cache_dir, seqio.utils.get_task_dir_from_name(task_name))
    os.makedirs(task_dir, exist_ok=True)
    shards = []
    for shard, part in enumerate(np.array_split(np.arange(len(examples)), num_shards)):
        records = [array_record_cache.encode_example(examples[i]) for i in part]
        with tf.io.TFRecordWriter(
            f"{seqio.utils.get_cached_tfrecord_prefix(task_dir, split)}-"
            f"{shard:05d}-of-{num_shards:05d}"
        ) as writer:
            for record in records:
                writer.write(record)
        file_name = array_record_cache.shard_file_name(split, shard, num_shards)
        writer = array_record_module.ArrayRecordWriter(
            os.path.join(task_dir, file_name), "group_size:1"
        )
        for record in records:
            writer.write(record)
        writer.close()
        shards.append((file_name, len(records)))
    info = {"num_shards": num_shards, "features": features, "seqio_version": seqio.__version__}
    file_io.write_json_atomically(seqio.utils.get_cached_info_path(task_dir, split), info)
    file_io.write_json_atomically(
        seqio.utils.get_cached_stats_path(task_dir, split), {"examples": len(examples)}
    )
    index = array_record_cache.write_index(
        task_dir,
        split,
        {name: _INDEX_DTYPES[f["dtype"]] for name, f in features.items()},
        shards,
    )
    with open(os.path.join(task_dir, "COMPLETED"), "w", encoding="utf-8") as f:
        f.write("")
    return index


def counting_example(task_index: int, example_index: int) -> dict[str, np.ndarray]:
    """Example `example_index` of counting task `task_index` (lengths vary with the index)."""
    inputs = np.arange(2 + example_index % 7, dtype=np.int32) + 2
    inputs[0] = ID_OFFSET + example_index
    targets = np.full([1 + example_index % 5], 3, np.int32)
    targets[0] = TASK_OFFSET + task_index
    return {"inputs": inputs, "targets": targets}


def register_counting_tasks(
    sizes: Mapping[str, int],
    *,
    mixture_name: str | None = None,
    rates: Mapping[str, float] | None = None,
) -> None:
    """Registers a cacheable counting task of `sizes[name]` examples per name (in order).

    With `mixture_name`, also a mixture of them at `rates` (default 1.0). Idempotent.
    """
    for task_index, (name, size) in enumerate(sizes.items()):
        if name in seqio.TaskRegistry.names():
            continue
        examples = [counting_example(task_index, i) for i in range(size)]

        def dataset_fn(split, shuffle_files, seed=None, examples=examples):
            del split, shuffle_files, seed
            return tf.data.Dataset.from_generator(
                lambda: iter(examples),
                output_signature={
                    "inputs": tf.TensorSpec([None], tf.int32),
                    "targets": tf.TensorSpec([None], tf.int32),
                },
            )

        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                dataset_fn, splits=["train"], num_input_examples={"train": size}
            ),
            preprocessors=[
                seqio.CacheDatasetPlaceholder(),
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features={
                "inputs": seqio.Feature(COUNTING_VOCABULARY, add_eos=True),
                "targets": seqio.Feature(COUNTING_VOCABULARY, add_eos=True),
            },
        )
    if mixture_name and mixture_name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(mixture_name, [(n, (rates or {}).get(n, 1.0)) for n in sizes])
