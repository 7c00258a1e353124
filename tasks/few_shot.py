"""Few-shot settings and exemplar pools read lazily from a dataset's train split.

Few-shot variants prepend exemplars drawn from a bounded pool of train examples (see
`sources.FewShotSpec`). The pool is read on first use, not at registration, so registering
thousands of few-shot tasks does no I/O:

    spec = few_shot.make_few_shot_spec(lambda: load_split("train"), vocabulary,
                                       settings=few_shot.FewShotSettings(num_shots=3))
    # nothing read yet; rendering the first few-shot example reads the first 256 rows.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import seqio

from flan_jax.tasks import sources


@dataclasses.dataclass(frozen=True)
class FewShotSettings:
    """How a family builds its few-shot prompts.

    Attributes:
      num_shots: exemplars drawn per example before pruning to `max_input_tokens` (NIv2:
        the task's positive examples shown).
      max_input_tokens: the input budget (1920 in the Flan 2022 collection).
      pool_size: how many leading train examples exemplars are drawn from.
    """

    num_shots: int
    max_input_tokens: int = 1920
    pool_size: int = 256

    def __post_init__(self):
        for field in ("num_shots", "max_input_tokens", "pool_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"FewShotSettings.{field} must be a non-negative integer, got {value!r}."
                )


class LazyExemplarPool(collections.abc.Sequence):
    """Few-shot exemplars read from the train split on first use, not at registration.

    `sources.FewShotSpec.pool` is indexed and iterated; this sequence defers the read. At
    most `max_size` examples are kept (the first ones of the split, so the pool is the same
    in every process).
    """

    def __init__(
        self, load_examples: Callable[[], Iterator[tuple[str, Mapping]]], max_size: int = 256
    ):
        self._load_examples = load_examples
        self._max_size = max_size
        self._examples: Sequence[tuple[str, Mapping]] | None = None

    def _materialize(self) -> Sequence[tuple[str, Mapping]]:
        if self._examples is None:
            examples: list[tuple[str, Mapping]] = []
            for item in self._load_examples():
                if len(examples) >= self._max_size:
                    break
                examples.append(item)
            self._examples = tuple(examples)
        return self._examples

    def __getitem__(self, index):
        return self._materialize()[index]

    def __len__(self) -> int:
        return len(self._materialize())


def make_few_shot_spec(
    load_examples: Callable[[], Iterator[tuple[str, Mapping]]],
    vocabulary: seqio.Vocabulary,
    *,
    settings: FewShotSettings,
) -> sources.FewShotSpec:
    """A few-shot spec over a lazily read train split, pruned by `vocabulary`'s token count.

    Args:
      load_examples: yields (key, fields) train examples; called on first use only.
      vocabulary: counts prompt tokens for the input budget.
      settings: shots, input budget and pool size.
    """
    return sources.FewShotSpec(
        pool=LazyExemplarPool(load_examples, max_size=settings.pool_size),
        num_shots=settings.num_shots,
        max_input_tokens=settings.max_input_tokens,
        count_tokens=lambda text: len(vocabulary.encode(text)),
    )
