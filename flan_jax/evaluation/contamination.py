"""Train/eval contamination by 13-gram overlap, reported per evaluation task.

GPT-3 (Brown et al. 2020, appendix C) and FLAN (Wei et al. 2022, appendix C) call an
evaluation example "dirty" when it shares any 13-gram with the training data. Here:

- Normalisation: lowercase (Unicode `casefold`), then every run of characters that are not
  letters or digits becomes a word boundary, so punctuation and whitespace are dropped:
  "The cat's  hat!" -> ["the", "cat", "s", "hat"].
- An n-gram is n consecutive normalised words (n = 13 by default); a text shorter than n
  words has none and can never be flagged.
- N-grams are stored as 64-bit hashes: each word hashes to 64 bits (BLAKE2b, cached per
  distinct word) and an n-gram to the polynomial sum(h(w_i) * P^(n-1-i)) mod 2^64, computed
  for a whole text at once with numpy. The training side keeps one sorted array of distinct
  hashes, 8 bytes each (100 million n-grams: 800 MB), so a few hundred thousand training
  examples fit on a laptop. A false match needs a 64-bit collision.

    index = build_ngram_index(train_texts)
    report = check_contamination(index, {"rte": rte_texts, "boolq": boolq_texts})
    report["rte"].contaminated, report["rte"].fraction

`texts_of_examples` turns rendered examples (dicts with "inputs" and "targets", e.g. a
seqio dataset as numpy) into the texts compared.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

NGRAM_SIZE = 13
_NON_WORD_RE = re.compile(r"[\W_]+", re.UNICODE)


def normalize_words(text: str) -> list[str]:
    """Lowercased words, punctuation and whitespace dropped (see the module docstring)."""
    return [w for w in _NON_WORD_RE.split(text.casefold()) if w]


# An odd 64-bit multiplier for the polynomial n-gram hash.
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
# Training hashes are merged into the sorted array once this many are pending.
_PENDING_LIMIT = 1 << 22


@functools.lru_cache(maxsize=1 << 20)
def _hash_word(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def ngram_hashes(text: str, *, n: int = NGRAM_SIZE) -> np.ndarray:
    """The 64-bit hashes of every n-gram of `text`'s normalised words, `[num_ngrams]`
    (with repeats; empty when `text` has fewer than n words)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    words = normalize_words(text)
    count = len(words) - n + 1
    if count <= 0:
        return np.zeros([0], np.uint64)
    word_hashes = np.array([_hash_word(w) for w in words], dtype=np.uint64)
    acc = np.zeros([count], np.uint64)
    for offset in range(n):  # Horner's rule over the n positions; uint64 wraps mod 2^64.
        acc = acc * _MULTIPLIER + word_hashes[offset : offset + count]
    return acc


class NgramIndex:
    """The distinct n-gram hashes of a training corpus, as one sorted uint64 array.

    Attributes:
      n: the n-gram size.
      num_texts: how many texts were added.
    """

    def __init__(self, n: int = NGRAM_SIZE):
        self.n = n
        self.num_texts = 0
        self._sorted = np.zeros([0], np.uint64)
        self._pending: list[np.ndarray] = []
        self._num_pending = 0

    def add(self, text: str) -> None:
        hashes = ngram_hashes(text, n=self.n)
        self._pending.append(hashes)
        self._num_pending += len(hashes)
        self.num_texts += 1
        if self._num_pending >= _PENDING_LIMIT:
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            self._sorted = np.unique(np.concatenate([self._sorted, *self._pending]))
            self._pending, self._num_pending = [], 0

    def __len__(self) -> int:
        """The number of distinct n-grams indexed."""
        self._merge()
        return len(self._sorted)

    def overlaps(self, text: str) -> bool:
        """Whether `text` shares any n-gram with the indexed corpus."""
        self._merge()
        hashes = ngram_hashes(text, n=self.n)
        if not len(hashes) or not len(self._sorted):
            return False
        positions = np.minimum(np.searchsorted(self._sorted, hashes), len(self._sorted) - 1)
        return bool(np.any(self._sorted[positions] == hashes))


def build_ngram_index(texts: Iterable[str], *, n: int = NGRAM_SIZE) -> NgramIndex:
    """Indexes the n-grams of `texts` (any iterable: a list, a generator over a mixture)."""
    index = NgramIndex(n=n)
    for text in texts:
        index.add(text)
    return index


def _as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def texts_of_examples(
    examples: Iterable[Mapping[str, Any]], *, fields: tuple[str, ...] = ("inputs", "targets")
) -> Iterator[str]:
    """One text per example: its `fields` (str or bytes) joined by a newline.

    Joining inputs and targets lets an n-gram that spans the two be found, as GPT-3 checks
    the whole example.
    """
    for example in examples:
        yield "\n".join(_as_text(example[f]) for f in fields if f in example)


@dataclasses.dataclass(frozen=True)
class TaskContamination:
    """How many of an evaluation task's examples share an n-gram with the training data.

    Attributes:
      total: evaluation examples checked.
      contaminated: those with at least one n-gram in the training index.
      contaminated_indices: their positions in the order checked.
    """

    total: int
    contaminated: int
    contaminated_indices: tuple[int, ...]

    @property
    def fraction(self) -> float:
        return self.contaminated / self.total if self.total else 0.0


def check_contamination(
    index: NgramIndex, eval_texts: Mapping[str, Iterable[str]]
) -> dict[str, TaskContamination]:
    """Per evaluation task, the examples sharing an n-gram with `index`.

    Args:
      index: the training corpus' n-grams (`build_ngram_index`).
      eval_texts: task name -> its evaluation texts.
    """
    report = {}
    for task, texts in eval_texts.items():
        dirty = []
        total = 0
        for position, text in enumerate(texts):
            total += 1
            if index.overlaps(text):
                dirty.append(position)
        report[task] = TaskContamination(total, len(dirty), tuple(dirty))
    return report
