"""The offline cache the input-pipeline benchmarks read: one function, one place to change.

`cache_mixture` writes seqio's cache and the ArrayRecord shards of every task of a mixture
(train split) under `cache_dir`, and adds `cache_dir` to seqio's global cache dirs. It
writes them in this process with `flan_jax.testing.task_cache` (no Beam), up to
`max_examples_per_task` per task; a task already cached there is kept.
"""

from __future__ import annotations

import os

import seqio

from flan_jax.data import array_record_cache, export
from flan_jax.testing import task_cache


def cache_mixture(
    mixture_or_task_name: str, *, cache_dir: str, max_examples_per_task: int, split: str = "train"
) -> dict[str, int]:
    """Caches every task of the mixture; returns task name -> cached records."""
    counts = {}
    for task, _ in export.get_task_rates(mixture_or_task_name, split):
        task_dir = os.path.join(cache_dir, seqio.utils.get_task_dir_from_name(task.name))
        if not os.path.exists(os.path.join(task_dir, "COMPLETED")):  # written last
            task_cache.write_task_cache(
                task.name, cache_dir=cache_dir, split=split, max_examples=max_examples_per_task
            )
        counts[task.name] = array_record_cache.read_index(task_dir, split).num_records
    seqio.add_global_cache_dirs([cache_dir])
    return counts
