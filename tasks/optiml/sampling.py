"""OPT-IML's two-level sampler: benchmark shares times capped examples-proportional rates.

OPT-IML (Iyer et al. 2022, arXiv 2212.12017, section 3; REFERENCE.md) samples a benchmark
by its weight, then a task of that benchmark in proportion to its size capped at 4,096
examples. For task t of benchmark b with n_t training examples:

    c_t    = min(n_t, cap)                         (cap = 4,096)
    rate_t = share_b * c_t / sum_{t' in b} c_t'

A benchmark's share is given (a row of the shares file, or fixed by the recipe, e.g. 5% of
pre-training text) or not; the benchmarks without one split what the given ones leave in
proportion to their capped sizes S_b = sum_{t in b} c_t. With no share given,
share_b = S_b / sum_b' S_b', so rate_t = c_t / sum_all c: plain capped examples-proportional
sampling; shares only reshape the mixture where they are given.

Worked example (cap 4,096): benchmark A holds tasks of 10,000 and 1,000 examples, B one of
3,000, and B's share is given as 0.5. Then c = (4096, 1000 | 3000), A gets the remaining
0.5, and the rates are A: 0.5 * 4096/5096, 0.5 * 1000/5096; B: 0.5. Without the share:
4096/8096, 1000/8096, 3000/8096.

The shares file (`benchmark_shares.tsv` beside this module, or any path) is a TSV with the
columns `benchmark`, `share` and `source` (where the number comes from); `#` lines are
comments.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence

from flan_jax.data import file_io
from flan_jax.errors import ConfigError

# OPT-IML's per-task cap of examples-proportional sampling (arXiv 2212.12017, section 3;
# REFERENCE.md "OPT-IML").
OPTIML_TASK_CAP = 4096
SHARES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark_shares.tsv")
_SHARE_COLUMNS = ("benchmark", "share", "source")


@dataclasses.dataclass(frozen=True)
class SampledTask:
    """One member of a two-level mixture.

    Attributes:
      name: the registered seqio task.
      benchmark: the group it is sampled in.
      num_examples: its training examples (capped by the sampler).
    """

    name: str
    benchmark: str
    num_examples: int

    def __post_init__(self):
        if self.num_examples < 1:
            raise ValueError(
                f"SampledTask {self.name}: num_examples must be >= 1, got {self.num_examples}."
            )


def load_benchmark_shares(path: str = SHARES_PATH) -> dict[str, float]:
    """{benchmark: share} from a shares file; a malformed row names the file and line."""
    shares: dict[str, float] = {}
    header_seen = False
    for number, line in file_io.read_text_lines(path, error_type=ConfigError):
        if line.startswith("#") or not line.strip():
            continue
        values = line.rstrip("\n").split("\t")
        if not header_seen:
            if tuple(values) != _SHARE_COLUMNS:
                raise ConfigError(
                    f"{path}:{number}: expected columns {_SHARE_COLUMNS}, got {values}."
                )
            header_seen = True
            continue
        if len(values) != len(_SHARE_COLUMNS) or not values[0] or not values[2]:
            raise ConfigError(
                f"{path}:{number}: expected {len(_SHARE_COLUMNS)} tab-separated values "
                "(benchmark, share, source), each set."
            )
        try:
            share = float(values[1])
        except ValueError:
            share = math.nan
        if not 0.0 < share <= 1.0:
            raise ConfigError(
                f"{path}:{number}: share must be a number in (0, 1], got {values[1]!r}."
            )
        if values[0] in shares:
            raise ConfigError(f"{path}:{number}: benchmark {values[0]!r} is listed twice.")
        shares[values[0]] = share
    return shares


def benchmark_shares(sizes: Mapping[str, int], given: Mapping[str, float]) -> dict[str, float]:
    """Every benchmark's share: `given` ones as they are, the others by capped size.

    Args:
      sizes: {benchmark: S_b, the sum of its tasks' capped sizes}.
      given: {benchmark: share in (0, 1]}; shares of benchmarks absent from `sizes` are
        dropped with a warning. When every benchmark is given, the shares are normalised
        to sum to 1.

    Raises:
      ConfigError: the given shares reach 1 while other benchmarks have none.
    """
    unused = sorted(set(given) - set(sizes))
    if unused:
        logging.warning(
            "Benchmark shares %s name no benchmark of this mixture (benchmarks: %s); ignored.",
            unused,
            sorted(sizes),
        )
    fixed = {b: float(s) for b, s in given.items() if b in sizes}
    free = {b: size for b, size in sizes.items() if b not in fixed}
    fixed_total = sum(fixed.values())
    if not free:
        return {b: s / fixed_total for b, s in fixed.items()}
    if fixed_total >= 1.0:
        raise ConfigError(
            f"The given benchmark shares {fixed} sum to {fixed_total:g}, leaving nothing for "
            f"{sorted(free)}; give shares summing to less than 1."
        )
    free_total = sum(free.values())
    shares = {b: (1.0 - fixed_total) * size / free_total for b, size in free.items()}
    return {**fixed, **shares}


def two_level_rates(
    tasks: Sequence[SampledTask],
    *,
    shares: Mapping[str, float] | None = None,
    cap: int = OPTIML_TASK_CAP,
) -> dict[str, float]:
    """{task name: rate}, the rates summing to 1 (formula in the module docstring).

    Args:
      tasks: the members, each with its benchmark and example count.
      shares: {benchmark: share} given (None or {}: every benchmark by capped size).
      cap: the per-task cap of the examples-proportional part.
    """
    if cap < 1:
        raise ConfigError(f"The per-task cap must be >= 1, got {cap}.")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"Two-level mixture: a task is listed twice in {names}.")
    capped = {t.name: min(t.num_examples, cap) for t in tasks}
    sizes: dict[str, int] = {}
    for task in tasks:
        sizes[task.benchmark] = sizes.get(task.benchmark, 0) + capped[task.name]
    by_benchmark = benchmark_shares(sizes, shares or {})
    return {t.name: by_benchmark[t.benchmark] * capped[t.name] / sizes[t.benchmark] for t in tasks}
