"""Where tests and benchmarks find the real public data, read in place, never copied.

The data lives beside the repository in `../shared/data`; `$FLAN_JAX_SHARED_DATA` points
elsewhere. Tests that need a file call `shared_data_path`, which skips the test, naming the
path it looked for, on a machine without the data.
"""

from __future__ import annotations

import os
import pathlib

SHARED_DATA_ENV = "FLAN_JAX_SHARED_DATA"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def shared_data_dir() -> str:
    """`$FLAN_JAX_SHARED_DATA`, else `../shared/data` beside the repository."""
    return os.environ.get(SHARED_DATA_ENV) or os.path.normpath(
        _REPO_ROOT.parent / "shared" / "data"
    )


def shared_data_path(*parts: str) -> pathlib.Path:
    """The path of a file or folder under the shared data folder; skips the test if absent."""
    import pytest  # Only tests call this; benchmarks use `shared_data_dir`.

    path = pathlib.Path(shared_data_dir()).joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"shared data not available: {path} is missing (set {SHARED_DATA_ENV} "
            f"to the folder holding ../shared/data)"
        )
    return path
