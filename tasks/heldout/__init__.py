"""Held-out generalization protocols: FLAN 2021 leave-one-cluster-out and OPT-IML's levels."""
