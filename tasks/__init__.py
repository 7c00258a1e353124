"""SeqIO task and mixture registries of flan_jax, importable as `flan_jax.tasks`.

Importing this package registers nothing: call the `register_*` functions (or
`flan_jax.tasks.registry.register_all`) from an entry point or a gin import.
"""
