"""Accuracy of every saved checkpoint on every math set, self-consistency, and selection.

The model is reached only through a predict function, so this module needs no JAX:

    def predict(step: int, examples: Sequence[MathExample]) -> Sequence[str | Sequence[str]]:
        ...  # load checkpoint `step`, render inputs, decode

A prediction is either one decoded text (greedy) or a list of N sampled texts, which are
reduced to one answer by majority vote (self-consistency). Worked example:

    table = evaluate_checkpoints([1000, 2000], {"gsm8k": gsm8k_test, "dev": split.dev},
                                 predict)
    print(table.to_markdown())
    # | step | gsm8k | dev   | mean  |
    # |------|-------|-------|-------|
    # | 1000 | 0.150 | 0.310 | 0.230 |
    # | 2000 | 0.180 | 0.290 | 0.235 |
    select_best_checkpoint(table, dev_sets=["dev"]).step   # -> 1000

Choose on a dev split built by `splits.make_ood_dev_split`, which shares no question with
the training data.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

from flan_jax.data import file_io
from flan_jax.evaluation import answers
from flan_jax.evaluation.math_datasets import MathExample

Prediction = str | Sequence[str]
PredictFn = Callable[[int, Sequence[MathExample]], Sequence[Prediction]]


@dataclasses.dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote over sampled outputs.

    Attributes:
      answer: the winning canonical answer, or None when no sample had one.
      count: how many samples gave it.
      num_answered: how many samples had an extractable answer.
      num_samples: how many samples were given.
    """

    answer: str | None
    count: int
    num_answered: int
    num_samples: int


def majority_vote(samples: Sequence[str], *, numeric: bool = True) -> Vote:
    """Self-consistency: the most frequent final answer among sampled outputs.

    Samples without an extractable answer abstain. A tie goes to the answer whose first
    occurrence comes earliest in `samples`, so the result depends only on the samples.

    Args:
      samples: N decoded outputs for one question.
      numeric: compare answers as numbers (math) or as normalised text.
    """
    counts: collections.Counter[str] = collections.Counter()
    first_seen: dict[str, int] = {}
    spelling: dict[str, str] = {}
    for position, sample in enumerate(samples):
        answer = answers.extract_answer(sample, numeric=numeric)
        if answer is None:
            continue
        # Numeric answers come back canonical ("0.5" for "1/2"); text needs normalising.
        key = answer if numeric else answers.normalise_text_answer(answer)
        counts[key] += 1
        first_seen.setdefault(key, position)
        spelling.setdefault(key, answer)
    if not counts:
        return Vote(None, 0, 0, len(samples))
    winner = min(counts, key=lambda key: (-counts[key], first_seen[key]))
    return Vote(spelling[winner], counts[winner], sum(counts.values()), len(samples))


def is_correct(prediction: Prediction, gold: str) -> bool:
    """Whether one prediction (a text, or N samples voted on) answers `gold` correctly."""
    if isinstance(prediction, str):
        return answers.answers_match(prediction, gold)
    vote = majority_vote(prediction, numeric=answers.parse_number(gold) is not None)
    return answers.answer_equals(vote.answer, gold)


def count_correct(examples: Sequence[MathExample], predictions: Sequence[Prediction]) -> int:
    """How many predictions match their example's gold answer (lengths must agree)."""
    if len(predictions) != len(examples):
        raise ValueError(f"Got {len(predictions)} predictions for {len(examples)} examples.")
    return sum(is_correct(p, e.answer) for p, e in zip(predictions, examples))


