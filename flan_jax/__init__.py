"""flan_jax: the FLAN collection, T5 models, a t5x-style trainer and CoT distillation in JAX."""

__version__ = "0.1.0"
