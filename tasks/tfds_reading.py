"""Reading already prepared TFDS datasets, and saying how to prepare one that is not.

Sources that can read TFDS (Flan 2021, and dialog when its release files are absent) go
through these functions, so "is it prepared?" is answered, and a missing dataset is
reported, the same way everywhere. Nothing here downloads: `tfds.builder(...)` only opens
what `tfds build` prepared in the data_dir.

Splits may be sliced by example index the way FLAN slices them ("train[:-200]" is all but
the last 200 examples, "train[30000:30200]" 200 examples from the 30,000th on); the slice is
checked against the prepared split's size before TFDS reads it.

    message = tfds_reading.missing_tfds_message("super_glue/rte:1.0.2", "/data/tfds",
                                                dataset="rte", how_to_get="Run tfds build.")
    rows = tfds_reading.read_tfds_split("super_glue/rte:1.0.2", "train[:-200]", "/data/tfds",
                                        dataset="rte", how_to_get="Run tfds build.")
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from flan_jax.tasks import data_paths

# A split name, then optionally "[start:stop]" with integer bounds (negative: from the end).
_SPLIT_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\[(-?\d+)?:(-?\d+)?\])?$")


@dataclasses.dataclass(frozen=True)
class SplitSlice:
    """A TFDS split, optionally sliced by example index as in "train[:-200]".

    Attributes:
      split: the TFDS split name.
      start: the first index read (negative: counted from the end); None: the start.
      stop: the index reading stops before (negative: counted from the end); None: the end.
    """

    split: str
    start: int | None = None
    stop: int | None = None

    def __str__(self) -> str:
        if self.start is None and self.stop is None:
            return self.split
        start = "" if self.start is None else self.start
        stop = "" if self.stop is None else self.stop
        return f"{self.split}[{start}:{stop}]"

    def indices(self, num_examples: int) -> range:
        """The indices of the examples read from a split of `num_examples` examples.

        Raises:
          ValueError: when a bound lies beyond the split (TFDS refuses such a slice too) or
            the slice selects no example.
        """
        for bound in (self.start, self.stop):
            if bound is not None and abs(bound) > num_examples:
                raise ValueError(
                    f"slice {self} reaches beyond the {num_examples} examples of split "
                    f"{self.split!r}."
                )
        selected = range(num_examples)[self.start : self.stop]
        if not selected:
            raise ValueError(f"slice {self} selects none of the {num_examples} examples.")
        return selected


def parse_split(text: str, *, where: str) -> SplitSlice:
    """Parses "train", "train[:-200]" or "train[30000:30200]" into a `SplitSlice`.

    Only the forms FLAN uses are accepted: one split, integer bounds. Percent bounds and
    "+"-joined splits, which TFDS also reads, are refused so that a catalog stays exact.

    Args:
      text: the split expression.
      where: what holds it (file, dataset, field), for the error message.

    Raises:
      ValueError: naming `where`, the expression and the accepted forms.
    """
    match = _SPLIT_RE.match(text)
    if match is None:
        raise ValueError(
            f"{where}: {text!r} is not a TFDS split; write a split name, optionally sliced "
            "by integer example indices: 'train', 'train[:-200]', 'train[-200:]', "
            "'train[30000:30200]'."
        )
    name, start, stop = match.groups()
    return SplitSlice(
        name, None if start is None else int(start), None if stop is None else int(stop)
    )


def _open_builder(name: str, data_dir: str | None):
    """The builder of `name` if it is prepared in `data_dir`, else None."""
    import tensorflow_datasets as tfds  # Imported here: most sources never need TFDS.

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        return None
    return builder if prepared else None


def _not_prepared_message(name: str, data_dir: str | None, *, dataset: str, how_to_get: str) -> str:
    return (
        f"Data for dataset {dataset!r} not found: TFDS dataset {name!r} is not prepared "
        f"in data_dir {data_dir or 'the TFDS default'}. {how_to_get}"
    )


def missing_tfds_message(
    name: str, data_dir: str | None, *, dataset: str, how_to_get: str
) -> str | None:
    """None when TFDS dataset `name` is prepared in `data_dir`, else what is missing.

    Args:
      name: the versioned TFDS name, e.g. "glue/rte:2.0.0".
      data_dir: the TFDS data_dir (None: TFDS's default, which honours $TFDS_DATA_DIR).
      dataset: our dataset name, for the message.
      how_to_get: the instructions appended to the message.
    """
    if _open_builder(name, data_dir) is not None:
        return None
    return _not_prepared_message(name, data_dir, dataset=dataset, how_to_get=how_to_get)


def read_tfds_split(
    name: str, split: str, data_dir: str | None, *, dataset: str, how_to_get: str
) -> Iterator[dict]:
    """Yields numpy examples of an already prepared TFDS dataset; never downloads.

    Args:
      name: the versioned TFDS name, e.g. "q_re_cc:1.0.0".
      split: the split to read, optionally sliced ("train[:-200]", see `parse_split`).
      data_dir: the TFDS data_dir (None: TFDS's default).
      dataset: our dataset name, for the error message.
      how_to_get: the instructions appended to the error when the dataset is not prepared.

    Raises (on first read):
      ValueError: a malformed split, a split the dataset lacks, or a slice beyond it.
      data_paths.MissingDataError: when the dataset is not prepared.
    """
    import tensorflow_datasets as tfds

    where = f"dataset {dataset!r} (TFDS {name})"
    split_slice = parse_split(split, where=where)
    builder = _open_builder(name, data_dir)
    if builder is None:
        raise data_paths.MissingDataError(
            _not_prepared_message(name, data_dir, dataset=dataset, how_to_get=how_to_get)
        )
    sizes = {str(s): info.num_examples for s, info in builder.info.splits.items()}
    if split_slice.split not in sizes:
        raise ValueError(f"{where}: no split {split_slice.split!r}; it has {sorted(sizes)}.")
    try:
        split_slice.indices(sizes[split_slice.split])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    yield from tfds.as_numpy(builder.as_dataset(split=str(split_slice), shuffle_files=False))
