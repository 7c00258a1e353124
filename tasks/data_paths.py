"""Where the local data of the Flan 2022 submixtures lives, and how a missing dataset is reported.

One data root holds a directory per source; each source directory may be overridden, and
TFDS reads from its own `data_dir`:

    $FLAN_JAX_DATA_DIR/            (or `get_data_paths.root` bound by gin)
      cot/          gsm8k_train.tsv, strategyqa_train.tsv, ...      (see tasks/cot)
      niv2/tasks/   task001_quoref_question_generation.json, ...    (see tasks/niv2)
      t0/           adversarial_qa/dbert/train.jsonl, ...            (see tasks/t0)
      t0_templates/ promptsource templates tree (*/templates.yaml)   (see tasks/t0)
      dialog/       wiki_dialog/data_train.jsonl*, qrecc/qrecc_train.json  (see tasks/dialog)

Paths are resolved when data is read, never at import or registration, so a gin binding or
an environment variable set after registration still applies. Nothing here downloads.

A gin file binds the root from the outside:

    from __gin__ import dynamic_registration
    from flan_jax.tasks import data_paths
    data_paths.get_data_paths.root = "/data/flan"
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from flan_jax.errors import UserError

ENV_DATA_DIR = "FLAN_JAX_DATA_DIR"
ENV_TFDS_DATA_DIR = "TFDS_DATA_DIR"


class MissingDataError(UserError, FileNotFoundError):
    """A dataset's local files are absent; the message says which and how to get them."""


@dataclasses.dataclass(frozen=True)
class DataPaths:
    """The resolved data locations.

    Attributes:
      root: the data root; a source's directory defaults to `root/<source>`.
      tfds_data_dir: TFDS `data_dir` for sources that can read prepared TFDS datasets.
      source_dirs: per-source overrides, e.g. {"cot": "/mnt/flan/cot_data"}.
    """

    root: str | None = None
    tfds_data_dir: str | None = None
    source_dirs: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def source_dir(self, source: str) -> str:
        """The directory of `source`; raises MissingDataError when nothing is configured."""
        if source in self.source_dirs:
            return os.fspath(self.source_dirs[source])
        if self.root is None:
            raise MissingDataError(
                f"No data location configured for source {source!r}: set the environment "
                f"variable {ENV_DATA_DIR}, bind data_paths.get_data_paths.root in gin, or "
                f"pass source_dirs={{{source!r}: DIR}}."
            )
        return os.path.join(self.root, source)


def get_data_paths(
    *,
    root: str | None = None,
    tfds_data_dir: str | None = None,
    source_dirs: Mapping[str, str] | None = None,
) -> DataPaths:
    """Resolves the data locations: explicit (or gin-bound) arguments, then environment.

    Args:
      root: the data root; defaults to $FLAN_JAX_DATA_DIR.
      tfds_data_dir: the TFDS data_dir; defaults to $TFDS_DATA_DIR (TFDS's own default
        when that is unset too).
      source_dirs: per-source directory overrides.
    """
    return DataPaths(
        root=root if root is not None else os.environ.get(ENV_DATA_DIR) or None,
        tfds_data_dir=(
            tfds_data_dir
            if tfds_data_dir is not None
            else os.environ.get(ENV_TFDS_DATA_DIR) or None
        ),
        source_dirs=dict(source_dirs or {}),
    )


def resolve_data_paths(paths: DataPaths | None) -> DataPaths:
    """`paths` when given, else the locations configured now (gin binding or environment)."""
    return paths if paths is not None else get_data_paths()


def require_path(path: str, *, dataset: str, how_to_get: str) -> str:
    """Returns `path` if it exists; otherwise raises MissingDataError naming the dataset."""
    if not os.path.exists(path):
        raise MissingDataError(
            f"Data for dataset {dataset!r} not found: expected {path}. {how_to_get}"
        )
    return path
