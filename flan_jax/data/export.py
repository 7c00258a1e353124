"""Streaming, resumable export of rendered tasks and mixtures to JSONL or ArrayRecord.

An export reads every task of a mixture as a sequential stream of rendered text
examples (the task's source plus any text preprocessors, stopping before tokenization),
interleaves the streams by the mixture's rates with a seeded numpy generator, and writes
the result shard by shard. Nothing is held in memory beyond the example being written, so
the peak memory does not grow with the size of the mixture.

The output directory after an export of 25 examples with `examples_per_shard=10`:

    OUT/
      manifest.json          configuration, completed shards, sampler state
      train-00000.jsonl      examples 0..9
      train-00001.jsonl      examples 10..19
      train-00002.jsonl      examples 20..24

Each record is one JSON object with the text and every `_`-prefixed feature:

    {"inputs": "What is 2 + 3?", "targets": "5", "_example_key": "train:17",
     "_task_name": "demo__arith__zs_opt", "_task_source": "demo",
     "_template_idx": 3, "_template_type": "zs"}

JSONL shards hold one object per line; ArrayRecord shards hold the same objects as UTF-8
JSON records. A shard is written to a temporary file and renamed when complete, then the
manifest (also replaced atomically) records it together with the sampler state: the
generator's state, how many examples each task stream has consumed and which streams
are exhausted. A killed export restarts from the last recorded shard by reopening each
task stream past the examples it already consumed, so the resumed output is identical to
an uninterrupted one: no duplicates, no gaps. This shard-then-manifest protocol
(`open_sharded_output`, `write_manifest`) is shared with `flan_jax.ipt.synthesis`.

A task whose stream runs out leaves the draw and the remaining rates are renormalised;
the export ends at `max_examples` or when every stream is exhausted.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import seqio
import tensorflow as tf

from flan_jax.data import file_io
from flan_jax.errors import UserError

FORMATS = ("jsonl", "arrayrecord")
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_SHARD_SUFFIXES = {"jsonl": "jsonl", "arrayrecord": "array_record"}
# The manifest fields that must match for an export to be resumed.
_RESUME_FIELDS = ("name", "split", "seed", "format", "examples_per_shard", "max_examples")
_TOKENIZING_PREPROCESSORS = (
    seqio.preprocessors.tokenize,
    seqio.preprocessors.tokenize_and_append_eos,
)
Provider: TypeAlias = seqio.Task | seqio.Mixture


class ExportError(UserError, ValueError):
    """Arguments or an export directory that cannot be used as asked."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What to export and where.

    Attributes:
      name: a registered seqio task or mixture.
      out_dir: the export directory; an existing export there is resumed.
      format: "jsonl" or "arrayrecord".
      split: the split every task is read from.
      seed: seeds the mixture sampler (the rendering seed belongs to the tasks).
      max_examples: stop after this many examples; None exports every stream to its end.
      examples_per_shard: examples per shard file (the last one may hold fewer).
    """

    name: str
    out_dir: str
    format: str = "jsonl"
    split: str = "train"
    seed: int = 0
    max_examples: int | None = None
    examples_per_shard: int = 10_000

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ExportError(f"ExportConfig.format must be one of {FORMATS}, got {self.format!r}.")
        if self.max_examples is not None and self.max_examples < 1:
            raise ExportError(
                f"ExportConfig.max_examples must be a positive integer or None, got "
                f"{self.max_examples!r}."
            )
        if self.examples_per_shard < 1:
            raise ExportError(
                "ExportConfig.examples_per_shard must be positive, got "
                f"{self.examples_per_shard!r}."
            )


def get_mixture_or_task(name: str) -> Provider:
    """Looks up a registered task or mixture; an unknown name lists the closest ones."""
    if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
        return seqio.get_mixture_or_task(name)
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ExportError(f"No task or mixture is registered as {name!r}.{hint}")


def get_task_rates(name: str, split: str) -> list[tuple[seqio.Task, float]]:
    """The tasks of a task or mixture with a positive rate and the split, with their rates."""
    provider = get_mixture_or_task(name)
    if isinstance(provider, seqio.Task):
        pairs = [(provider, 1.0)]
    else:
        pairs = [(task, float(provider.get_rate(task))) for task in provider.tasks]
    kept = [(task, rate) for task, rate in pairs if rate > 0 and split in task.splits]
    if not kept:
        raise ExportError(f"{name}: no task with a positive rate has a {split!r} split.")
    return kept


def make_text_dataset(task: seqio.Task, split: str) -> tf.data.Dataset:
    """The task's examples as text: its source and preprocessors up to tokenization."""
    dataset = task.source.get_dataset(split=split, shuffle=False)
    for preprocessor in task.preprocessors:
        function = getattr(preprocessor, "func", preprocessor)  # functools.partial
        if (
            isinstance(preprocessor, seqio.CacheDatasetPlaceholder)
            or function in _TOKENIZING_PREPROCESSORS
        ):
            break
        dataset = seqio.utils.add_kwargs_to_transform(
            preprocessor, sequence_length=None, output_features=task.output_features
        )(dataset)
    return dataset


