"""Evaluation without model dependencies: `metrics` (seqio metric functions for every task
family), `math_datasets` (loaders), `answers` (answer extraction and comparison), `splits`
(held-out dev splits) and `selection` (per-checkpoint accuracy, self-consistency, checkpoint
selection)."""
