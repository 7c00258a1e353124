"""Offline caching of tasks and mixtures with Apache Beam: seqio's cache, optionally ArrayRecord.

`cache_tasks` builds ONE Beam pipeline for every task of the names it is given (a mixture
stands for its tasks). The result is seqio's cache format, so `get_dataset(use_cached=True)`
(`USE_CACHED_TASKS=True` in gin) reads it:

    {output_dir}/{task_name}/
      train.tfrecord-00000-of-00016 ...     the task's examples after its preprocessors up to
                                            `CacheDatasetPlaceholder` (token ids, no EOS yet)
      info.train.json, stats.train.json     features and counts (seqio's formats)
      train.array_record-00000-of-00016 ... with `array_record=True`: the same records,
      train.array_record.index.json         and their index
      COMPLETED                             written last, once everything above is written

The pipeline is task-keyed: its graph is the same for 1 task or 4,000 (the tasks are data,
not transforms), so a whole collection fits one Dataflow job:

    Create (task, split, source shard) -> read the shard through the task (seqio's
      PreprocessTask reader: its per-shard seed and provenance), emit ((task, split), record)
      and, per source shard, a summary (example count, features, token counts)
    summaries -> GroupByKey per (task, split) -> the split's layout (a side input)
    records -> output shard from the global index -> GroupByKey (task, split, output shard)
      -> write the TFRecord shard (and the ArrayRecord shard) in index order
    written shards + summaries -> CoGroupByKey per (task, split) -> info, stats, index
      -> GroupByKey per task -> COMPLETED

A record is `seqio.dict_to_tfexample` of the task's features after the placeholder (the
`_task_name`, `_example_key`, ... metadata of `tasks.sources` included; seqio's
`provenance/*` keys dropped). Record `i` of a split is the `i`-th example in (source shard,
index within the shard) order, the order seqio's `get_dataset(shuffle=False)` yields them, on
any runner; output shard `k` of `s` holds records `[k*n//s, (k+1)*n//s)`, in both formats, so
the TFRecord and ArrayRecord shards hold the same records in the same order (the layout and
index are `flan_jax.data.array_record_cache`'s).

Runners: the DirectRunner by default; `pipeline_args` go straight to Beam's
`PipelineOptions` (`--runner=DataflowRunner --project=P --region=R --temp_location=gs://...`,
Flink, Spark). Memory per worker: reading streams (one source shard, an example at a time);
a writer sorts one output shard in memory (a split's bytes / `num_shards`: raise
`num_shards` to lower it); the side input is one small layout per task split (a count per
source shard). No worker holds a whole task unless the task is one output shard.

Workers find the tasks by name in seqio's registry, so a remote worker must register them
first: `setup_fn` runs on every worker before it reads a task (`CatalogRegistration` registers
flan_jax's catalog with the launching machine's vocabulary and data root). The workers also
need flan_jax installed (`--setup_file=./setup.py` or `--sdk_container_image`) and the data
at the same local path (the catalogs read local files with `open`, so the data root must be
baked into the container image or mounted; a `gs://` root does not work yet). Each task's
rendered source is one seqio shard, so the reading is parallel across tasks, not within a
task; the writing is parallel across output shards.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import importlib
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

from flan_jax.data import array_record_cache, export, file_io
from flan_jax.errors import UserError

__all__ = [
    "CachedTask",
    "CatalogRegistration",
    "add_cache_transforms",
    "cache_tasks",
    "resolve_cache_tasks",
]

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
    # PreprocessTask yields eager tensors; numpy values encode and pickle cheaply.
    return {key: value.numpy() if tf.is_tensor(value) else value for key, value in example.items()}


def _without_provenance(example: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in example.items()
        if not key.startswith(beam_utils.PROVENANCE_PREFIX)
    }


@dataclasses.dataclass(frozen=True)
class _SourceShard:
    """One pipeline input: a source shard of a task split, and the split's output shards."""

    task: str
    split: str
    index: int
    name: str
    num_output_shards: int