def to_json_value(value: Any) -> Any:
    """Converts numpy / bytes values from `as_numpy_iterator` into JSON values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [to_json_value(item) for item in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, np.generic):
        return to_json_value(value.item())
    return value


def to_json_example(example: Mapping[str, Any]) -> dict[str, Any]:
    """inputs and targets first, then the other features by name."""
    keys = [key for key in ("inputs", "targets") if key in example]
    keys += sorted(key for key in example if key not in ("inputs", "targets"))
    return {key: to_json_value(example[key]) for key in keys}


class TaskStream:
    """Reads one task's text examples in order; can reopen after `consumed` examples."""

    def __init__(self, task: seqio.Task, split: str, consumed: int = 0):
        self.task = task
        self.split = split
        self.consumed = consumed
        self._iterator: Iterator[dict] | None = None

    def next_example(self) -> dict | None:
        """The next example, or None when the stream is exhausted."""
        if self._iterator is None:
            dataset = make_text_dataset(self.task, self.split).skip(self.consumed)
            self._iterator = dataset.as_numpy_iterator()
        try:
            example = next(self._iterator)
        except StopIteration:
            self._iterator = None  # Releases the tf.data iterator of a finished task.
            return None
        self.consumed += 1
        return example


class MixtureSampler:
    """Interleaves task streams by rate with a seeded generator; its state is resumable.

    Each draw takes one uniform number from the generator and picks a live task with
    probability proportional to its rate; an exhausted task is removed from the draw.
    Same seed, same tasks and rates, same stream contents: the same order, in any process.
    """

    def __init__(self, task_rates: Sequence[tuple[seqio.Task, float]], *, split: str, seed: int):
        self._streams = {task.name: TaskStream(task, split) for task, _ in task_rates}
        self._rates = {task.name: rate for task, rate in task_rates}
        self._rng = np.random.default_rng(seed)
        self._exhausted: set[str] = set()
        self._update_live()

    def _update_live(self):
        self._live = [name for name in self._streams if name not in self._exhausted]
        self._cumulative = np.cumsum([self._rates[name] for name in self._live])

    def get_state(self) -> dict[str, Any]:
        return {
            "rng": self._rng.bit_generator.state,
            "consumed": {name: stream.consumed for name, stream in self._streams.items()},
            "exhausted": sorted(self._exhausted),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores `get_state()` output; call before drawing any example."""
        if set(state["consumed"]) != set(self._streams):
            raise ExportError(
                "The sampler state names tasks "
                f"{sorted(set(state['consumed']) ^ set(self._streams))} that differ from the "
                "mixture's tasks; the registry changed since the export started."
            )
        self._rng.bit_generator.state = state["rng"]
        for name, consumed in state["consumed"].items():
            self._streams[name] = TaskStream(
                self._streams[name].task, self._streams[name].split, int(consumed)
            )
        self._exhausted = set(state["exhausted"])
        self._update_live()

    def next_example(self) -> dict | None:
        """The next example of the mixture, or None when every stream is exhausted."""
        while self._live:
            threshold = self._rng.random() * self._cumulative[-1]
            name = self._live[int(np.searchsorted(self._cumulative, threshold, side="right"))]
            try:
                example = self._streams[name].next_example()
            except tf.errors.OpError as e:
                raise RuntimeError(f"Reading task {name!r} failed: {e.message}") from e
            if example is not None:
                return example
            self._exhausted.add(name)
            self._update_live()
        return None


def _shard_name(config: ExportConfig, index: int) -> str:
    return f"{config.split}-{index:05d}.{_SHARD_SUFFIXES[config.format]}"


def _draw_examples(sampler: MixtureSampler, budget: int) -> Iterator[dict]:
    """Up to `budget` examples of the sampler, as JSON-ready dicts."""
    for _ in range(budget):
        example = sampler.next_example()
        if example is None:
            return
        yield to_json_example(example)


def _write_shard(path: str, export_format: str, sampler: MixtureSampler, budget: int) -> int:
    """Writes up to `budget` examples to `path` atomically; returns how many were written.

    Nothing is written when the sampler has no example left.
    """
    examples = _draw_examples(sampler, budget)
    first = next(examples, None)
    if first is None:
        return 0
    records = (json.dumps(e, ensure_ascii=False) for e in itertools.chain([first], examples))
    count = 0
    with file_io.atomic_output_path(path) as temp_path:
        if export_format == "jsonl":
            with open(temp_path, "w", encoding="utf-8") as f:
                for count, record in enumerate(records, start=1):  # noqa: B007 (count is returned)
                    f.write(record + "\n")
                f.flush()
                os.fsync(f.fileno())
        else:
            from array_record.python import array_record_module  # Only this format needs it.

            writer = array_record_module.ArrayRecordWriter(temp_path, "group_size:1")
            try:
                for count, record in enumerate(records, start=1):  # noqa: B007 (count is returned)
                    writer.write(record.encode())
            finally:
                writer.close()
    return count


def _start_manifest(
    task_rates: Sequence[tuple[seqio.Task, float]], sampler: MixtureSampler
) -> dict[str, Any]:
    return {
        "rates": {task.name: rate for task, rate in task_rates},
        "shards": [],
        "num_examples": 0,
        "complete": False,
        "state": sampler.get_state(),
    }


def read_manifest(out_dir: str) -> dict[str, Any] | None:
    """The manifest of an export (or other sharded output) directory, or None when none."""
    path = os.path.join(out_dir, MANIFEST_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot read the manifest: {e}") from e


def write_manifest(out_dir: str, manifest: Mapping[str, Any]) -> None:
    """Replaces the directory's manifest atomically (after the shard it records is in place)."""
    file_io.write_json_atomically(os.path.join(out_dir, MANIFEST_NAME), manifest)


def open_sharded_output(
    out_dir: str, *, settings: Mapping[str, Any], start: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The manifest of a resumable sharded output directory: a new one, or the one to resume.

    The protocol of every resumable writer (the export, `flan_jax.ipt.synthesis`): a shard
    is written to a temporary file and renamed into place, then the manifest recording it
    is replaced atomically, so a killed writer loses at most the shard it was writing.

    A directory without a manifest gets `{"version", **settings, **start()}`, written
    before any shard. An existing manifest must have been written with the same version
    and `settings` (compared as JSON values); the temporary file of a shard a killed writer
    was writing is removed.

    Args:
      out_dir: the directory (created if missing); one writer owns it.
      settings: the arguments that decide the output; a resume must repeat them.
      start: the writer's own fields of a new manifest (shard list, progress, state).

    Raises:
      ExportError: the manifest is unreadable or was written with other settings.
    """
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    os.makedirs(out_dir, exist_ok=True)
    manifest = read_manifest(out_dir)
    if manifest is None:
        manifest = {"version": MANIFEST_VERSION, **settings, **start()}
        write_manifest(out_dir, manifest)
        return manifest
    path = os.path.join(out_dir, MANIFEST_NAME)
    if manifest.get("version") != MANIFEST_VERSION:
        raise ExportError(
            f"{path}: version {manifest.get('version')!r} is not "
            f"{MANIFEST_VERSION}; write to a new directory."
        )
    for field, value in settings.items():
        if manifest.get(field) != value:
            raise ExportError(
                f"{path}: field {field!r} is {manifest.get(field)!r} but this run asks for "
                f"{value!r}; resume with the same arguments or use a new output directory."
            )
    file_io.remove_temporary_files(out_dir)  # the shard a killed writer was writing
    return manifest


def _check_rates(manifest: Mapping[str, Any], config: ExportConfig, rates: Mapping[str, float]):
    if manifest["rates"] != dict(rates):
        changed = sorted(set(manifest["rates"].items()) ^ set(rates.items()))
        raise ExportError(
            f"{os.path.join(config.out_dir, MANIFEST_NAME)}: the tasks or rates of "
            f"{config.name!r} changed since the export started (differences: {changed[:5]}); "
            "use a new directory."
        )


def export_mixture(
    config: ExportConfig, *, on_shard: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Exports (or resumes exporting) a task or mixture; returns the final manifest.

    Args:
      config: what to export and where.
      on_shard: called with the number of examples of each shard once it is recorded
        (a progress bar's update).

    Raises:
      ExportError: an unknown name, bad arguments, or a directory holding an export made
        with different arguments.
    """
    task_rates = get_task_rates(config.name, config.split)
    sampler = MixtureSampler(task_rates, split=config.split, seed=config.seed)
    manifest = open_sharded_output(
        config.out_dir,
        settings={field: getattr(config, field) for field in _RESUME_FIELDS},
        start=lambda: _start_manifest(task_rates, sampler),
    )
    _check_rates(manifest, config, {task.name: rate for task, rate in task_rates})
    sampler.set_state(manifest["state"])  # a new manifest holds the initial state
    while not manifest["complete"]:
        budget = config.examples_per_shard
        if config.max_examples is not None:
            budget = min(budget, config.max_examples - manifest["num_examples"])
        name = _shard_name(config, len(manifest["shards"]))
        count = _write_shard(os.path.join(config.out_dir, name), config.format, sampler, budget)
        if count:
            manifest["shards"].append({"file": name, "num_examples": count})
        manifest["num_examples"] += count
        manifest["state"] = sampler.get_state()
        manifest["complete"] = count < budget or manifest["num_examples"] == config.max_examples
        write_manifest(config.out_dir, manifest)
        if on_shard is not None and count:
            on_shard(count)
    return manifest


def read_exported_examples(out_dir: str) -> Iterator[dict[str, Any]]:
    """Yields the examples of an export's recorded shards, in order."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise ExportError(f"{out_dir}: no {MANIFEST_NAME}; not an export directory.")
    for shard in manifest["shards"]:
        path = os.path.join(out_dir, shard["file"])
        if manifest["format"] == "jsonl":
            with open(path, encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)
        else:
            from array_record.python import array_record_module

            reader = array_record_module.ArrayRecordReader(path)
            try:
                for start in range(0, reader.num_records(), 1024):
                    stop = min(start + 1024, reader.num_records())
                    for record in reader.read(start, stop):
                        yield json.loads(record)
            finally:
                reader.close()
