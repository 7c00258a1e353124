"""The Flan 2021 submixture: dataset catalog, template families and task registration.

`datasets.yaml` (read by `catalog`) lists the datasets, `templates/*.yaml` the template
families, `preprocessors` turns TFDS examples into template fields, and
`register.register_flan2021_tasks` registers the seqio tasks. Importing registers nothing.
"""
