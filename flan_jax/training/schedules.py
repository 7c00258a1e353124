"""Learning-rate schedules: constant, t5x rsqrt decay, linear and cosine decay with warmup.

Every schedule is an ``optax.Schedule``: a function of the integer step (the number of
updates already applied, starting at 0) returning an f32 learning rate. They are plain
functions so that gin can bind them from the outside, for example::

    LEARNING_RATE = @schedules.rsqrt_decay()
    schedules.rsqrt_decay.scale = 1.0
    schedules.rsqrt_decay.warmup_steps = 10000

gives t5x's pre-training schedule (0.01 for the first 10k steps, then ``1/sqrt(step)``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from flan_jax.errors import ConfigError


def _check_nonnegative(name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"schedule argument {name} must be >= 0; got {value}")


def constant(value: float) -> optax.Schedule:
    """A constant learning rate (t5x fine-tuning uses 1e-3)."""
    _check_nonnegative("value", value)
    return lambda step: jnp.full((), value, jnp.float32)


def rsqrt_decay(scale: float = 1.0, warmup_steps: int = 10_000) -> optax.Schedule:
    """t5x's inverse square-root schedule: ``scale / sqrt(max(step, warmup_steps))``.

    The rate is flat at ``scale / sqrt(warmup_steps)`` during the warmup, then decays.
    """
    _check_nonnegative("scale", scale)
    if warmup_steps < 1:
        raise ConfigError(f"rsqrt_decay: warmup_steps must be >= 1; got {warmup_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        return scale * jnp.reciprocal(jnp.sqrt(jnp.maximum(step, float(warmup_steps))))

    return schedule


def _warmup_then(peak: float, warmup_steps: int, decay_fn) -> optax.Schedule:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then ``decay_fn(step)``."""

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / max(warmup_steps, 1)
        return jnp.where(step < warmup_steps, warm, decay_fn(step)).astype(jnp.float32)

    return schedule


def _decay_progress(step, warmup_steps: int, total_steps: int):
    """Fraction of the decay phase done at ``step``, clipped to [0, 1]."""
    span = max(total_steps - warmup_steps, 1)
    return jnp.clip((step - warmup_steps) / span, 0.0, 1.0)


def _check_decay_args(peak: float, warmup_steps: int, total_steps: int, end_value: float):
    _check_nonnegative("peak_value", peak)
    _check_nonnegative("end_value", end_value)
    _check_nonnegative("warmup_steps", warmup_steps)
    if total_steps < warmup_steps:
        raise ConfigError(
            f"schedule: total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps}); "
            "lower warmup_steps with the train steps (e.g. --gin.schedules.linear_decay."
            "warmup_steps=...)"
        )


def linear_decay(
    peak_value: float, total_steps: int, warmup_steps: int = 0, end_value: float = 0.0
) -> optax.Schedule:
    """Linear warmup to ``peak_value``, then linear decay to ``end_value`` at ``total_steps``."""
    _check_decay_args(peak_value, warmup_steps, total_steps, end_value)

    def decay(step):
        frac = _decay_progress(step, warmup_steps, total_steps)
        return peak_value + (end_value - peak_value) * frac

    return _warmup_then(peak_value, warmup_steps, decay)


def cosine_decay(
    peak_value: float, total_steps: int, warmup_steps: int = 0, end_value: float = 0.0
) -> optax.Schedule:
    """Linear warmup to ``peak_value``, then half a cosine down to ``end_value``."""
    _check_decay_args(peak_value, warmup_steps, total_steps, end_value)

    def decay(step):
        frac = _decay_progress(step, warmup_steps, total_steps)
        return end_value + (peak_value - end_value) * 0.5 * (1.0 + jnp.cos(math.pi * frac))

    return _warmup_then(peak_value, warmup_steps, decay)
