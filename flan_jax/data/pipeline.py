"""The training input pipeline: seqio examples -> packed numpy batches, resumable.

`make_train_iterator` reads a seqio task or mixture (shuffled with `seed`, repeated
forever, this process's shard only), cuts the example stream into buffers of
`buffer_size` examples, packs each buffer with the best-fit packer of `packing.py`,
shuffles the packed rows of the buffer with a generator seeded by (seed, shard, buffer),
and serves batches of `batch_size // num_shards` rows:

    it = make_train_iterator("demo_mixture", task_feature_lengths={"inputs": 64,
                             "targets": 32}, batch_size=8, seed=0)
    batch = next(it)   # {"encoder_input_tokens": int32 [8, 64], ..., "decoder_loss_weights"}
    state = it.get_state()   # small JSON dict, saved with the checkpoint
    ...
    it = make_train_iterator(..., state=state)   # continues with exactly the next batch

The rows are laid out in the model's feature format (`Model.feature_format`): encoder-
decoder rows as above, or, with `feature_format=packing.DecoderOnlyFormat()`, one decoder
stream of `inputs + targets` tokens (`[8, 96]` here) with the loss on the targets only
(`loss_on_inputs=False`) or on every real token. An example's `targets_loss_mask`, when the
task has one, is kept and multiplies the target loss weights (`packing.TARGETS_LOSS_MASK`).

Everything a batch depends on is a function of (seed, shard, position), so the position
(buffer index, rows already served from that buffer) is the whole state. Only where the
examples come from differs between the two input pipelines (`input_pipeline`):

- "seqio": the task's or mixture's `tf.data` stream (`seqio` mixing, shuffle buffers).
  Restoring replays the stream up to the buffer's start (`skip`), which reads, without
  packing, every example before it: resume time grows with the run.
- "grain": the ArrayRecord shards of the tasks' offline cache, read by index through Grain
  (`grain_pipeline.py`): buffer b is examples [b * buffer_size, (b + 1) * buffer_size) of
  this process's index-addressed mixture, so restoring reads nothing and costs the same at
  step 10 and at step 1M.

"auto" takes "grain" when `use_cached` is set and every task of the mixture has an
ArrayRecord index for the split, else "seqio". The pipeline is part of the state, so a
run cannot silently resume with the other one (their example orders differ).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import seqio

from flan_jax.data import batch_source, grain_pipeline, packing

STATE_VERSION = 1
# Fields of the state that must match the iterator it is restored into.
_STATE_IDENTITY = (
    "mixture_or_task_name",
    "input_pipeline",
    "split",
    "seed",
    "shard_index",
    "num_shards",
    "pack",
    "buffer_size",
    "batch_size",
    "task_feature_lengths",
    "feature_format",
    "loss_on_inputs",
)
# What a state saved before the field existed means (every run was encoder-decoder then).
_STATE_DEFAULTS = {
    "input_pipeline": "seqio",
    "feature_format": packing.EncoderDecoderFormat().to_dict(),
    "loss_on_inputs": False,
}

# How to set a field whose mismatch is not obvious from its name.
_STATE_FIELD_HINTS = {"input_pipeline": " (DataConfig.input_pipeline)"}


@dataclasses.dataclass
class PackingStats:
    """Cumulative real (non-padding) and total token slots of the served batches.

    Decoder-only batches have no encoder stream: its counts stay 0.
    """

    encoder_real: int = 0
    encoder_total: int = 0
    decoder_real: int = 0
    decoder_total: int = 0
    examples: int = 0
    rows: int = 0

    def add_batch(self, batch: Mapping[str, np.ndarray]) -> None:
        for name, value in packing.count_real_tokens(batch).items():
            setattr(self, name, getattr(self, name) + value)
        self.examples += count_examples(batch)
        self.rows += int(np.shape(batch["decoder_target_tokens"])[0])

    @property
    def encoder_efficiency(self) -> float:
        return self.encoder_real / max(self.encoder_total, 1)

    @property
    def decoder_efficiency(self) -> float:
        return self.decoder_real / max(self.decoder_total, 1)

    @property
    def efficiency(self) -> float:
        """Share of real tokens over both streams (the packing efficiency)."""
        return (self.encoder_real + self.decoder_real) / max(
            self.encoder_total + self.decoder_total, 1
        )

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def count_examples(batch: Mapping[str, np.ndarray]) -> int:
    """Examples (decoder segments) in a batch, packed or not, of either feature format."""
    if "decoder_segment_ids" in batch:
        segment_ids = np.asarray(batch["decoder_segment_ids"])
        previous = np.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))
        return int(np.count_nonzero((segment_ids != 0) & (segment_ids != previous)))
    # Unpacked encoder-decoder rows: a row holds an example if its first target is real.
    return int(np.count_nonzero(np.asarray(batch["decoder_target_tokens"])[:, 0]))


class ExampleSource(Protocol):
    """Where a `TrainIterator` reads examples: this process's stream, cut into buffers.

    Buffer `b` is examples `[b * buffer_size, (b + 1) * buffer_size)` of the stream, each a
    dict with 1-D int32 "targets" (EOS included), usually "inputs", and optionally
    `packing.TARGETS_LOSS_MASK`. Implementations: `SeqioExampleSource` (a seqio task or
    mixture read by `tf.data`) and `grain_pipeline.GrainExampleSource` (cached ArrayRecord
    shards read by index).
    """

    # "seqio" or "grain": saved in the state, so a run resumes with the pipeline it started with.
    pipeline_name: str

    def read_buffer(self, buffer_index: int, buffer_size: int) -> list[dict[str, np.ndarray]]:
        """The examples of buffer `buffer_index`; fewer at the end of a finite stream, then []."""
        ...


class SeqioExampleSource:
    """A seqio task's or mixture's shuffled, repeated examples of one process, by `tf.data`.

    Reading buffer `b` after buffer `b - 1` continues the open stream; any other buffer
    (the first read after a restore) reopens the stream and skips `b * buffer_size` examples,
    which reads, without packing, every example before it.
    """

    pipeline_name = "seqio"

    def __init__(
        self,
        provider: seqio.Task | seqio.Mixture,
        *,
        task_feature_lengths: Mapping[str, int],
        split: str,
        seed: int,
        shard_index: int,
        num_shards: int,
        use_cached: bool,
        num_epochs: int | None,
    ):
        self._provider = provider
        self._dataset_args = dict(
            sequence_length=dict(task_feature_lengths),
            split=split,
            use_cached=use_cached,
            shuffle=True,
            seed=seed,
            shard_info=seqio.ShardInfo(shard_index, num_shards),
            num_epochs=num_epochs,
        )
        self._examples: Iterator[dict] | None = None
        self._next_buffer = 0

    def read_buffer(self, buffer_index: int, buffer_size: int) -> list[dict[str, np.ndarray]]:
        if self._examples is None or buffer_index != self._next_buffer:
            dataset = self._provider.get_dataset(**self._dataset_args)
            kept = ("inputs", "targets", packing.TARGETS_LOSS_MASK)
            dataset = dataset.map(lambda ex: {k: ex[k] for k in kept if k in ex})
            self._examples = dataset.skip(buffer_index * buffer_size).as_numpy_iterator()
        self._next_buffer = buffer_index + 1
        return list(itertools.islice(self._examples, buffer_size))


def check_batching(
    *,
    batch_size: int,
    shard_index: int,
    num_shards: int,
    buffer_size: int,
    feature_format: packing.FeatureFormat,
    loss_on_inputs: bool,
) -> None:
    """Raises ValueError for a sharding, batch, buffer or layout a `TrainIterator` cannot serve."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}.")
    if batch_size < 1 or batch_size % num_shards:
        raise ValueError(
            f"batch_size ({batch_size}) must be a positive multiple of "
            f"num_shards ({num_shards}): each process serves batch_size / "
            "num_shards rows."
        )
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be >= 1, got {buffer_size}.")
    packing.check_layout(feature_format=feature_format, loss_on_inputs=loss_on_inputs)


