"""The offline cache the input-pipeline benchmarks read, built by the real Beam caching.

`cache_mixture` caches every task of a mixture (one split) under `cache_dir` with
`beam_cache.cache_tasks` on the DirectRunner (seqio's TFRecord cache and the ArrayRecord
shards), keeps tasks already cached there, and adds `cache_dir` to seqio's global cache dirs.
"""

from __future__ import annotations

import os

import seqio

from flan_jax.data import array_record_cache, beam_cache


def cache_mixture(
    mixture_or_task_name: str, *, cache_dir: str, split: str = "train"
) -> dict[str, int]:
    """Caches every task of the mixture; returns task name -> cached records."""
    tasks = beam_cache.resolve_cache_tasks([mixture_or_task_name], [split])
    task_dirs = {
        task.name: os.path.join(cache_dir, seqio.utils.get_task_dir_from_name(task.name))
        for task in tasks
    }
    missing = [
        name
        for name, task_dir in task_dirs.items()
        if not os.path.exists(os.path.join(task_dir, "COMPLETED"))
    ]
    if missing:
        beam_cache.cache_tasks(missing, output_dir=cache_dir, splits=[split], array_record=True)
    seqio.add_global_cache_dirs([cache_dir])
    return {
        name: array_record_cache.read_index(task_dir, split).num_records
        for name, task_dir in task_dirs.items()
    }
