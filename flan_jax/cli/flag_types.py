"""argparse types for numeric flags: a bad value fails at parse time, naming the flag.

    parser.add_argument("--batch_size", type=flag_types.positive_int, default=8)

`flan-jax infer --batch_size 0` then exits with status 2 and
"argument --batch_size: must be an integer >= 1, got '0'" before anything is loaded.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _bounded(convert: Callable[[str], float], kind: str, low: float, *, open_low: bool):
    relation = ">" if open_low else ">="

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {kind} {relation} {low}, got {text!r}"
            ) from None
        if not math.isfinite(value) or value < low or (open_low and value == low):
            raise argparse.ArgumentTypeError(f"must be {kind} {relation} {low}, got {text!r}")
        return value

    parse.__name__ = f"{kind.split()[-1]} {relation} {low}"  # argparse's fallback message
    return parse


positive_int = _bounded(int, "an integer", 1, open_low=False)
non_negative_int = _bounded(int, "an integer", 0, open_low=False)
positive_float = _bounded(float, "a number", 0.0, open_low=True)
non_negative_float = _bounded(float, "a number", 0.0, open_low=False)


def probability(text: str) -> float:
    """A number in (0, 1] (nucleus sampling's top_p)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value
