"""The Flan 2021 submixture: dataset catalog, template families and task registration.

`datasets.yaml` (read by `catalog`) lists the datasets, `templates/*.yaml` the template
families, `preprocessors` turns TFDS examples into template fields, and `register` holds the
family's functions (`FAMILY`, see `flan_jax.tasks.family`). Importing registers nothing.
"""

from flan_jax.tasks.flan2021.register import FAMILY

__all__ = ["FAMILY"]
