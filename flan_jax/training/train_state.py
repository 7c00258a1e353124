"""The train state and the optimizer bundle the train step consumes.

``TrainState`` holds plain arrays only (no partitioning boxes), so it can be saved by orbax
and passed through ``jax.jit`` as is; its layout on the mesh comes from a parallel tree of
logical ``PartitionSpec`` (:func:`get_train_state_logical_axes`) mapped through the rules.

Parameters may be partly frozen (LoRA trains adapters on a frozen base): the optimizer's
``trainable`` tree of bools says which leaves train. ``TrainState.params`` always holds
every parameter (placed, sharded and checkpointed alike, so a resume needs nothing else);
the optimizer state covers the trainable leaves alone, and the train step differentiates
and updates only those (:func:`split_params` / :func:`merge_params`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
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
        state_logical_axes: maps the trainable params (or their shapes) to a tree of
            logical ``PartitionSpec`` with the exact structure of ``tx.init(params)``.
        trainable: a tree of Python bools with the params' structure (a bool may stand
            for a whole subtree): which parameters this optimizer updates; ``tx`` sees the
            trainable part of :func:`split_params` only. None: every parameter.
    """

    tx: optax.GradientTransformation
    learning_rate: optax.Schedule
    state_logical_axes: Callable[[Any], Any]
    trainable: Any = None


def _split(tree: Any, mask: Any) -> tuple[Any, Any]:
    """``(trainable, frozen)`` subtrees of ``tree``; ``None`` stands for an empty side."""
    if isinstance(mask, bool):
        return (tree, None) if mask else (None, tree)
    if not isinstance(tree, Mapping) or not isinstance(mask, Mapping):
        raise ValueError(f"the trainable mask {mask!r} does not match the params' structure")
    trainable, frozen = {}, {}
    for key, subtree in tree.items():
        if key not in mask:
            raise ValueError(f"the trainable mask has no entry for parameter {key!r}")
        kept, fixed = _split(subtree, mask[key])
        if kept is not None:
            trainable[key] = kept
        if fixed is not None:
            frozen[key] = fixed
    return (trainable or None), (frozen or None)


def split_params(params: Any, trainable: Any) -> tuple[Any, Any]:
    """Splits params (or any tree with their structure) into trainable and frozen parts.

    Args:
        params: nested mappings of arrays (flax params), their shapes or their axes.
        trainable: :attr:`Optimizer.trainable` (None: all trainable).

    Returns:
        ``(trainable, frozen)``: nested dicts holding only their own leaves (empty
        branches dropped), e.g. ``{"a": {"kernel": W, "lora_a": A}}`` with mask
        ``{"a": {"kernel": False, "lora_a": True}}`` gives ``({"a": {"lora_a": A}},
        {"a": {"kernel": W}})``. Without a mask: ``(params, {})``.
    """
    if trainable is None:
        return params, {}
    kept, fixed = _split(params, trainable)
    return (kept or {}), (fixed or {})


def merge_params(trainable: Any, frozen: Any) -> Any:
    """The inverse of :func:`split_params`: the full tree from its two parts."""
    if not frozen:
        return trainable
    if not trainable:
        return frozen
    merged = dict(frozen)
    for key, subtree in trainable.items():
        merged[key] = merge_params(subtree, frozen[key]) if key in frozen else subtree
    return merged


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
        opt_state=optimizer.tx.init(split_params(params, optimizer.trainable)[0]),
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
        opt_state=optimizer.state_logical_axes(
            split_params(abstract_params, optimizer.trainable)[0]
        ),
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
