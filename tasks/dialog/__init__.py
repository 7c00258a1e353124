"""Dialog tasks: wiki_dialog and qrecc from their public release files, plus inverted versions."""
from flan_jax.tasks.dialog.registration import (
    DATASETS,
    format_history,
    load_dialog_split,
    load_dialog_templates,
    missing_data,
    qrecc_example,
    register_dialog_tasks,
    wiki_dialog_example,
)

__all__ = ["DATASETS", "format_history", "load_dialog_split", "load_dialog_templates",
           "missing_data", "qrecc_example", "register_dialog_tasks", "wiki_dialog_example"]
