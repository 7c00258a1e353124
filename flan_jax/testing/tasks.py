"""Helpers for task-registry tests.

Registration is idempotent: a task registered earlier in the process (by another test, with
other data paths) is returned as it is. A test that registers tasks over its own data first
forgets the earlier ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import seqio

from flan_jax.tasks import naming


def forget_tasks(source: str, datasets: Iterable[str] | None = None) -> None:
    """Removes every registered task (all variants, inverted too) of `source`'s `datasets`.

    Args:
      source: the family's source name.
      datasets: which datasets (None: all of the source's).
    """
    wanted = None if datasets is None else set(datasets)
    for name in list(seqio.TaskRegistry.names()):
        try:
            task_id = naming.parse_task_name(name)
        except ValueError:
            continue
        if task_id.source == source and (wanted is None or task_id.dataset in wanted):
            seqio.TaskRegistry.remove(name)


def forget_tasks_named(prefix: str) -> None:
    """Removes every registered task and mixture whose name starts with `prefix`.

    For registries outside the naming scheme of `forget_tasks` (e.g. the Instruction
    Pre-Training synthesizer data, `ipt_synthesizer__<source>__<dataset>`).
    """
    for registry in (seqio.TaskRegistry, seqio.MixtureRegistry):
        for name in list(registry.names()):
            if name.startswith(prefix):
                registry.remove(name)
