"""Test helpers for the math evaluation and distillation formats.

The real data sets live beside the repository in `../shared/data` (never copied into the
project); `FLAN_JAX_SHARED_DATA` points elsewhere. Tests that read them skip, with the path
they looked for, on a machine without them.
"""
from __future__ import annotations

import os
import pathlib

import pytest

from flan_jax.evaluation.math_datasets import MathExample

_DEFAULT_SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared_data_path(*parts: str) -> pathlib.Path:
    """The path of a file or folder under the shared data folder; skips the test if absent."""
    root = pathlib.Path(os.environ.get("FLAN_JAX_SHARED_DATA", _DEFAULT_SHARED_DATA))
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} is missing (set FLAN_JAX_SHARED_DATA "
                    f"to the folder holding ../shared/data)")
    return path


def make_examples(count: int, *, source: str = "toy", with_rationale: bool = True,
                  start: int = 0) -> list[MathExample]:
    """`count` small distinct arithmetic problems with ids `{source}/{i}`, answer `i + 2`."""
    return [MathExample(
        question=f"Tom has {i} apples and buys 2 more. How many apples does he have?",
        answer=str(i + 2),
        rationale=f"Tom starts with {i} apples.\n{i} + 2 = <<{i}+2={i + 2}>>{i + 2}" if
        with_rationale else None,
        source=source,
        id=f"{source}/{i}",
    ) for i in range(start, start + count)]
