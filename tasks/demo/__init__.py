"""The built-in synthetic instruction collection that `flan-jax train` trains on by default.

Nothing is registered at import: call `register_demo_tasks(get_demo_vocabulary())`.
"""

from flan_jax.tasks.demo.collection import (
    CLUSTERS,
    DEMO_MIXTURE,
    DEMO_TASK_FEATURE_LENGTHS,
    FAMILY,
    demo_eval_tasks,
    exact_match,
    extract_cot_answer,
    get_demo_vocabulary,
    list_demo_datasets,
    list_demo_tasks,
    load_demo_split,
    register_demo_tasks,
)

__all__ = [
    "CLUSTERS",
    "DEMO_MIXTURE",
    "DEMO_TASK_FEATURE_LENGTHS",
    "FAMILY",
    "demo_eval_tasks",
    "exact_match",
    "extract_cot_answer",
    "get_demo_vocabulary",
    "list_demo_datasets",
    "list_demo_tasks",
    "load_demo_split",
    "register_demo_tasks",
]
