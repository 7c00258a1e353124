"""Math evaluation without model dependencies: `math_datasets` (loaders), `answers`
(answer extraction and comparison), `splits` (held-out dev splits) and `selection`
(per-checkpoint accuracy, self-consistency, checkpoint selection)."""
