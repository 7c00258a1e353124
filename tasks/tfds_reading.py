"""Reading already prepared TFDS datasets, and saying how to prepare one that is not.

Sources that can read TFDS (Flan 2021, and dialog when its release files are absent) go
through these two functions, so "is it prepared?" is answered, and a missing dataset is
reported, the same way everywhere. Nothing here downloads: `tfds.builder(...)` only opens
what `tfds build` prepared in the data_dir.

    message = tfds_reading.missing_tfds_message("glue/rte:2.0.0", "/data/tfds",
                                                dataset="rte", how_to_get="Run tfds build.")
    rows = tfds_reading.read_tfds_split("glue/rte:2.0.0", "train", "/data/tfds",
                                        dataset="rte", how_to_get="Run tfds build.")
"""

from __future__ import annotations

from collections.abc import Iterator

from flan_jax.tasks import data_paths


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
      split: the split to read.
      data_dir: the TFDS data_dir (None: TFDS's default).
      dataset: our dataset name, for the error message.
      how_to_get: the instructions appended to the error when the dataset is not prepared.

    Raises:
      data_paths.MissingDataError: when the dataset is not prepared (raised on first read).
    """
    import tensorflow_datasets as tfds

    builder = _open_builder(name, data_dir)
    if builder is None:
        raise data_paths.MissingDataError(
            _not_prepared_message(name, data_dir, dataset=dataset, how_to_get=how_to_get)
        )
    yield from tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
