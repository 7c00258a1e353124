"""Chain-of-thought tasks: 9 datasets from local TSVs, plus inverted versions."""

from flan_jax.tasks.cot.registration import (
    DATASETS,
    FAMILY,
    cot_template_file,
    list_cot_datasets,
    load_cot_split,
    load_cot_templates,
    missing_data,
    parse_cot_answer,
    read_cot_tsv,
    register_cot_tasks,
)

__all__ = [
    "DATASETS",
    "FAMILY",
    "cot_template_file",
    "list_cot_datasets",
    "load_cot_split",
    "load_cot_templates",
    "missing_data",
    "parse_cot_answer",
    "read_cot_tsv",
    "register_cot_tasks",
]
