"""Held-out dev splits that provably share no question with the training data.

Checkpoint selection in CoT specialisation is done on out-of-distribution math sets
(MultiArith, ASDiv, SVAMP), because in- and out-of-distribution accuracy do not rise
together. The selection set must not contain a training question, or it selects for
memorisation. Questions are compared after `normalise_question`, which removes the
differences that do not change a problem: case, punctuation, spacing, thousands separators,
`32.0` vs `32`, calculator annotations.

Worked example:

    normalise_question(" Debby had 32.0 pieces of candy, her sister 1,042! ")
    -> "debby had 32 pieces of candy her sister 1042"

    split = make_ood_dev_split(svamp + multiarith, training=gsm8k_train, dev_size=200, seed=0)
    split.dev, split.test      # disjoint, and neither shares a normalised question with training
    split.removed_ids          # candidates dropped as duplicates of training (or of each other)
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

from flan_jax.errors import UserError
from flan_jax.evaluation import answers
from flan_jax.evaluation.math_datasets import MathExample

_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TRAILING_ZERO_RE = re.compile(r"(\d)\.0+\b")
# Keep decimal points inside numbers ("3.5"); every other non-alphanumeric run is a space.
_PUNCTUATION_RE = re.compile(r"(?:(?<!\d)\.|\.(?!\d)|[^\w.])+")


def normalise_question(text: str) -> str:
    """The comparison key of a question (see the module docstring)."""
    text = unicodedata.normalize("NFKC", answers.strip_calculator_annotations(text)).lower()
    text = _TRAILING_ZERO_RE.sub(r"\1", _THOUSANDS_RE.sub("", text))
    return " ".join(_PUNCTUATION_RE.sub(" ", text).replace("_", " ").split())


def find_overlaps(
    candidates: Iterable[MathExample], reference: Iterable[MathExample]
) -> list[tuple[str, str]]:
    """`(candidate id, reference id)` for every candidate whose question occurs in reference."""
    reference_ids: dict[str, str] = {}
    for example in reference:
        reference_ids.setdefault(normalise_question(example.question), example.id)
    return [
        (example.id, reference_ids[key])
        for example in candidates
        if (key := normalise_question(example.question)) in reference_ids
    ]


class OverlapError(UserError, ValueError):
    """An evaluation set shares questions with the training data."""


def check_no_overlap(
    candidates: Sequence[MathExample], reference: Sequence[MathExample], *, what: str = "dev split"
) -> None:
    """Raises OverlapError (a ValueError) naming the candidates found in `reference`."""
    overlaps = find_overlaps(candidates, reference)
    if overlaps:
        shown = ", ".join(f"{c} = {r}" for c, r in overlaps[:5])
        raise OverlapError(
            f"The {what} shares {len(overlaps)} question(s) with the training "
            f"data (after normalisation), e.g. {shown}. Build it with "
            f"make_ood_dev_split to drop them."
        )


@dataclasses.dataclass(frozen=True)
class OODSplit:
    """A held-out selection split and the remaining evaluation split.

    Attributes:
      dev: the selection examples (checkpoint choice only).
      test: the other candidates, for reporting.
      removed_ids: candidates dropped because their question occurs in the training data or
        earlier among the candidates.
    """

    dev: tuple[MathExample, ...]
    test: tuple[MathExample, ...]
    removed_ids: tuple[str, ...]


def _order_key(seed: int, example_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{example_id}".encode()).digest()


def make_ood_dev_split(
    candidates: Sequence[MathExample],
    *,
    training: Sequence[MathExample],
    dev_size: int,
    seed: int = 0,
) -> OODSplit:
    """Splits out-of-distribution candidates into dev and test, without training questions.

    Duplicates of training questions and repeated candidate questions are dropped first.
    The dev examples are chosen by a hash of (seed, id), so the split does not depend on
    the order of `candidates` and stays the same when more candidates are added.

    Args:
      candidates: examples from held-out sets, e.g. MultiArith + ASDiv + SVAMP.
      training: every example the model is trained on (ids and questions are compared).
      dev_size: how many examples go to dev; the rest go to test.
      seed: selects which candidates form the dev split.

    Returns:
      The split; `check_no_overlap(split.dev, training)` holds by construction.
    """
    repeated = [i for i, n in collections.Counter(e.id for e in candidates).items() if n > 1]
    if repeated:
        raise ValueError(f"Candidate ids must be unique; repeated: {sorted(repeated)[:5]}.")
    seen = {normalise_question(example.question) for example in training}
    kept, removed = [], []
    for example in candidates:
        key = normalise_question(example.question)
        if key in seen:
            removed.append(example.id)
        else:
            seen.add(key)
            kept.append(example)
    if not 0 < dev_size <= len(kept):
        raise ValueError(
            f"dev_size must be in [1, {len(kept)}] (the candidates left after "
            f"removing {len(removed)} duplicates); got {dev_size}."
        )
    order = sorted(range(len(kept)), key=lambda i: _order_key(seed, kept[i].id))
    dev_positions = set(order[:dev_size])
    return OODSplit(
        dev=tuple(kept[i] for i in sorted(dev_positions)),
        test=tuple(kept[i] for i in range(len(kept)) if i not in dev_positions),
        removed_ids=tuple(removed),
    )
