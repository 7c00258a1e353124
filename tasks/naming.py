"""Task names built from structured fields, and parsed back.

Every registered task name is `SOURCE__DATASET[__inverted]__VARIANT`, for example
`flan2021__anli_r1__zs_opt` or `cot__gsm8k__inverted__fs_opt`. The double underscore
separates fields so dataset names may contain single underscores. Nothing else in the
project assembles task names by hand.
"""

from __future__ import annotations

import dataclasses
import re

SOURCES = ("flan2021", "t0", "niv2", "cot", "dialog", "demo")
VARIANTS = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
_SEPARATOR = "__"
_INVERTED = "inverted"
# Must not end in "_": "x_" + "__" + variant would parse as dataset "x" and "_variant".
_DATASET_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.]*[A-Za-z0-9.])?$")


@dataclasses.dataclass(frozen=True)
class TaskId:
    """The structured identity of one registered task.

    Attributes:
      source: the submixture, one of `SOURCES`.
      dataset: the dataset (or NIv2 task) name; letters, digits, `_` and `.`, no `__`.
      variant: zero-shot / few-shot, with / without answer options, one of `VARIANTS`.
      inverted: whether the templates are the "turned around" ones.
    """

    source: str
    dataset: str
    variant: str
    inverted: bool = False

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"TaskId.source must be one of {SOURCES}, got {self.source!r}.")
        if self.variant not in VARIANTS:
            raise ValueError(f"TaskId.variant must be one of {VARIANTS}, got {self.variant!r}.")
        if not _DATASET_RE.match(self.dataset) or _SEPARATOR in self.dataset:
            raise ValueError(
                "TaskId.dataset must be letters, digits, '_' or '.', without '__' and "
                "not ending in '_', "
                f"got {self.dataset!r}."
            )

    @property
    def with_options(self) -> bool:
        return self.variant.endswith("_opt")

    @property
    def few_shot(self) -> bool:
        return self.variant.startswith("fs_")


def make_task_name(task_id: TaskId) -> str:
    """Returns the registered name of `task_id`."""
    parts = [task_id.source, task_id.dataset]
    if task_id.inverted:
        parts.append(_INVERTED)
    parts.append(task_id.variant)
    return _SEPARATOR.join(parts)


def parse_task_name(name: str) -> TaskId:
    """Inverse of `make_task_name`; raises ValueError naming the malformed part."""
    parts = name.split(_SEPARATOR)
    if len(parts) == 4 and parts[2] == _INVERTED:
        return TaskId(parts[0], parts[1], parts[3], inverted=True)
    if len(parts) == 3:
        return TaskId(parts[0], parts[1], parts[2])
    raise ValueError(f"Task name {name!r} is not of the form SOURCE__DATASET[__inverted]__VARIANT.")
