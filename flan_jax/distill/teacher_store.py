"""A sparse, sharded, appendable store of a teacher's per-position top-k distributions.

Distribution matching needs, for every target position of every teacher sample, the
teacher's top-k `(token, log-prob)`. Storing dense `[length, vocab]` targets (as the published
code of arXiv 2301.12726 does) costs ~32k floats per position; here each position costs k ids
and k log-probs.

Layout of a store directory::

    STORE/
      index.json          {"format": "flan_jax.teacher_store", "version": 1, "k": 5,
                           "shards": [{"file": "shard-00000.npz", "num_examples": 1000,
                                       "num_positions": 131072}, ...],
                           "metadata": {...}}
      vocabulary.json     ["!", " the", ...]: teacher token id -> token string
      shard-00000.npz     one flushed batch of examples (see `_SHARD_ARRAYS`)

Token ids are ids in the store's own teacher vocabulary: the OpenAI producer assigns them to
token strings as it meets them; a local teacher passes its tokenizer's pieces up front and
writes its own ids. Either way `vocabulary.json` turns ids back into strings for alignment.

Writes are atomic: a shard is written to a temporary file and renamed, then the vocabulary,
then the index. The index is the source of truth, so a crash leaves at worst an orphan shard
file that no reader sees, and reopening the store appends after the last indexed shard.
One writer at a time per store.

Per example, a shard holds (concatenated over examples, split by `offsets`):
`tokens [L]` the sampled tokens, `token_logprobs [L]` their log-probs (NaN when unknown),
`top_ids [L, k]` and `top_logprobs [L, k]` sorted by decreasing log-prob and padded with
id -1 / log-prob -inf, a string `key` and a JSON `metadata` object.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from flan_jax.data import file_io
from flan_jax.errors import UserError

STORE_FORMAT = "flan_jax.teacher_store"
STORE_VERSION = 1
INDEX_FILE = "index.json"
VOCABULARY_FILE = "vocabulary.json"
PAD_ID = -1  # teacher-vocabulary padding id in `top_ids`

_SHARD_ARRAYS = (
    "offsets",
    "tokens",
    "token_logprobs",
    "top_ids",
    "top_logprobs",
    "keys",
    "metadata",
)


class TeacherStoreError(UserError, ValueError):
    """Bad input to the teacher store: names the file (and line) at fault."""


@dataclasses.dataclass(frozen=True)
class TeacherExample:
    """One teacher sample with its per-position top-k.

    Attributes:
      key: caller-chosen identifier, e.g. "gsm8k-train-17/3" (question 17, sample 3).
      tokens: `[L]` int32 sampled token ids (teacher vocabulary).
      token_logprobs: `[L]` f32 log-prob of each sampled token, NaN when unknown.
      top_ids: `[L, k]` int32 top-k ids, padded with -1.
      top_logprobs: `[L, k]` f32 top-k log-probs, decreasing, padded with -inf.
      metadata: JSON-serialisable extras (question, gold answer, sample text, ...).
    """

    key: str
    tokens: np.ndarray
    token_logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    metadata: dict[str, Any]


def _read_json(path: str) -> Any:
    try:
        return json.loads(file_io.read_text(path, error_type=TeacherStoreError))
    except json.JSONDecodeError as error:
        raise TeacherStoreError(f"{path}: not valid JSON ({error}).") from error


def _read_index(store_dir: str) -> dict[str, Any]:
    path = os.path.join(store_dir, INDEX_FILE)
    if not os.path.exists(path):
        raise TeacherStoreError(
            f"{store_dir}: no {INDEX_FILE}; not a teacher store (create one "
            "with TeacherStoreWriter)."
        )
    index = _read_json(path)
    if index.get("format") != STORE_FORMAT or index.get("version") != STORE_VERSION:
        raise TeacherStoreError(
            f"{path}: expected format {STORE_FORMAT!r} version {STORE_VERSION}; got "
            f"{index.get('format')!r} version {index.get('version')!r}."
        )
    return index


def select_top_k(
    top_ids: np.ndarray, top_logprobs: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorts each row by decreasing log-prob and keeps / pads to exactly k entries.

    Args:
      top_ids: `[L, n]` ids (n may be smaller or larger than k); -1 marks padding.
      top_logprobs: `[L, n]` log-probs; -inf marks padding.
      k: entries to keep per row.

    Returns:
      `([L, k] int32 ids, [L, k] f32 log-probs)`, padded with -1 / -inf.
    """
    top_ids = np.asarray(top_ids, np.int64)
    top_logprobs = np.asarray(top_logprobs, np.float32)
    if top_ids.ndim != 2 or top_ids.shape != top_logprobs.shape:
        raise TeacherStoreError(
            f"top_ids {top_ids.shape} and top_logprobs {top_logprobs.shape} "
            "must both be [length, n]."
        )
    top_logprobs = np.where(top_ids < 0, -np.inf, top_logprobs).astype(np.float32)
    order = np.argsort(-top_logprobs, axis=-1, kind="stable")[:, :k]
    ids = np.take_along_axis(top_ids, order, axis=-1)
    logprobs = np.take_along_axis(top_logprobs, order, axis=-1)
    ids = np.where(logprobs == -np.inf, PAD_ID, ids)
    pad = k - ids.shape[1]
    if pad > 0:
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=PAD_ID)
        logprobs = np.pad(logprobs, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids.astype(np.int32), logprobs.astype(np.float32)


class TeacherStoreWriter:
    """Appends teacher examples to a store, one atomic shard per `flush()`.

    Example::

        with TeacherStoreWriter("/tmp/store", k=5) as writer:
            writer.add_strings("q0/0", [" 3", " +", " 4"],
                               [{" 3": -0.1, " 4": -2.5}, {" +": -0.01}, {" 4": -0.2}])
        # later, another process:
        with TeacherStoreWriter("/tmp/store", k=5) as writer:  # appends
            writer.add("q1/0", tokens, top_ids, top_logprobs)
    """

    def __init__(
        self,
        store_dir: str,
        *,
        k: int | None = None,
        vocabulary: Sequence[str] | None = None,
        examples_per_shard: int = 1000,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Opens `store_dir` for appending, creating the store if needed.

        Args:
          store_dir: the store directory.
          k: top-k kept per position; required for a new store, checked for an existing one.
          vocabulary: the teacher's token strings by id (a local teacher's pieces). Omit to
            let `add_strings` grow the vocabulary; for an existing store it must extend the
            stored one.
          examples_per_shard: `add` flushes a shard when this many examples are buffered.
          metadata: JSON metadata recorded in the index of a new store (teacher name, ...).
        """
        if examples_per_shard <= 0:
            raise ValueError(f"examples_per_shard must be positive; got {examples_per_shard}.")
        self._dir = store_dir
        self._examples_per_shard = examples_per_shard
        self._buffer: list[TeacherExample] = []
        if os.path.exists(os.path.join(store_dir, INDEX_FILE)):
            self._index = _read_index(store_dir)
            if k is not None and k != self._index["k"]:
                raise TeacherStoreError(f"{store_dir}: store has k={self._index['k']}; got k={k}.")
            self._vocabulary = list(_read_json(os.path.join(store_dir, VOCABULARY_FILE)))
            if (
                vocabulary is not None
                and list(vocabulary[: len(self._vocabulary)]) != self._vocabulary
            ):
                raise TeacherStoreError(
                    f"{store_dir}: the given vocabulary does not extend the "
                    "store's vocabulary.json."
                )
        else:
            if k is None or k <= 0:
                raise TeacherStoreError(f"{store_dir}: a new store needs a positive k; got {k}.")
            os.makedirs(store_dir, exist_ok=True)
            self._index = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "k": int(k),
                "shards": [],
                "metadata": dict(metadata or {}),
            }
            self._vocabulary = []
        if vocabulary is not None and len(vocabulary) > len(self._vocabulary):
            self._vocabulary = list(vocabulary)
        self._token_ids = {token: i for i, token in enumerate(self._vocabulary)}
        if len(self._token_ids) != len(self._vocabulary):
            raise TeacherStoreError(f"{store_dir}: the teacher vocabulary has duplicate strings.")

    @property
    def k(self) -> int:
        return int(self._index["k"])

    def token_id(self, token: str) -> int:
        """The store id of a token string, adding it to the vocabulary when new."""
        token_id = self._token_ids.get(token)
        if token_id is None:
            token_id = self._token_ids[token] = len(self._vocabulary)
            self._vocabulary.append(token)
        return token_id

    def add(
        self,
        key: str,
        tokens: Sequence[int] | np.ndarray,
        top_ids: np.ndarray,
        top_logprobs: np.ndarray,
        *,
        token_logprobs: np.ndarray | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Buffers one example given as ids (the local-teacher producer's entry point).

        Args:
          key: identifier of the example.
          tokens: `[L]` sampled token ids.
          top_ids: `[L, n]` top ids per position (n need not be k; sorted and cut/padded).
          top_logprobs: `[L, n]` matching log-probs; -inf or id -1 marks padding.
          token_logprobs: optional `[L]` log-probs of the sampled tokens.
          metadata: optional JSON-serialisable extras.
        """
        tokens = np.asarray(tokens, np.int32).reshape(-1)
        length = len(tokens)
        if np.shape(top_ids)[:1] != (length,) or np.shape(top_ids) != np.shape(top_logprobs):
            raise TeacherStoreError(
                f"example {key!r}: top_ids {np.shape(top_ids)} and top_logprobs "
                f"{np.shape(top_logprobs)} must both be [{length}, n] for {length} tokens."
            )
        limit = len(self._vocabulary)
        if length and (tokens.min() < 0 or (limit and tokens.max() >= limit)):
            raise TeacherStoreError(f"example {key!r}: token ids must lie in [0, {limit}).")
        if token_logprobs is None:
            token_logprobs = np.full((length,), np.nan, np.float32)
        ids, logprobs = select_top_k(top_ids, top_logprobs, self.k)
        self._buffer.append(
            TeacherExample(
                str(key),
                tokens,
                np.asarray(token_logprobs, np.float32).reshape(length),
                ids,
                logprobs,
                dict(metadata or {}),
            )
        )
        if len(self._buffer) >= self._examples_per_shard:
            self.flush()

    def add_strings(
        self,
        key: str,
        tokens: Sequence[str],
        top_logprobs: Sequence[Mapping[str, float]],
        *,
        token_logprobs: Sequence[float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Buffers one example given as token strings (the OpenAI-style producer's form).

        Args:
          key: identifier of the example.
          tokens: `[L]` sampled token strings.
          top_logprobs: per position a `{token string: log-prob}` mapping.
          token_logprobs: optional `[L]` log-probs of the sampled tokens.
          metadata: optional JSON-serialisable extras.
        """
        width = max([len(entry) for entry in top_logprobs] + [1])
        ids = np.full((len(tokens), width), PAD_ID, np.int64)
        logprobs = np.full((len(tokens), width), -np.inf, np.float32)
        for position, entry in enumerate(top_logprobs):
            for column, (token, logprob) in enumerate(entry.items()):
                ids[position, column] = self.token_id(token)
                logprobs[position, column] = logprob
        token_ids = [self.token_id(token) for token in tokens]
        lp = (
            None
            if token_logprobs is None
            else np.asarray([np.nan if x is None else x for x in token_logprobs], np.float32)
        )
        self.add(key, token_ids, ids, logprobs, token_logprobs=lp, metadata=metadata)

    def flush(self) -> None:
        """Writes the buffered examples as one new shard and updates the index atomically."""
        if not self._buffer:
            return
        shard_name = f"shard-{len(self._index['shards']):05d}.npz"
        # Any values: numpy's savez stub would match a **dict[str, ndarray] to allow_pickle.
        arrays: dict[str, Any] = _pack_shard(self._buffer, self.k)
        file_io.write_atomically(
            os.path.join(self._dir, shard_name),
            lambda handle: np.savez(handle, **arrays),
            mode="wb",
        )
        file_io.write_json_atomically(
            os.path.join(self._dir, VOCABULARY_FILE), self._vocabulary, indent=None
        )
        self._index["shards"].append(
            {
                "file": shard_name,
                "num_examples": len(self._buffer),
                "num_positions": int(arrays["offsets"][-1]),
            }
        )
        file_io.write_json_atomically(os.path.join(self._dir, INDEX_FILE), self._index, indent=None)
        self._buffer = []

    def close(self) -> None:
        """Flushes pending examples (and writes the vocabulary even for an empty store)."""
        self.flush()
        file_io.write_json_atomically(
            os.path.join(self._dir, VOCABULARY_FILE), self._vocabulary, indent=None
        )
        file_io.write_json_atomically(os.path.join(self._dir, INDEX_FILE), self._index, indent=None)

    def __enter__(self) -> TeacherStoreWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()


def _pack_shard(examples: Sequence[TeacherExample], k: int) -> dict[str, np.ndarray]:
    """Concatenates examples into the flat arrays of one shard."""
    lengths = [len(example.tokens) for example in examples]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def cat(name: str, dtype, trailing: tuple[int, ...] = ()) -> np.ndarray:
        parts = [getattr(example, name) for example in examples]
        return (
            np.concatenate(parts).astype(dtype) if offsets[-1] else np.zeros((0,) + trailing, dtype)
        )

    return {
        "offsets": offsets,
        "tokens": cat("tokens", np.int32),
        "token_logprobs": cat("token_logprobs", np.float32),
        "top_ids": cat("top_ids", np.int32, (k,)),
        "top_logprobs": cat("top_logprobs", np.float32, (k,)),
        "keys": np.asarray([example.key for example in examples], dtype=np.str_),
        "metadata": np.asarray(
            [json.dumps(example.metadata, ensure_ascii=False) for example in examples],
            dtype=np.str_,
        ),
    }


class TeacherStore:
    """Read access to a teacher store: `len`, iteration and indexing over examples.

    Shards are loaded lazily, one at a time, so iterating a large store keeps one shard in
    memory.
    """

    def __init__(self, store_dir: str) -> None:
        self._dir = store_dir
        self._index = _read_index(store_dir)
        self.vocabulary: list[str] = list(_read_json(os.path.join(store_dir, VOCABULARY_FILE)))
        sizes = [shard["num_examples"] for shard in self._index["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._cached: tuple[int, dict[str, np.ndarray]] | None = None

    @property
    def k(self) -> int:
        return int(self._index["k"])

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._index.get("metadata", {}))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, shard_index: int) -> dict[str, np.ndarray]:
        if self._cached is None or self._cached[0] != shard_index:
            path = os.path.join(self._dir, self._index["shards"][shard_index]["file"])
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in _SHARD_ARRAYS}
            self._cached = (shard_index, arrays)
        return self._cached[1]

    def __getitem__(self, index: int) -> TeacherExample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"example {index} out of range for a store of {len(self)}.")
        index %= max(len(self), 1)
        shard_index = int(np.searchsorted(self._starts, index, side="right") - 1)
        arrays = self._shard(shard_index)
        row = index - int(self._starts[shard_index])
        begin, end = arrays["offsets"][row], arrays["offsets"][row + 1]
        return TeacherExample(
            key=str(arrays["keys"][row]),
            tokens=arrays["tokens"][begin:end],
            token_logprobs=arrays["token_logprobs"][begin:end],
            top_ids=arrays["top_ids"][begin:end],
            top_logprobs=arrays["top_logprobs"][begin:end],
            metadata=json.loads(str(arrays["metadata"][row])),
        )

    def __iter__(self) -> Iterator[TeacherExample]:
        for index in range(len(self)):
            yield self[index]

    def token_strings(self, ids: np.ndarray) -> list[str]:
        """Teacher token strings of `ids` (padding ids give "")."""
        return [self.vocabulary[i] if i >= 0 else "" for i in np.asarray(ids).reshape(-1)]


def _parse_completion_choice(choice: Any, where: str):
    """(tokens, token_logprobs, top_logprobs) of one completion choice; errors name `where`."""
    if not isinstance(choice, dict):
        raise TeacherStoreError(
            f"{where}: a choice must be an object; got {type(choice).__name__}."
        )
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        raise TeacherStoreError(
            f"{where}: choice has no 'logprobs' object (request completions with logprobs=k)."
        )
    tokens, tops = logprobs.get("tokens"), logprobs.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(tops, list):
        raise TeacherStoreError(f"{where}: 'logprobs' needs lists 'tokens' and 'top_logprobs'.")
    if len(tokens) != len(tops):
        raise TeacherStoreError(f"{where}: {len(tokens)} tokens but {len(tops)} top_logprobs.")
    token_logprobs = logprobs.get("token_logprobs") or [None] * len(tokens)
    if len(token_logprobs) != len(tokens):
        raise TeacherStoreError(
            f"{where}: {len(tokens)} tokens but {len(token_logprobs)} token_logprobs."
        )
    for position, (token, top) in enumerate(zip(tokens, tops)):
        if not isinstance(token, str):
            raise TeacherStoreError(f"{where}: tokens[{position}] is not a string: {token!r}.")
        if top is None:  # the API's value where it has no distribution (an echoed prompt)
            continue
        if not isinstance(top, dict) or not all(
            isinstance(v, (int, float)) and not math.isnan(v) and v <= 1e-4 for v in top.values()
        ):
            raise TeacherStoreError(
                f"{where}: top_logprobs[{position}] must map token strings "
                f"to log-probs <= 0; got {top!r}."
            )
    return tokens, token_logprobs, [top or {} for top in tops]


def ingest_openai_jsonl(
    path: str,
    writer: TeacherStoreWriter,
    *,
    keep: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None,
) -> tuple[int, int]:
    """Adds every choice of an OpenAI-style completion JSONL file to a teacher store.

    Each line is a completion response (`{"id": ..., "choices": [{"text": ..., "logprobs":
    {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...]}}]}`),
    optionally with a top-level "metadata" object (question id, gold answer, ...) that is
    copied to every choice. A choice becomes the example `"{id}/{choice index}"` (the id
    defaults to "{file name}:{line}").

    Args:
      path: the JSONL file.
      writer: an open store writer.
      keep: optional filter `keep(record, choice) -> bool`, e.g. keep only samples whose final
        answer is correct.

    Returns:
      `(choices added, choices skipped by keep)`.

    Raises:
      TeacherStoreError: naming the file and line of malformed input.
    """
    added = skipped = 0
    for line_number, record in file_io.read_jsonl_objects(path, error_type=TeacherStoreError):
        where = f"{path}:{line_number}"
        if not isinstance(record.get("choices"), list):
            raise TeacherStoreError(f"{where}: expected an object with a 'choices' list.")
        record_id = str(record.get("id") or f"{os.path.basename(path)}:{line_number}")
        for position, choice in enumerate(record["choices"]):
            parsed = _parse_completion_choice(choice, f"{where}: choices[{position}]")
            if keep is not None and not keep(record, choice):
                skipped += 1
                continue
            tokens, token_logprobs, tops = parsed
            metadata = dict(record.get("metadata") or {})
            metadata.update(
                source=f"{where}",
                text=choice.get("text"),
                finish_reason=choice.get("finish_reason"),
            )
            writer.add_strings(
                f"{record_id}/{choice.get('index', position)}",
                tokens,
                tops,
                token_logprobs=token_logprobs,
                metadata=metadata,
            )
            added += 1
    return added, skipped
