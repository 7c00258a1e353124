"""The ArrayRecord shards of a task's offline cache: file names, the index, the records.

`flan-jax data cache --array_record` writes them next to seqio's own cache files, in
the task's cache directory (`{cache_dir}/{task_name}/`, which seqio finds through its global
cache dirs), and the Grain input pipeline reads them by index:

    {cache_dir}/{task_name}/
      info.train.json, stats.train.json, COMPLETED        seqio's cache metadata
      train.tfrecord-00000-of-00004 ...                   seqio's cache (always written)
      train.array_record-00000-of-00004 ...               the ArrayRecord shards
      train.array_record.index.json                       the index of those shards

A record is one serialized `tf.train.Example`, the same bytes seqio's TFRecord cache holds
(`seqio.dict_to_tfexample`): the task's features after its `CacheDatasetPlaceholder`
(`inputs` and `targets` token ids, not yet trimmed or EOS-terminated). The index lists the
shards in order with their record counts, so record `i` of the split is found without
opening any shard:

    {"version": 1, "split": "train", "num_records": 5120,
     "features": {"inputs": "int32", "targets": "int32"},
     "shards": [{"file": "train.array_record-00000-of-00004", "num_records": 1280}, ...]}

The writer orders records by their provenance (source shard, then index within it), so the
same task cached twice, on any runner, gives the same record at every index.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from flan_jax.data import file_io
from flan_jax.errors import UserError

INDEX_VERSION = 1
# The dtypes a cached feature may have, as the index names them.
_DTYPES = {"int32": np.int32, "int64": np.int64, "float32": np.float32, "string": object}


def shard_file_name(split: str, index: int, num_shards: int) -> str:
    """`train.array_record-00002-of-00004` for shard 2 of 4 of split "train"."""
    return f"{split}.array_record-{index:05d}-of-{num_shards:05d}"


def index_file_name(split: str) -> str:
    return f"{split}.array_record.index.json"


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    file: str
    num_records: int


@dataclasses.dataclass(frozen=True)
class ArrayRecordIndex:
    """The index of one split's ArrayRecord shards in a task's cache directory.

    Attributes:
        task_dir: the task's cache directory.
        split: the split.
        features: feature name -> dtype name ("int32", "int64", "float32" or "string").
        shards: the shards in order; record `i` of the split is in the first shard whose
            cumulative count exceeds `i`.
    """

    task_dir: str
    split: str
    features: Mapping[str, str]
    shards: tuple[ShardEntry, ...]

    @property
    def num_records(self) -> int:
        return sum(shard.num_records for shard in self.shards)

    @property
    def shard_paths(self) -> list[str]:
        return [os.path.join(self.task_dir, shard.file) for shard in self.shards]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": INDEX_VERSION,
            "split": self.split,
            "num_records": self.num_records,
            "features": dict(self.features),
            "shards": [dataclasses.asdict(shard) for shard in self.shards],
        }


def write_index(
    task_dir: str | os.PathLike,
    split: str,
    features: Mapping[str, str],
    shards: Sequence[tuple[str, int]],
) -> ArrayRecordIndex:
    """Writes (atomically) the index of `shards`, `(file name, record count)` in order."""
    for name, dtype in features.items():
        if dtype not in _DTYPES:
            raise ValueError(f"feature {name!r} has dtype {dtype!r}; expected one of {_DTYPES}")
    index = ArrayRecordIndex(
        task_dir=os.fspath(task_dir),
        split=split,
        features=dict(features),
        shards=tuple(ShardEntry(file, int(count)) for file, count in shards),
    )
    file_io.write_json_atomically(os.path.join(task_dir, index_file_name(split)), index.to_dict())
    return index


def has_index(task_dir: str | os.PathLike, split: str) -> bool:
    return tf.io.gfile.exists(os.path.join(task_dir, index_file_name(split)))


def read_index(task_dir: str | os.PathLike, split: str) -> ArrayRecordIndex:
    """Reads a split's index; a missing or malformed one is a `UserError` naming the file."""
    path = os.path.join(task_dir, index_file_name(split))
    if not tf.io.gfile.exists(path):
        raise UserError(
            f"{path}: no ArrayRecord index; build the cache with `flan-jax data cache "
            "--array_record`"
        )
    with tf.io.gfile.GFile(path) as f:
        try:
            data = json.load(f)
            if data.get("version") != INDEX_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {INDEX_VERSION}")
            index = ArrayRecordIndex(
                task_dir=os.fspath(task_dir),
                split=str(data["split"]),
                features={str(k): str(v) for k, v in data["features"].items()},
                shards=tuple(
                    ShardEntry(str(s["file"]), int(s["num_records"])) for s in data["shards"]
                ),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UserError(f"{path}: not a valid ArrayRecord index ({error})") from None
    if index.split != split:
        raise UserError(f"{path}: indexes split {index.split!r}, not {split!r}")
    return index


def encode_example(example: Mapping[str, Any]) -> bytes:
    """One record: the serialized `tf.train.Example` of `example`, as seqio caches it."""
    import seqio  # seqio pulls in TF text ops; only writers need it.

    return seqio.dict_to_tfexample(dict(example)).SerializeToString()


def decode_example(record: bytes, features: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The feature arrays of one record (`features`: the index's name -> dtype)."""
    proto = tf.train.Example.FromString(record).features.feature
    decoded = {}
    for name, dtype in features.items():
        feature = proto[name]
        if dtype == "string":
            decoded[name] = np.array(list(feature.bytes_list.value), dtype=object)
        elif dtype == "float32":
            decoded[name] = np.array(feature.float_list.value, dtype=np.float32)
        else:
            decoded[name] = np.array(feature.int64_list.value, dtype=_DTYPES[dtype])
    return decoded