@dataclasses.dataclass(frozen=True)
class AccuracyTable:
    """Correct counts per (checkpoint step, evaluation set).

    Attributes:
      steps: the checkpoint steps, ascending.
      set_sizes: evaluation set name -> number of examples, in column order.
      correct: `correct[step][set_name]` is the number of correct predictions.
    """

    steps: tuple[int, ...]
    set_sizes: Mapping[str, int]
    correct: Mapping[int, Mapping[str, int]]

    def accuracy(self, step: int, set_name: str) -> float:
        """Fraction correct of one checkpoint on one set."""
        return self.correct[step][set_name] / self.set_sizes[set_name]

    def mean_accuracy(self, step: int, set_names: Sequence[str] | None = None) -> float:
        """The unweighted mean of the per-set accuracies (each set counts the same)."""
        names = list(self.set_sizes) if set_names is None else list(set_names)
        unknown = sorted(set(names) - set(self.set_sizes))
        if unknown or not names:
            raise ValueError(
                f"Unknown evaluation set(s) {unknown or names}; the table has "
                f"{list(self.set_sizes)}."
            )
        return sum(self.accuracy(step, name) for name in names) / len(names)

    def to_markdown(self) -> str:
        """A markdown table: one row per step, one column per set, and their mean."""
        header = ["step", *self.set_sizes, "mean"]
        rows = [header, ["---"] * len(header)]
        for step in self.steps:
            cells = [f"{self.accuracy(step, name):.3f}" for name in self.set_sizes]
            rows.append([str(step), *cells, f"{self.mean_accuracy(step):.3f}"])
        return "\n".join("| " + " | ".join(row) + " |" for row in rows)

    def to_json_dict(self) -> dict:
        """A JSON-serialisable form that `from_json_dict` reads back."""
        return {
            "set_sizes": dict(self.set_sizes),
            "rows": [{"step": step, "correct": dict(self.correct[step])} for step in self.steps],
        }

    @classmethod
    def from_json_dict(cls, data: Mapping) -> AccuracyTable:
        """Inverse of `to_json_dict`."""
        rows = {int(row["step"]): dict(row["correct"]) for row in data["rows"]}
        return cls(tuple(sorted(rows)), dict(data["set_sizes"]), rows)

    def write_json(self, path: str | os.PathLike) -> None:
        """Writes `to_json_dict()` atomically (a reader never sees half a table)."""
        file_io.write_json_atomically(path, self.to_json_dict())


def evaluate_checkpoints(
    steps: Sequence[int], eval_sets: Mapping[str, Sequence[MathExample]], predict_fn: PredictFn
) -> AccuracyTable:
    """Accuracy of every checkpoint on every evaluation set.

    Args:
      steps: the saved checkpoint steps (e.g. from `list_checkpoint_steps`).
      eval_sets: set name -> examples, e.g. {"gsm8k_test": ..., "ood_dev": split.dev}.
      predict_fn: (step, examples) -> one prediction per example, a text or N samples.

    Returns:
      The table of correct counts.
    """
    if not steps or not eval_sets:
        raise ValueError("evaluate_checkpoints needs at least one step and one evaluation set.")
    empty = [name for name, examples in eval_sets.items() if not examples]
    if empty:
        raise ValueError(f"Evaluation set(s) {empty} have no examples.")
    correct = {}
    for step in sorted(steps):
        correct[step] = {
            name: count_correct(examples, predict_fn(step, examples))
            for name, examples in eval_sets.items()
        }
    set_sizes = {name: len(examples) for name, examples in eval_sets.items()}
    return AccuracyTable(tuple(sorted(steps)), set_sizes, correct)


@dataclasses.dataclass(frozen=True)
class Selection:
    """The selected checkpoint.

    Attributes:
      step: its step.
      dev_accuracy: its mean accuracy over the dev sets.
      dev_sets: the sets it was selected on.
    """

    step: int
    dev_accuracy: float
    dev_sets: tuple[str, ...]


def select_best_checkpoint(table: AccuracyTable, *, dev_sets: Sequence[str]) -> Selection:
    """The checkpoint with the best mean accuracy over `dev_sets`; ties go to the earliest."""
    best = max(table.steps, key=lambda step: (table.mean_accuracy(step, dev_sets), -step))
    return Selection(best, table.mean_accuracy(best, dev_sets), tuple(dev_sets))


def list_checkpoint_steps(checkpoint_dir: str | os.PathLike) -> list[int]:
    """The steps saved in a checkpoint directory (its sub-folders named by an integer)."""
    checkpoint_dir = os.fspath(checkpoint_dir)
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"No checkpoint directory at {checkpoint_dir!r}.")
    return sorted(
        int(name)
        for name in os.listdir(checkpoint_dir)
        if name.isdigit() and os.path.isdir(os.path.join(checkpoint_dir, name))
    )
