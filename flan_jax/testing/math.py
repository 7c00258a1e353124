"""Test helpers for the math evaluation and distillation formats.

The real data sets are found with `flan_jax.testing.shared_data.shared_data_path`.
"""

from __future__ import annotations

from flan_jax.evaluation.math_datasets import MathExample


def make_examples(
    count: int, *, source: str = "toy", with_rationale: bool = True, start: int = 0
) -> list[MathExample]:
    """`count` small distinct arithmetic problems with ids `{source}/{i}`, answer `i + 2`."""
    return [
        MathExample(
            question=f"Tom has {i} apples and buys 2 more. How many apples does he have?",
            answer=str(i + 2),
            rationale=f"Tom starts with {i} apples.\n{i} + 2 = <<{i}+2={i + 2}>>{i + 2}"
            if with_rationale
            else None,
            source=source,
            id=f"{source}/{i}",
        )
        for i in range(start, start + count)
    ]
