"""Shared pytest configuration; helpers live in `flan_jax.testing`."""
