"""Held-out instances of seen tasks (OPT-IML's third level), as filtered copies of tasks.

An instance of a dataset is held out when a seeded hash of its example key falls in the
first `fraction` of the hash range:

    bucket = FarmHash64(f"{seed}/{source}/{dataset}/{key}") mod 10,000
             (tf.strings.to_hash_bucket_fast)
    held out  <=>  bucket < round(fraction * 10,000)

The key is the raw example's stable key (`_example_key`, e.g. "train:17"), and the salt
names the dataset, not the task, so every variant of a dataset (zero-/few-shot, options,
inverted) holds out the same instances. For a task `T` two copies are registered:

    T:seen_instances_s<seed>_b<buckets>      split "train": T's train split without them
    T:held_out_instances_s<seed>_b<buckets>  split "validation": only them, from T's train split

The filter runs inside the copies' data source, on rendered examples, so everything
downstream (tokenisation, postprocessing, metrics) is the original task's. Few-shot
variants draw their exemplars from the unfiltered train split, so a held-out instance can
appear inside another example's prompt; the protocols here train on zero-shot variants
by default for that reason.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from flan_jax.tasks import naming

HASH_BUCKETS = 10_000
SEEN_SPLIT = "train"
HELD_OUT_SPLIT = "validation"


def held_out_buckets(fraction: float) -> int:
    """How many of the `HASH_BUCKETS` buckets are held out; checks `fraction`."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"instance_fraction must be in (0, 1), got {fraction!r}.")
    return round(fraction * HASH_BUCKETS)


def _salt(task_name: str, seed: int) -> str:
    # A derived copy ("T:suffix", e.g. a demonstrations copy) shares T's dataset and salt.
    task_id = naming.parse_task_name(task_name.partition(":")[0])
    return f"{seed}/{task_id.source}/{task_id.dataset}/"


def _is_held_out_tensor(key: tf.Tensor, salt: str, buckets: int) -> tf.Tensor:
    bucket = tf.strings.to_hash_bucket_fast(tf.strings.join([salt, key]), HASH_BUCKETS)
    return bucket < buckets


def is_held_out_instance(task_name: str, key: str, *, fraction: float, seed: int = 0) -> bool:
    """Whether example `key` of `task_name`'s dataset is a held-out instance."""
    salt = _salt(task_name, seed)
    return bool(_is_held_out_tensor(tf.constant(key), salt, held_out_buckets(fraction)))


def instance_task_names(task_name: str, *, fraction: float, seed: int = 0) -> tuple[str, str]:
    """(seen-instances copy, held-out-instances copy) names of `task_name`."""
    suffix = f"_s{seed}_b{held_out_buckets(fraction)}"
    return f"{task_name}:seen_instances{suffix}", f"{task_name}:held_out_instances{suffix}"


def _filtered_source(
    source: seqio.DataSource, *, salt: str, buckets: int, keep_held_out: bool, split: str
) -> seqio.DataSource:
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split  # The copy offers one split, read from the original's train split.
        examples = source.get_dataset("train", shuffle=shuffle_files, seed=seed)
        return examples.filter(
            lambda ex: _is_held_out_tensor(ex["_example_key"], salt, buckets) == keep_held_out
        )

    return seqio.FunctionDataSource(dataset_fn, splits=[split])


def register_instance_split(task_name: str, *, fraction: float, seed: int = 0) -> tuple[str, str]:
    """Registers the two copies of `task_name` (see the module docstring); returns their names.

    Idempotent: copies already registered are kept.

    Args:
      task_name: a registered task rendered through our templates (it has "train").
      fraction: the share of the train split held out, in (0, 1).
      seed: the hash seed.
    """
    task = seqio.get_mixture_or_task(task_name)
    if "train" not in task.source.splits:
        raise ValueError(f"Task {task_name!r} has no train split to hold instances out of.")
    salt = _salt(task_name, seed)
    buckets = held_out_buckets(fraction)
    names = instance_task_names(task_name, fraction=fraction, seed=seed)
    for name, keep_held_out, split in zip(names, (False, True), (SEEN_SPLIT, HELD_OUT_SPLIT)):
        if name in seqio.TaskRegistry.names():
            continue
        seqio.TaskRegistry.add(
            name,
            source=_filtered_source(
                task.source, salt=salt, buckets=buckets, keep_held_out=keep_held_out, split=split
            ),
            preprocessors=list(task.preprocessors),
            output_features=task.output_features,
            postprocess_fn=task.postprocessor,
            metric_fns=list(task.metric_fns),
        )
    return names