@dataclasses.dataclass(frozen=True)
class _ShardSummary:
    """What reading one source shard found: its example count, the features of its first
    example (seqio's info format) and its token counts (seqio's stats keys)."""

    source_shard: int
    num_examples: int
    num_output_shards: int
    features: Mapping[str, Any] | None
    token_sums: Mapping[str, int]
    token_maxima: Mapping[str, int]


class _ReadSourceShard(beam.DoFn):
    """Renders one source shard through its task the way seqio's `PreprocessTask` does (its
    per-shard preprocessor seed and provenance): emits `((task, split), (source shard, index
    in shard, record))` per example, streaming, and one `_ShardSummary` on the `summary`
    output at the end."""

    def __init__(self, setup_fn: Callable[[], object], modules_to_import: Sequence[str]):
        self._setup_fn = setup_fn
        self._modules_to_import = tuple(modules_to_import)

    def process(self, shard: _SourceShard) -> Iterator[Any]:
        # Registers the tasks on this worker first: the registry is how it finds them.
        self._setup_fn()
        for module in self._modules_to_import:
            importlib.import_module(module)
        task = seqio.TaskRegistry.get(shard.task)
        preprocess = beam_utils.PreprocessTask(
            task,
            shard.split,
            setup_fn=self._setup_fn,
            modules_to_import=self._modules_to_import,
            add_provenance=True,
        )
        # seqio's own per-shard reader (private, but it is the code seqio's cache is built
        # with: the same seed and provenance per source shard).
        examples = preprocess._emit_examples((shard.index, shard.name))
        # seqio's token counter (GetStats' own), applied per example here so that the
        # stats need no pass of their own over the examples.
        count_tokens = beam_utils._CountTokens(task.output_features)
        sums: dict[str, int] = collections.Counter()
        maxima: dict[str, int] = {}
        features = None
        count = 0
        for example in map(_to_numpy, examples):
            count += 1
            index = int(example[beam_utils.ID_WITHIN_SHARD_PROVENANCE_KEY])
            example = _without_provenance(example)
            if features is None:
                features = beam_utils.GetInfo(num_shards=0)._info_dict([example])["features"]
            for name, tokens in count_tokens.process(example):
                sums[name] += tokens
                maxima[name] = max(tokens, maxima.get(name, tokens))
            record = array_record_cache.encode_example(example)
            yield (shard.task, shard.split), (shard.index, index, record)
        summary = _ShardSummary(
            shard.index, count, shard.num_output_shards, features, dict(sums), maxima
        )
        yield beam.pvalue.TaggedOutput("summary", ((shard.task, shard.split), summary))


