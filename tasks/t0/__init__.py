"""T0-SF tasks: 193 P3 prompts (promptsource format) over local dataset rows."""

from flan_jax.tasks.t0.registration import (
    FAMILY,
    FLAN_TYPES,
    T0Task,
    find_prompt,
    list_t0_datasets,
    load_t0_catalog,
    load_t0_split,
    load_t0_wrapper_templates,
    missing_data,
    register_t0_tasks,
    render_rows,
)

__all__ = [
    "FAMILY",
    "FLAN_TYPES",
    "T0Task",
    "find_prompt",
    "list_t0_datasets",
    "load_t0_catalog",
    "load_t0_split",
    "load_t0_wrapper_templates",
    "missing_data",
    "register_t0_tasks",
    "render_rows",
]
