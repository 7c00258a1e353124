"""The optimizers the trainer offers, and the one place a config becomes an optimizer.

``AdafactorConfig`` (:mod:`flan_jax.training.adafactor`, t5x's default) or
:class:`AdamWConfig` (the decoder-only recipes, e.g. OPT-IML's AdamW with betas 0.9 / 0.95
and gradient clipping 1.0) is bound as ``trainer.train.optimizer_config`` in gin;
:func:`make_optimizer` turns either into a
:class:`flan_jax.training.train_state.Optimizer` over the trainable parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
from jax.sharding import PartitionSpec

from flan_jax.errors import ConfigError
from flan_jax.training import adafactor, train_state

# Logical axes that stack copies of a parameter (scanned layers) rather than shape it.
_STACKING_AXES = ("layers", "stack")


@dataclasses.dataclass(frozen=True)
class AdamWConfig:
    """AdamW (Loshchilov & Hutter, 2019) as optax implements it, with optional clipping.

    The update of a parameter ``W`` with gradient ``G`` at step ``t`` (1-based):
    ``G`` is first scaled by ``min(1, clip_norm / global_norm(all gradients))`` when
    ``clip_norm`` is set; then ``m = b1 m + (1 - b1) G``, ``v = b2 v + (1 - b2) G^2``,
    ``W -= lr_t * (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * W)``.

    Weight decay applies only to parameters with at least two dimensions besides a
    scanned-layers axis (kernels and embeddings); norm scales and biases are not decayed,
    as is usual (Hugging Face and OPT exclude them too). The decay is decoupled and
    multiplied by the learning rate, as in ``optax.adamw``.

    Attributes:
        b1: decay of the first moment.
        b2: decay of the second moment.
        eps: added to the root of the second moment.
        weight_decay: decoupled weight decay rate (0: none).
        clip_norm: clip the gradients to this global L2 norm before the update (None:
            no clipping). The ``grad_norm`` metric is the norm before clipping.
    """

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        for name in ("b1", "b2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"AdamWConfig.{name} must be in [0, 1); got {value}")
        if self.eps <= 0:
            raise ConfigError(f"AdamWConfig.eps must be > 0; got {self.eps}")
        if self.weight_decay < 0:
            raise ConfigError(f"AdamWConfig.weight_decay must be >= 0; got {self.weight_decay}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"AdamWConfig.clip_norm must be > 0 or None; got {self.clip_norm}")


OptimizerConfig = adafactor.AdafactorConfig | AdamWConfig
"""What ``optimizer_config`` of :func:`flan_jax.training.trainer.train` accepts."""


def decays_weight(axes: PartitionSpec) -> bool:
    """Whether AdamW decays a parameter with these logical axes (2+ non-stacking dims)."""
    return sum(name not in _STACKING_AXES for name in axes) >= 2


def make_adamw(
    learning_rate: float | optax.Schedule, *, param_axes: Any, config: AdamWConfig
) -> train_state.Optimizer:
    """AdamW (with clipping when configured) bundled with its schedule and state layout.

    Args:
        learning_rate: a constant or an ``optax.Schedule``.
        param_axes: logical ``PartitionSpec`` of the parameters it updates (the moments
            are laid out like them; the decay mask is read from them).
        config: hyper-parameters.
    """
    schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)
    decay_mask = jax.tree.map(
        decays_weight, param_axes, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    adamw = optax.adamw(
        schedule,
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=decay_mask,
    )
    tx = adamw
    if config.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
    return train_state.make_optax_optimizer(tx, schedule, param_axes)


def make_optimizer(
    learning_rate: float | optax.Schedule,
    *,
    param_axes: Any,
    config: OptimizerConfig,
    trainable: Any = None,
) -> train_state.Optimizer:
    """The optimizer of ``config``, updating the ``trainable`` parameters only.

    Args:
        learning_rate: a constant or an ``optax.Schedule``.
        param_axes: logical ``PartitionSpec`` of every parameter.
        config: an ``AdafactorConfig`` or an :class:`AdamWConfig`.
        trainable: a tree of bools with the params' structure (see
            :attr:`flan_jax.training.train_state.Optimizer.trainable`); None: all.

    Raises:
        ConfigError: for another kind of config.
    """
    trainable_axes, _ = train_state.split_params(param_axes, trainable)
    optimizer: train_state.Optimizer
    if isinstance(config, adafactor.AdafactorConfig):
        optimizer = adafactor.make_adafactor(
            learning_rate, param_axes=trainable_axes, config=config
        )
    elif isinstance(config, AdamWConfig):
        optimizer = make_adamw(learning_rate, param_axes=trainable_axes, config=config)
    else:
        raise ConfigError(
            "optimizer_config must be an adafactor.AdafactorConfig or an "
            f"optimizers.AdamWConfig; got {type(config).__name__}"
        )
    return dataclasses.replace(optimizer, trainable=trainable)
