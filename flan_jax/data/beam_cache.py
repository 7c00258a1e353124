"""Offline caching of tasks and mixtures with Apache Beam: seqio's cache, optionally ArrayRecord.

`cache_tasks` builds ONE Beam pipeline over every task of the names it is given (a mixture
stands for its tasks) out of seqio's own transforms (`seqio.beam_utils`: `PreprocessTask`,
`WriteExampleTfRecord`, `GetInfo`, `GetStats`, `WriteJson`), so the result is seqio's cache
format and `get_dataset(use_cached=True)` (`USE_CACHED_TASKS=True` in gin) reads it:

    {output_dir}/{task_name}/
      train.tfrecord-00000-of-00016 ...     the task's examples after its preprocessors up to
                                            `CacheDatasetPlaceholder` (token ids, no EOS yet)
      info.train.json, stats.train.json     features and counts (seqio's)
      train.array_record-00000-of-00016 ... with `array_record=True`: the same records,
      train.array_record.index.json         in provenance order, and their index
      COMPLETED                             written last, once everything above is written

A record carries the task's features after the placeholder, the `_task_name`,
`_example_key`, ... metadata of `tasks.sources` included; seqio's `provenance/*` keys are
used to order the ArrayRecord shards and then dropped, so the TFRecord and ArrayRecord
records are the same examples. The ArrayRecord layout and index are
`flan_jax.data.array_record_cache`'s: record `i` of a split is the `i`-th example in
(source shard, index within the shard) order, the order seqio's `get_dataset(shuffle=False)`
yields them, on any runner.

Runners: the DirectRunner by default; `pipeline_args` go straight to Beam's
`PipelineOptions` (`--runner=DataflowRunner --project=P --region=R --temp_location=gs://...`,
Flink, Spark). Memory per worker: the preprocessing streams (seqio renders one source shard
per worker, an example at a time) and seqio's writers stream; the one grouping is the
ArrayRecord writer, which sorts one output shard in memory before writing it, so a worker
holds at most one ArrayRecord shard (a split's bytes / `num_shards`); raise `num_shards` to
lower it.

Workers find the tasks by name in seqio's registry, so a remote worker must register them
first: `setup_fn` runs on every worker before it reads a task (`CatalogRegistration` registers
flan_jax's catalog with the launching machine's vocabulary and data root). The workers also
need flan_jax installed (`--setup_file=./setup.py` or `--sdk_container_image`) and the data
at the same local path (the catalogs read local files with `open`, so the data root must be
baked into the container image or mounted; a `gs://` root does not work yet). Each task's
rendered source is one seqio shard, so the parallelism is across tasks, not within a task.

Scale limit: every task gets its own branch of seqio's transforms (seqio's own script does
the same), so the pipeline graph grows with the task count: about 0.35 MB of pipeline proto
and 0.45 s of construction per task (measured: 500 Flan 2022 tasks, 175 MB, 227 s). Dataflow
refuses graphs beyond ~10 MB, so cache collections in batches of a few dozen tasks per job.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import seqio
import tensorflow as tf
from apache_beam.options import pipeline_options
from array_record.python import array_record_module
from seqio import beam_utils

from flan_jax.data import array_record_cache, export
from flan_jax.errors import UserError

__all__ = ["CachedTask", "CatalogRegistration", "cache_tasks", "resolve_cache_tasks"]

# Output shards per task split when `num_shards` is not given (seqio's script uses 64; a
# task's rendered source is one shard, and 16 shards already let 16 hosts read in parallel).
DEFAULT_NUM_SHARDS = 16
COMPLETED_FILE = "COMPLETED"
# group_size 1: every record is its own chunk, so a reader seeks to any index directly.
_ARRAY_RECORD_OPTIONS = "group_size:1"


# The catalogs this process has registered: PreprocessTask calls setup_fn once per source
# shard, and a worker reads many tasks' shards.
_REGISTERED_CATALOGS: set[CatalogRegistration] = set()


@dataclasses.dataclass(frozen=True)
class CatalogRegistration:
    """Registers flan_jax's task catalog on a Beam worker (a picklable `setup_fn`).

    It carries what `registry.register_catalog` needs and the launching machine's data
    locations (environment variables do not reach remote workers).

    Attributes:
        vocabulary_path: the Flan 2022 tasks' SentencePiece model (None: the demo one).
        extra_ids: sentinel ids on top of it.
        data_dir: the data root (`$FLAN_JAX_DATA_DIR`), set on the worker when given.
        tfds_data_dir: TFDS's data dir (`$TFDS_DATA_DIR`), set on the worker when given.
    """

    vocabulary_path: str | None = None
    extra_ids: int = 100
    data_dir: str | None = None
    tfds_data_dir: str | None = None

    @classmethod
    def from_environment(
        cls, *, vocabulary_path: str | None, extra_ids: int
    ) -> CatalogRegistration:
        from flan_jax.tasks import data_paths

        return cls(
            vocabulary_path=vocabulary_path,
            extra_ids=extra_ids,
            data_dir=os.environ.get(data_paths.ENV_DATA_DIR),
            tfds_data_dir=os.environ.get(data_paths.ENV_TFDS_DATA_DIR),
        )

    def __call__(self) -> None:
        if self in _REGISTERED_CATALOGS:
            return
        from flan_jax.tasks import data_paths, registry

        for variable, value in (
            (data_paths.ENV_DATA_DIR, self.data_dir),
            (data_paths.ENV_TFDS_DATA_DIR, self.tfds_data_dir),
        ):
            if value is not None:
                os.environ[variable] = value
        registry.register_catalog(
            vocabulary_path=self.vocabulary_path,
            extra_ids=self.extra_ids,
            allow_demo_vocabulary=self.vocabulary_path is None,
        )
        _REGISTERED_CATALOGS.add(self)


@dataclasses.dataclass(frozen=True)
class CachedTask:
    """What `cache_tasks` wrote for one task.

    Attributes:
        task_dir: the task's cache directory.
        num_examples: split -> cached examples (from seqio's stats file).
        array_record: whether ArrayRecord shards and an index were written.
    """

    task_dir: str
    num_examples: Mapping[str, int]
    array_record: bool


def resolve_cache_tasks(names: Sequence[str], splits: Sequence[str]) -> list[seqio.Task]:
    """The tasks of `names` (a mixture gives its tasks), each once, in the order named.

    Raises:
        UserError: an unknown name (with the closest registered ones), a task without a
            `CacheDatasetPlaceholder`, or a task with none of `splits`.
    """
    tasks: dict[str, seqio.Task] = {}
    for name in names:
        provider = export.get_mixture_or_task(name)
        for task in [provider] if isinstance(provider, seqio.Task) else provider.tasks:
            tasks.setdefault(task.name, task)
    not_cacheable = [name for name, task in tasks.items() if not task.supports_caching]
    if not_cacheable:
        raise UserError(
            f"{len(not_cacheable)} task(s) cannot be cached: {', '.join(not_cacheable[:10])}"
            f"{', ...' if len(not_cacheable) > 10 else ''}. A cacheable task has a "
            "seqio.CacheDatasetPlaceholder among its preprocessors; train on these uncached."
        )
    without_split = [name for name, task in tasks.items() if not set(splits) & set(task.splits)]
    if without_split:
        raise UserError(
            f"Task(s) {', '.join(without_split[:10])} have none of the splits "
            f"{list(splits)} (e.g. {without_split[0]} has {list(tasks[without_split[0]].splits)});"
            " pass --split with one they have."
        )
    return list(tasks.values())


def _prepare_task_dir(task_dir: str, *, overwrite: bool) -> None:
    """Refuses to write over an existing (complete or unfinished) cache unless asked to."""
    if tf.io.gfile.exists(task_dir) and tf.io.gfile.listdir(task_dir):
        state = (
            "a complete cache"
            if tf.io.gfile.exists(os.path.join(task_dir, COMPLETED_FILE))
            else "an unfinished cache (no COMPLETED file)"
        )
        if not overwrite:
            raise UserError(
                f"{task_dir} already holds {state}; pass --overwrite (overwrite=True) to "
                "delete and rebuild it, or choose another output directory."
            )
        tf.io.gfile.rmtree(task_dir)
    tf.io.gfile.makedirs(task_dir)


def _no_setup() -> None:
    """The workers' `setup_fn` when the tasks are registered by `modules_to_import` alone."""


def _to_numpy(example: Mapping[str, Any]) -> dict[str, Any]:
    # PreprocessTask yields eager tensors; numpy values pickle cheaply between Beam stages.
    return {key: value.numpy() if tf.is_tensor(value) else value for key, value in example.items()}


def _without_provenance(example: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in example.items()
        if not key.startswith(beam_utils.PROVENANCE_PREFIX)
    }


def _source_position(example: Mapping[str, Any]) -> tuple[int, int]:
    return (
        int(example[beam_utils.SOURCE_SHARD_ID_PROVENANCE_KEY]),
        int(example[beam_utils.ID_WITHIN_SHARD_PROVENANCE_KEY]),
    )


def _key_by_output_shard(
    example: Mapping[str, Any], counts_per_source_shard: Mapping[int, int], num_shards: int
) -> tuple[int, tuple[int, bytes]]:
    """`(output shard, (record index, record))`: record indices follow the provenance order,
    and output shard `k` of `s` holds the contiguous indices `[k*n//s, (k+1)*n//s)`."""
    source_shard, index_within_shard = _source_position(example)
    offset = sum(count for shard, count in counts_per_source_shard.items() if shard < source_shard)
    index = offset + index_within_shard
    total = sum(counts_per_source_shard.values())
    shards = min(num_shards, total)
    starts = [k * total // shards for k in range(shards)]
    shard = bisect.bisect_right(starts, index) - 1
    record = array_record_cache.encode_example(_without_provenance(example))
    return shard, (index, record)


class _WriteArrayRecordShard(beam.DoFn):
    """Sorts one output shard's records by index and writes them as one ArrayRecord file."""

    def __init__(self, task_dir: str, split: str, num_shards: int):
        self._task_dir = task_dir
        self._split = split
        self._num_shards = num_shards

    def process(
        self,
        element: tuple[int, Iterable[tuple[int, bytes]]],
        counts_per_source_shard: Mapping[int, int],
    ) -> Iterator[tuple[int, str, int]]:
        shard, records = element
        ordered = sorted(records, key=lambda pair: pair[0])
        shards = min(self._num_shards, sum(counts_per_source_shard.values()))
        name = array_record_cache.shard_file_name(self._split, shard, shards)
        # ArrayRecord writes local files: write on the worker, then copy (GCS or local).
        with tempfile.TemporaryDirectory() as scratch:
            local_path = os.path.join(scratch, name)
            writer = array_record_module.ArrayRecordWriter(local_path, _ARRAY_RECORD_OPTIONS)
            for _, record in ordered:
                writer.write(record)
            writer.close()
            tf.io.gfile.copy(local_path, os.path.join(self._task_dir, name), overwrite=True)
        yield shard, name, len(ordered)


def _write_index(
    shards: list[tuple[int, str, int]], info: Mapping[str, Any], *, task_dir: str, split: str
) -> str:
    features = {name: spec["dtype"] for name, spec in info.get("features", {}).items()}
    array_record_cache.write_index(
        task_dir, split, features, [(name, count) for _, name, count in sorted(shards)]
    )
    return array_record_cache.index_file_name(split)


def _write_array_record(
    examples: beam.PCollection,
    info: beam.PCollection,
    *,
    label: str,
    task_dir: str,
    split: str,
    num_shards: int,
) -> beam.PCollection:
    """The ArrayRecord shards in provenance order, then their index; returns the index's
    PCollection (one file name, once everything is written)."""
    counts = (
        examples
        | f"{label}/source_shard" >> beam.Map(lambda ex: _source_position(ex)[0])
        | f"{label}/count_per_source_shard" >> beam.combiners.Count.PerElement()
        | f"{label}/counts_dict" >> beam.combiners.ToDict()
    )
    counts_side = beam.pvalue.AsSingleton(counts)
    shards = (
        examples
        | f"{label}/key_by_output_shard"
        >> beam.Map(_key_by_output_shard, counts_side, num_shards=num_shards)
        | f"{label}/group_output_shard" >> beam.GroupByKey()
        | f"{label}/write_array_record"
        >> beam.ParDo(_WriteArrayRecordShard(task_dir, split, num_shards), counts_side)
    )
    return (
        shards
        | f"{label}/list_array_record_shards" >> beam.combiners.ToList()
        | f"{label}/write_index"
        >> beam.Map(_write_index, beam.pvalue.AsSingleton(info), task_dir=task_dir, split=split)
    )


def _add_task(
    pipeline: beam.Pipeline,
    task: seqio.Task,
    *,
    task_dir: str,
    splits: Sequence[str],
    array_record: bool,
    num_shards: int | None,
    setup_fn: Callable[[], object],
    modules_to_import: Sequence[str],
) -> None:
    """Adds one task's splits to `pipeline`, and its COMPLETED file after all of them."""
    written = []
    for split in [split for split in splits if split in task.splits]:
        label = f"{task.name}:{split}"
        preprocess = beam_utils.PreprocessTask(
            task,
            split,
            setup_fn=setup_fn,
            modules_to_import=modules_to_import,
            add_provenance=True,
        )
        shards = num_shards or max(len(preprocess.shards), DEFAULT_NUM_SHARDS)
        examples = (
            pipeline
            | f"{label}/preprocess" >> preprocess
            | f"{label}/to_numpy" >> beam.Map(_to_numpy)
        )
        features = examples | f"{label}/drop_provenance" >> beam.Map(_without_provenance)
        written.append(
            features
            | f"{label}/write_tfrecord"
            >> beam_utils.WriteExampleTfRecord(
                seqio.get_cached_tfrecord_prefix(task_dir, split), num_shards=shards
            )
        )
        info = features | f"{label}/info" >> beam_utils.GetInfo(shards)
        written.append(
            info
            | f"{label}/write_info"
            >> beam_utils.WriteJson(seqio.get_cached_info_path(task_dir, split))
        )
        written.append(
            features
            | f"{label}/stats" >> beam_utils.GetStats(task.output_features)
            | f"{label}/write_stats"
            >> beam_utils.WriteJson(seqio.get_cached_stats_path(task_dir, split))
        )
        if array_record:
            written.append(
                _write_array_record(
                    examples, info, label=label, task_dir=task_dir, split=split, num_shards=shards
                )
            )
    # An empty file written only once every write above has finished (seqio's script does
    # the same): readers take a task's cache as complete when COMPLETED exists.
    _ = (
        written
        | f"{task.name}/all_written" >> beam.Flatten()
        | f"{task.name}/nothing" >> beam.Filter(lambda _: False)
        | f"{task.name}/write_completed"
        >> beam.io.WriteToText(
            os.path.join(task_dir, COMPLETED_FILE), num_shards=1, shard_name_template=""
        )
    )


def _make_pipeline_options(pipeline_args: Sequence[str]) -> pipeline_options.PipelineOptions:
    options = pipeline_options.PipelineOptions(list(pipeline_args))
    unknown = options.get_all_options(retain_unknown_options=True).keys() - set(
        options.get_all_options()
    )
    if unknown:
        raise UserError(
            f"Unknown Beam pipeline options {sorted(unknown)} in {list(pipeline_args)}; see "
            "`python -m apache_beam.examples.wordcount --help` for the options of your runner."
        )
    return options


def _read_num_examples(task_dir: str, split: str) -> int:
    with tf.io.gfile.GFile(seqio.get_cached_stats_path(task_dir, split)) as f:
        return int(json.load(f).get("examples", 0))


def cache_tasks(
    names: Sequence[str],
    *,
    output_dir: str,
    splits: Sequence[str] = ("train",),
    array_record: bool = False,
    num_shards: int | None = None,
    pipeline_args: Sequence[str] = (),
    modules_to_import: Sequence[str] = (),
    setup_fn: Callable[[], object] | None = None,
    overwrite: bool = False,
) -> dict[str, CachedTask]:
    """Caches the tasks of `names` under `output_dir` with one Beam pipeline; see the module.

    The tasks must be registered in this process (the pipeline is built from them) and, on
    a remote runner, by `setup_fn` on every worker.

    Args:
        names: registered tasks or mixtures (a mixture caches each of its tasks).
        output_dir: the cache directory (what `seqio.add_global_cache_dirs` is given).
        splits: the splits to cache; a task caches those of them it has.
        array_record: also write the ArrayRecord shards and their index.
        num_shards: output shards per task split (default: `DEFAULT_NUM_SHARDS`, or the
            source's shard count when larger); ArrayRecord uses at most one per example.
        pipeline_args: Beam pipeline options, e.g. `["--runner=DataflowRunner", ...]`;
            the DirectRunner when empty.
        modules_to_import: modules every worker imports before reading a task.
        setup_fn: a picklable callable every worker runs before reading a task, to
            register the tasks there (`CatalogRegistration(...)` for flan_jax's catalog).
        overwrite: delete and rebuild task caches that already exist in `output_dir`.

    Returns:
        Task name -> what was written.

    Raises:
        UserError: unknown or uncacheable names, an existing cache without `overwrite`,
            unknown pipeline options.
    """
    tasks = resolve_cache_tasks(names, splits)
    options = _make_pipeline_options(pipeline_args)
    task_dirs = {
        task.name: os.path.join(output_dir, seqio.get_task_dir_from_name(task.name))
        for task in tasks
    }
    for task_dir in task_dirs.values():
        _prepare_task_dir(task_dir, overwrite=overwrite)
    with beam.Pipeline(options=options) as pipeline:
        for task in tasks:
            _add_task(
                pipeline,
                task,
                task_dir=task_dirs[task.name],
                splits=splits,
                array_record=array_record,
                num_shards=num_shards,
                setup_fn=setup_fn or _no_setup,
                modules_to_import=modules_to_import,
            )
    return {
        task.name: CachedTask(
            task_dir=task_dirs[task.name],
            num_examples={
                split: _read_num_examples(task_dirs[task.name], split)
                for split in splits
                if split in task.splits
            },
            array_record=array_record,
        )
        for task in tasks
    }