class TrainIterator:
    """Deterministic, resumable iterator of training batches (see the module docstring).

    Packs the buffers of an `ExampleSource`, shuffles their rows and serves them as batches;
    `get_state` / `set_state` are the position (buffer, row) whatever the source. Use
    `make_train_iterator` to build one; iterate it for batch dicts of int32 arrays
    `[batch_size // num_shards, length]`.
    """

    def __init__(
        self,
        source: ExampleSource,
        *,
        mixture_or_task_name: str,
        task_feature_lengths: Mapping[str, int],
        batch_size: int,
        seed: int,
        shard_index: int,
        num_shards: int,
        pack: bool,
        buffer_size: int,
        split: str,
        feature_format: packing.FeatureFormat,
        loss_on_inputs: bool,
    ):
        check_batching(
            batch_size=batch_size,
            shard_index=shard_index,
            num_shards=num_shards,
            buffer_size=buffer_size,
            feature_format=feature_format,
            loss_on_inputs=loss_on_inputs,
        )
        self._source = source
        self._lengths = packing.FeatureLengths.from_mapping(task_feature_lengths)
        self._format = feature_format
        self._config: dict[str, Any] = {
            "mixture_or_task_name": mixture_or_task_name,
            "input_pipeline": source.pipeline_name,
            "split": split,
            "seed": int(seed),
            "shard_index": int(shard_index),
            "num_shards": int(num_shards),
            "pack": bool(pack),
            "buffer_size": int(buffer_size),
            "batch_size": int(batch_size),
            "task_feature_lengths": {
                "inputs": self._lengths.inputs,
                "targets": self._lengths.targets,
            },
            "feature_format": feature_format.to_dict(),
            "loss_on_inputs": bool(loss_on_inputs),
        }
        self.local_batch_size = batch_size // num_shards
        self.stats = PackingStats()
        self._buffer_index = 0
        self._row_offset = 0
        self._batches = 0
        self._rows: dict[str, np.ndarray] | None = None

    @property
    def input_pipeline(self) -> str:
        """The source's pipeline, "seqio" or "grain"."""
        return self._config["input_pipeline"]

    def _load_buffer(self) -> bool:
        """Packs buffer `_buffer_index` of the source; False at the end of data."""
        examples = [
            {"inputs": np.zeros([0], np.int32), **ex}
            for ex in self._source.read_buffer(self._buffer_index, self._config["buffer_size"])
        ]
        if not examples:
            return False
        layout = {"feature_format": self._format, "loss_on_inputs": self._config["loss_on_inputs"]}
        if self._config["pack"]:
            rows = packing.pack_examples(examples, self._lengths, **layout)
            # Best-fit emits rows roughly from the longest examples down; shuffling the
            # rows keeps batches from being sorted by length.
            order = np.random.default_rng(
                [self._config["seed"], self._config["shard_index"], self._buffer_index]
            ).permutation(len(rows["decoder_target_tokens"]))
            rows = {name: value[order] for name, value in rows.items()}
        else:
            rows = packing.pad_examples(examples, self._lengths, **layout)
        self._rows = rows
        return True

    def _take_rows(self, count: int) -> list[dict[str, np.ndarray]] | None:
        pieces = []
        while count:
            if self._rows is None and not self._load_buffer():
                return None
            assert self._rows is not None  # _load_buffer sets _rows when it returns True.
            available = len(self._rows["decoder_target_tokens"]) - self._row_offset
            if available <= 0:
                self._buffer_index += 1
                self._row_offset = 0
                self._rows = None
                continue
            take = min(count, available)
            pieces.append(
                {k: v[self._row_offset : self._row_offset + take] for k, v in self._rows.items()}
            )
            self._row_offset += take
            count -= take
        return pieces

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        pieces = self._take_rows(self.local_batch_size)
        if pieces is None:  # Only finite streams (num_epochs set) end; the rest is dropped.
            raise StopIteration
        batch = {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}
        self.stats.add_batch(batch)
        self._batches += 1
        return batch

    @property
    def packing_efficiency(self) -> float:
        return self.stats.efficiency

    def log_scalars(self) -> dict[str, float]:
        """The share of real tokens in the batches served so far."""
        return {batch_source.PACKING_EFFICIENCY: self.stats.efficiency}

    def get_state(self) -> dict[str, Any]:
        """The position after the last served batch, as a small JSON-serialisable dict."""
        return {
            "version": STATE_VERSION,
            **self._config,
            "buffer_index": self._buffer_index,
            "row_offset": self._row_offset,
            "batches": self._batches,
            "stats": self.stats.to_dict(),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continues from `state` (from `get_state` of an identically configured iterator)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"data state version {state.get('version')!r} is not supported "
                f"(expected {STATE_VERSION})."
            )
        for key in _STATE_IDENTITY:
            saved = state.get(key, _STATE_DEFAULTS.get(key))
            if saved != self._config[key]:
                raise ValueError(
                    f"data state field {key!r} is {saved!r} but this iterator has "
                    f"{self._config[key]!r}; resume with the configuration it was saved with"
                    f"{_STATE_FIELD_HINTS.get(key, '')}."
                )
        self._buffer_index = int(state["buffer_index"])
        self._row_offset = int(state["row_offset"])
        self._batches = int(state["batches"])
        self.stats = PackingStats(**state["stats"])
        self._rows = None