@dataclasses.dataclass(frozen=True)
class _SplitLayout:
    """Where a split's examples go: record `offsets[source shard] + index in shard`, and
    output shard `k` of `num_shards` holds records `[k*n//s, (k+1)*n//s)`."""

    num_examples: int
    num_shards: int
    offsets: Mapping[int, int]

    @classmethod
    def from_summaries(cls, summaries: Iterable[_ShardSummary]) -> _SplitLayout:
        ordered = sorted(summaries, key=lambda summary: summary.source_shard)
        offsets, total = {}, 0
        for summary in ordered:
            offsets[summary.source_shard] = total
            total += summary.num_examples
        return cls(total, min(ordered[0].num_output_shards, total), offsets)

    def output_shard(self, record_index: int) -> int:
        starts = [k * self.num_examples // self.num_shards for k in range(self.num_shards)]
        return bisect.bisect_right(starts, record_index) - 1


def _layout_entry(
    element: tuple[tuple[str, str], Iterable[_ShardSummary]],
) -> tuple[tuple[str, str], _SplitLayout]:
    key, summaries = element
    return key, _SplitLayout.from_summaries(summaries)


def _key_by_output_shard(
    element: tuple[tuple[str, str], tuple[int, int, bytes]],
    layouts: Mapping[tuple[str, str], _SplitLayout],
) -> tuple[tuple[str, str, int, int], tuple[int, bytes]]:
    """`((task, split, output shard, output shards), (record index, record))`."""
    (task, split), (source_shard, index_within_shard, record) = element
    layout = layouts[(task, split)]
    index = layout.offsets[source_shard] + index_within_shard
    return (task, split, layout.output_shard(index), layout.num_shards), (index, record)


def _write_local_then_copy(name: str, task_dir: str, write: Callable[[str], None]) -> None:
    # The record writers write local files: write on the worker, then copy (GCS or local).
    with tempfile.TemporaryDirectory() as scratch:
        local_path = os.path.join(scratch, name)
        write(local_path)
        tf.io.gfile.copy(local_path, os.path.join(task_dir, name), overwrite=True)


class _WriteOutputShard(beam.DoFn):
    """Sorts one output shard's records by index and writes seqio's TFRecord shard (and the
    ArrayRecord shard when asked); emits `((task, split), (shard, records))`."""

    def __init__(self, output_dir: str, array_record: bool):
        self._output_dir = output_dir
        self._array_record = array_record

    def process(
        self, element: tuple[tuple[str, str, int, int], Iterable[tuple[int, bytes]]]
    ) -> Iterator[tuple[tuple[str, str], tuple[int, int]]]:
        (task, split, shard, num_shards), indexed_records = element
        records = [record for _, record in sorted(indexed_records, key=lambda pair: pair[0])]
        task_dir = _task_dir(self._output_dir, task)

        def write_tfrecord(path: str) -> None:
            with tf.io.TFRecordWriter(path) as writer:
                for record in records:
                    writer.write(record)

        def write_array_record(path: str) -> None:
            writer = array_record_module.ArrayRecordWriter(path, _ARRAY_RECORD_OPTIONS)
            for record in records:
                writer.write(record)
            writer.close()

        prefix = os.path.basename(seqio.get_cached_tfrecord_prefix(task_dir, split))
        tfrecord_name = f"{prefix}-{shard:05d}-of-{num_shards:05d}"  # WriteToTFRecord's names
        _write_local_then_copy(tfrecord_name, task_dir, write_tfrecord)
        if self._array_record:
            name = array_record_cache.shard_file_name(split, shard, num_shards)
            _write_local_then_copy(name, task_dir, write_array_record)
        yield (task, split), (shard, len(records))


def _write_json(path: str, value: Mapping[str, Any]) -> None:
    # WriteJson's layout: sorted keys, indent 2, one trailing newline.
    file_io.write_text_atomically(path, json.dumps(value, sort_keys=True, indent=2) + "\n")


class _WriteSplitMetadata(beam.DoFn):
    """Once a split's shards are written: seqio's info and stats files (and the ArrayRecord
    index when asked), from the per-source-shard summaries; emits the task name."""

    def __init__(self, output_dir: str, array_record: bool):
        self._output_dir = output_dir
        self._array_record = array_record

    def process(
        self, element: tuple[tuple[str, str], Mapping[str, Iterable[Any]]]
    ) -> Iterator[str]:
        (task, split), grouped = element
        summaries = sorted(grouped["summaries"], key=lambda summary: summary.source_shard)
        written = sorted(grouped["shards"])
        task_dir = _task_dir(self._output_dir, task)
        layout = _SplitLayout.from_summaries(summaries)
        features = next((s.features for s in summaries if s.features is not None), None)
        # GetInfo's and GetStats' formats; like them, an empty split gets empty info.
        info = (
            {}
            if features is None
            else {
                "num_shards": layout.num_shards,
                "features": features,
                "seqio_version": seqio.__version__,
            }
        )
        stats: dict[str, int] = {"examples": layout.num_examples}
        for summary in summaries:
            for name, tokens in summary.token_sums.items():
                stats[name] = stats.get(name, 0) + tokens
            for name, tokens in summary.token_maxima.items():
                max_name = name.replace("tokens", "max_tokens")
                stats[max_name] = max(tokens, stats.get(max_name, tokens))
        _write_json(seqio.get_cached_info_path(task_dir, split), info)
        _write_json(seqio.get_cached_stats_path(task_dir, split), stats)
        if self._array_record:
            dtypes = {name: spec["dtype"] for name, spec in info.get("features", {}).items()}
            names = [
                (array_record_cache.shard_file_name(split, shard, layout.num_shards), count)
                for shard, count in written
            ]
            array_record_cache.write_index(task_dir, split, dtypes, names)
        yield task


def _write_completed(element: tuple[str, Iterable[str]], *, output_dir: str) -> None:
    # An empty file written once every split of the task is written (seqio's script does the
    # same): readers take a task's cache as complete when COMPLETED exists.
    task, _ = element
    with tf.io.gfile.GFile(os.path.join(_task_dir(output_dir, task), COMPLETED_FILE), "w") as f:
        f.write("")  # GFile creates the file on its first write.


def _task_dir(output_dir: str, task_name: str) -> str:
    return os.path.join(output_dir, seqio.get_task_dir_from_name(task_name))


def _source_shards(
    tasks: Sequence[seqio.Task], *, splits: Sequence[str], num_shards: int | None
) -> list[_SourceShard]:
    """The pipeline's input: every source shard of every task split to cache."""
    inputs: list[_SourceShard] = []
    for task in tasks:
        for split in [split for split in splits if split in task.splits]:
            names = task.source.list_shards(split)
            if not names:
                raise UserError(f"Task {task.name} lists no source shards for split {split}.")
            output_shards = num_shards or max(len(names), DEFAULT_NUM_SHARDS)
            inputs.extend(
                _SourceShard(task.name, split, index, name, output_shards)
                for index, name in enumerate(names)
            )
    return inputs


def add_cache_transforms(
    pipeline: beam.Pipeline,
    tasks: Sequence[seqio.Task],
    *,
    output_dir: str,
    splits: Sequence[str],
    array_record: bool,
    num_shards: int | None,
    setup_fn: Callable[[], object],
    modules_to_import: Sequence[str],
) -> None:
    """Adds the caching of `tasks` to `pipeline`: the same transforms for any number of
    tasks (the tasks are data, keyed by `(task, split)`); see the module docstring."""
    read = (
        pipeline
        | "source_shards"
        >> beam.Create(_source_shards(tasks, splits=splits, num_shards=num_shards))
        | "read_source_shards"
        >> beam.ParDo(_ReadSourceShard(setup_fn, modules_to_import)).with_outputs(
            "summary", main="records"
        )
    )
    summaries = read.summary
    layouts = (
        summaries
        | "group_summaries" >> beam.GroupByKey()
        | "split_layouts" >> beam.Map(_layout_entry)
    )
    written = (
        read.records
        | "key_by_output_shard" >> beam.Map(_key_by_output_shard, beam.pvalue.AsDict(layouts))
        | "group_output_shards" >> beam.GroupByKey()
        | "write_output_shards" >> beam.ParDo(_WriteOutputShard(output_dir, array_record))
    )
    _ = (
        {"summaries": summaries, "shards": written}
        | "group_split" >> beam.CoGroupByKey()
        | "write_split_metadata" >> beam.ParDo(_WriteSplitMetadata(output_dir, array_record))
        | "key_by_task" >> beam.Map(lambda task: (task, task))
        | "group_task" >> beam.GroupByKey()
        | "write_completed" >> beam.Map(_write_completed, output_dir=output_dir)
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
    task_dirs = {task.name: _task_dir(output_dir, task.name) for task in tasks}
    for task_dir in task_dirs.values():
        _prepare_task_dir(task_dir, overwrite=overwrite)
    with beam.Pipeline(options=options) as pipeline:
        add_cache_transforms(
            pipeline,
            tasks,
            output_dir=output_dir,
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
