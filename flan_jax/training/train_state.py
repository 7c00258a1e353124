"""The train state and the optimizer bundle the train step consumes.

``TrainState`` holds plain arrays only (no partitioning boxes), so it can be saved by orbax
and passed through ``jax.jit`` as is; its layout on the mesh comes from a parallel tree of
logical ``PartitionSpec`` (:func:`get_train_state_logical_axes`) mapped through the rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from flan_jax.training import partitioning


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax transformation with its learning-rate schedule and its state's layout.

    Attributes:
        tx: the transformation; ``tx.update`` is called with the params.
        learning_rate: the schedule ``tx`` uses, evaluated by the train step for metrics.
        state_logical_axes: maps the params (or their shapes) to a tree of logical
            ``PartitionSpec`` with the exact structure of ``tx.init(params)``.
    """

    tx: optax.GradientTransformation
    learning_rate: optax.Schedule
    state_logical_axes: Callable[[Any], Any]


def make_optax_optimizer(
    tx: optax.GradientTransformation, learning_rate: optax.Schedule, param_axes: Any
) -> Optimizer:
    """Wraps any optax transformation whose state holds params-shaped trees.

    Params-shaped parts of the state (Adam's first and second moments, momentum, ...) get
    the parameters' logical axes; everything else (counts, scalars) is replicated. For
    Adafactor use :func:`flan_jax.training.adafactor.make_adafactor`, whose factored
    statistics are not params-shaped.

    Args:
        tx: the transformation (e.g. ``optax.adamw(schedule, b2=0.95)``).
        learning_rate: the schedule ``tx`` was built with (reported as a metric).
        param_axes: tree of logical ``PartitionSpec`` with the params' structure.
    """

    def state_axes(params):
        abstract_state = jax.eval_shape(tx.init, params)
        return optax.tree_map_params(
            tx,
            lambda _, axes: axes,
            abstract_state,
            param_axes,
            transform_non_params=lambda _: PartitionSpec(),
            is_leaf=lambda x: isinstance(x, PartitionSpec),
        )

    return Optimizer(tx=tx, learning_rate=learning_rate, state_logical_axes=state_axes)


@flax.struct.dataclass
class TrainState:
    """Everything a training run updates, as one pytree.

    Attributes:
        step: number of train steps taken (including skipped ones), int32 scalar.
        params: model parameters (float32 arrays).
        opt_state: optimizer state.
        num_skipped_steps: steps whose update was dropped by the non-finite guard.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    num_skipped_steps: jax.Array


def create_train_state(params: Any, optimizer: Optimizer) -> TrainState:
    """A fresh state at step 0 (call under ``jax.jit`` with out_shardings to shard it)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.tx.init(params),
        num_skipped_steps=jnp.zeros((), jnp.int32),
    )


def get_train_state_logical_axes(
    abstract_params: Any, param_axes: Any, optimizer: Optimizer
) -> TrainState:
    """Logical ``PartitionSpec`` of every leaf of the train state.

    Args:
        abstract_params: params or their ``ShapeDtypeStruct``s.
        param_axes: tree of logical ``PartitionSpec`` with the params' structure.
        optimizer: supplies the optimizer state's axes.
    """
    # Any: this tree puts PartitionSpecs where a live state holds jax.Arrays.
    scalar_axes: Any = PartitionSpec()
    return TrainState(
        step=scalar_axes,
        params=param_axes,
        opt_state=optimizer.state_logical_axes(abstract_params),
        num_skipped_steps=scalar_axes,
    )


def get_train_state_shardings(
    abstract_params: Any,
    param_axes: Any,
    optimizer: Optimizer,
    mesh: Mesh,
    rules: partitioning.LogicalRules,
) -> TrainState:
    """``NamedSharding`` of every leaf of the train state on ``mesh``."""
    axes = get_train_state_logical_axes(abstract_params, param_axes, optimizer)
    return partitioning.logical_to_shardings(axes, mesh, rules)


def init_sharded_train_state(
    params: Any, optimizer: Optimizer, shardings: TrainState
) -> TrainState:
    """Places ``params`` by ``shardings.params`` and builds the optimizer state sharded.

    Args:
        params: host (numpy) or device arrays, the same on every process.
        optimizer: the optimizer whose state to create.
        shardings: from :func:`get_train_state_shardings`.

    The optimizer state is created directly in its sharded layout by a jitted init, so a
    large model's statistics never sit on one device. Each process copies only the
    shards its own devices hold, so this works on several hosts.
    """
    params = jax.tree.map(_place_array, params, shardings.params)
    init = jax.jit(
        lambda p: create_train_state(p, optimizer),
        in_shardings=(shardings.params,),
        out_shardings=shardings,
    )
    return init(params)


def _place_array(value: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