INPUT_PIPELINES = ("auto", "seqio", "grain")


def make_train_iterator(
    mixture_or_task_name: str,
    *,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    num_shards: int = 1,
    pack: bool = True,
    use_cached: bool = False,
    buffer_size: int = 1024,
    split: str = "train",
    num_epochs: int | None = None,
    feature_format: packing.FeatureFormat = packing.EncoderDecoderFormat(),
    loss_on_inputs: bool = False,
    input_pipeline: str = "seqio",
    export_dir: str | None = None,
    state: Mapping[str, Any] | None = None,
) -> TrainIterator:
    """Builds the training batch iterator of one process.

    Args:
      mixture_or_task_name: a registered seqio task or mixture.
      task_feature_lengths: {"inputs": encoder length, "targets": decoder length}; a
        decoder-only row holds inputs + targets tokens.
      batch_size: the global batch size (rows); each process serves
        `batch_size // num_shards` rows.
      seed: shuffling, mixing and row-order seed.
      shard_index: this process's shard (`jax.process_index()`).
      num_shards: the number of shards (`jax.process_count()`).
      pack: best-fit pack examples (features with segment ids and positions); if False,
        one example per row (encoder-decoder: as seqio's unpacked `EncDecFeatureConverter`).
      use_cached: read the task's offline seqio cache.
      buffer_size: examples per packing buffer (larger packs denser; 1024 is plenty).
      split: the split to read.
      num_epochs: None repeats forever; a number ends the iterator after that many passes
        (the last partial batch is dropped).
      feature_format: the row layout the model reads (`Model.feature_format`).
      loss_on_inputs: decoder-only: put loss weights on the inputs too (pre-training text).
      input_pipeline: "seqio", "grain" (the tasks' cached ArrayRecord shards; see the
        module docstring) or "auto" (grain when `use_cached` and every task has them, or
        with `export_dir`).
      export_dir: read an ArrayRecord export of the mixture (`flan-jax data export --format
        arrayrecord`) with grain instead of the tasks (`grain_pipeline.make_export_dataset`).
      state: a `get_state()` dict to continue from; it must have been saved by an iterator
        of the same configuration (feature format and input pipeline included).
    """
    if input_pipeline not in INPUT_PIPELINES:
        raise ValueError(f"input_pipeline must be one of {INPUT_PIPELINES}; got {input_pipeline!r}")
    check_batching(
        batch_size=batch_size,
        shard_index=shard_index,
        num_shards=num_shards,
        buffer_size=buffer_size,
        feature_format=feature_format,
        loss_on_inputs=loss_on_inputs,
    )
    # Raises a clear error for an unknown name before any data is read.
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    if export_dir is not None and input_pipeline == "seqio":
        raise ValueError("an export directory is read by the grain pipeline, not by seqio")
    if input_pipeline == "auto":
        cached = use_cached and grain_pipeline.has_array_record_caches(mixture_or_task_name, split)
        input_pipeline = "grain" if cached or export_dir is not None else "seqio"
    source: ExampleSource
    if input_pipeline == "grain":
        source = grain_pipeline.make_example_source(
            mixture_or_task_name,
            export_dir=export_dir,
            split=split,
            task_feature_lengths=task_feature_lengths,
            seed=seed,
            shard_index=shard_index,
            num_shards=num_shards,
            num_epochs=num_epochs,
        )
    else:
        source = SeqioExampleSource(
            provider,
            task_feature_lengths=task_feature_lengths,
            split=split,
            seed=seed,
            shard_index=shard_index,
            num_shards=num_shards,
            use_cached=use_cached,
            num_epochs=num_epochs,
        )
    iterator = TrainIterator(
        source,
        mixture_or_task_name=mixture_or_task_name,
        task_feature_lengths=task_feature_lengths,
        batch_size=batch_size,
        seed=seed,
        shard_index=shard_index,
        num_shards=num_shards,
        pack=pack,
        buffer_size=buffer_size,
        split=split,
        feature_format=feature_format,
        loss_on_inputs=loss_on_inputs,
    )
    if state is not None:
        iterator.set_state(state)
    return iterator


