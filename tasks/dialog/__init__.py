"""Dialog tasks: wiki_dialog and qrecc from their public release files, plus inverted versions."""

from flan_jax.tasks.dialog.registration import (
    DATASETS,
    FAMILY,
    format_history,
    list_dialog_datasets,
    load_dialog_split,
    load_dialog_templates,
    missing_data,
    qrecc_example,
    register_dialog_tasks,
    wiki_dialog_example,
)

__all__ = [
    "DATASETS",
    "FAMILY",
    "format_history",
    "list_dialog_datasets",
    "load_dialog_split",
    "load_dialog_templates",
    "missing_data",
    "qrecc_example",
    "register_dialog_tasks",
    "wiki_dialog_example",
]
