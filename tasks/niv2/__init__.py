"""Super-NaturalInstructions v2 tasks: one per NIv2 task, from a local tasks/ directory."""

from flan_jax.tasks.niv2.registration import (
    FAMILY,
    MMLU_TASK_NUMBERS,
    Niv2FormatError,
    Niv2Task,
    find_task_file,
    list_niv2_datasets,
    load_niv2_catalog,
    load_niv2_split,
    load_niv2_templates,
    missing_data,
    read_niv2_examples,
    read_task_file,
    register_niv2_tasks,
)

__all__ = [
    "FAMILY",
    "MMLU_TASK_NUMBERS",
    "Niv2FormatError",
    "Niv2Task",
    "find_task_file",
    "list_niv2_datasets",
    "load_niv2_catalog",
    "load_niv2_split",
    "load_niv2_templates",
    "missing_data",
    "read_niv2_examples",
    "read_task_file",
    "register_niv2_tasks",
]