def _as_python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return value.astype(np.int32)
    return value.item() if isinstance(value, np.generic) else value


def make_eval_examples(
    task_name: str,
    split: str = "validation",
    *,
    task_feature_lengths: Mapping[str, int],
    max_examples: int | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
) -> list[dict[str, Any]]:
    """The examples of one task split in their fixed source order, unpacked.

    Returns dicts with token arrays "inputs" and "targets" (trimmed to the lengths, with
    EOS), their "*_pretokenized" strings, and the task's metadata fields (strings decoded).
    """
    task = seqio.get_mixture_or_task(task_name)
    if not isinstance(task, seqio.Task):
        raise ValueError(
            f"make_eval_examples needs a task, got mixture {task_name!r}; "
            "evaluate its tasks one by one."
        )
    dataset = task.get_dataset(
        sequence_length=dict(task_feature_lengths),
        split=split,
        shuffle=False,
        num_epochs=1,
        shard_info=seqio.ShardInfo(shard_index, num_shards),
    )
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    return [{k: _as_python(v) for k, v in ex.items()} for ex in dataset.as_numpy_iterator()]


def make_eval_batches(
    examples: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    task_feature_lengths: Mapping[str, int],
    feature_format: packing.FeatureFormat = packing.EncoderDecoderFormat(),
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Unpacked batches of `examples` in order; yields (features, number of real rows).

    The rows are in `feature_format` (`Model.feature_format`), with loss weights on the
    targets only, so the evaluation loss is that of the targets given the inputs for
    both model kinds. The last batch is filled with empty rows (all padding) so every
    batch has the same shape; its real rows come first.
    """
    lengths = packing.FeatureLengths.from_mapping(task_feature_lengths)
    empty = {"inputs": np.zeros([0], np.int32), "targets": np.zeros([0], np.int32)}
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        real = len(chunk)
        chunk += [empty] * (batch_size - real)
        yield packing.pad_examples(chunk, lengths, feature_format=feature_format), real
