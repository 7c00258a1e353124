"""Adafactor (Shazeer & Stern, 2018) with the t5x conventions, as an optax transformation.

For a parameter ``W`` with gradient ``G`` at step ``t`` (0-based, after ``step_offset``):

1. ``decay = 1 - (t + 1) ** -decay_rate`` (0 at the first step, so the statistics start
   as the first squared gradient); ``G2 = G * G + epsilon1``.
2. Factored parameters keep a row statistic ``R = decay * R + (1 - decay) * mean_cols(G2)``
   and a column statistic ``C = decay * C + (1 - decay) * mean_rows(G2)``, and precondition
   ``U = G / sqrt(R / mean_rows(R)) / sqrt(C)``; the others keep a full second moment
   ``V = decay * V + (1 - decay) * G2`` and use ``U = G / sqrt(V)``.
3. Update clipping: ``U /= max(1, rms(U) / clipping_threshold)``.
4. Step size: ``learning_rate * max(rms(W), epsilon2)`` with ``multiply_by_parameter_scale``.
5. Optional momentum on the scaled step (``beta1``), optional weight decay, then
   ``W -= step``.

Which dimensions are "rows" and "columns" comes from the parameters' *logical* axis names
(:data:`LOGICAL_FACTOR_RULES`): ``embed`` is the row axis, ``vocab``, ``mlp``, ``heads``,
``kv_heads``, ``kv``, ``joined_kv``, ``abspos`` and ``embed_proj`` are column axes,
scanned-layer axes are batch axes (statistics are kept per layer), and anything else
(relative-position tables, norm scales) leaves a parameter unfactored. A parameter is
factored only when it has both row and column axes and each side spans at least
``min_dim_size_to_factor`` elements. Without logical axes, the t5x heuristic applies:
factor the two largest dimensions when the smaller one is at least
``min_dim_size_to_factor``.

The state is laid out so that it shards by the same logical rules as the parameters:
:func:`adafactor_state_logical_axes` gives ``R`` the parameter's axes minus its column
axes, ``C`` the axes minus its row axes, and ``V`` / momentum the parameter's axes.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from flan_jax.errors import ConfigError
from flan_jax.training.train_state import Optimizer


class FactorDim(enum.Enum):
    """The role of one parameter dimension in the factored second moment."""

    NONE = "none"
    ROW = "row"
    COLUMN = "column"
    BATCH = "batch"


LOGICAL_FACTOR_RULES: Mapping[str, FactorDim] = {
    "embed": FactorDim.ROW,
    "vocab": FactorDim.COLUMN,
    "mlp": FactorDim.COLUMN,
    "heads": FactorDim.COLUMN,
    "kv_heads": FactorDim.COLUMN,
    "kv": FactorDim.COLUMN,
    # Decoder-only models: OPT's learned position table (a table like vocab) and its
    # narrower embedding width in project_in / project_out.
    "abspos": FactorDim.COLUMN,
    "embed_proj": FactorDim.COLUMN,
    "joined_kv": FactorDim.COLUMN,
    "relpos_buckets": FactorDim.NONE,
    "layers": FactorDim.BATCH,
    "stack": FactorDim.BATCH,
}
"""Logical axis name -> factoring role (t5x's standard logical factor rules)."""


@dataclasses.dataclass(frozen=True)
class AdafactorConfig:
    """Hyper-parameters of Adafactor; the defaults are t5x's.

    Attributes:
        factored: use factored second moments where the rules allow.
        multiply_by_parameter_scale: scale the step by ``max(rms(param), epsilon2)``.
        beta1: momentum coefficient, or ``None`` for no momentum (and no momentum memory).
        decay_rate: exponent of the second-moment decay ``1 - (t + 1) ** -decay_rate``.
        step_offset: step at which the second-moment decay restarts (e.g. the
            fine-tuning start step, so statistics re-warm after pre-training).
        clipping_threshold: RMS threshold of update clipping, or ``None`` for none.
        min_dim_size_to_factor: factor only when rows and columns each span at least
            this many elements.
        epsilon1: added to squared gradients.
        epsilon2: floor of the parameter scale.
        weight_decay_rate: decoupled weight decay ``param *= 1 - rate`` per step, or None.
        dtype_momentum: dtype of the momentum buffer (``"float32"`` or ``"bfloat16"``).
    """

    factored: bool = True
    multiply_by_parameter_scale: bool = True
    beta1: float | None = None
    decay_rate: float = 0.8
    step_offset: int = 0
    clipping_threshold: float | None = 1.0
    min_dim_size_to_factor: int = 128
    epsilon1: float = 1e-30
    epsilon2: float = 1e-3
    weight_decay_rate: float | None = None
    dtype_momentum: str = "float32"

    def __post_init__(self) -> None:
        if self.beta1 is not None and not 0.0 <= self.beta1 < 1.0:
            raise ConfigError(f"AdafactorConfig.beta1 must be in [0, 1) or None; got {self.beta1}")
        if self.decay_rate <= 0:
            raise ConfigError(f"AdafactorConfig.decay_rate must be > 0; got {self.decay_rate}")
        if self.clipping_threshold is not None and self.clipping_threshold <= 0:
            raise ConfigError(
                "AdafactorConfig.clipping_threshold must be > 0 or None; "
                f"got {self.clipping_threshold}"
            )
        if self.min_dim_size_to_factor < 1:
            raise ConfigError(
                "AdafactorConfig.min_dim_size_to_factor must be >= 1; "
                f"got {self.min_dim_size_to_factor}"
            )
        if self.dtype_momentum not in ("float32", "bfloat16"):
            raise ConfigError(
                "AdafactorConfig.dtype_momentum must be 'float32' or 'bfloat16'; "
                f"got {self.dtype_momentum!r}"
            )


class AdafactorParamState(NamedTuple):
    """Statistics of one parameter; unused slots hold a ``[1]`` placeholder."""

    v_row: jax.Array  # factored: param shape without the column dims
    v_col: jax.Array  # factored: param shape without the row dims
    v: jax.Array  # unfactored: param shape
    m: jax.Array  # momentum (beta1 set): param shape


class AdafactorState(NamedTuple):
    """Optimizer state: the update count and a params-shaped tree of statistics."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    param_states: Any


@dataclasses.dataclass(frozen=True)
class _FactorPlan:
    """How one parameter is treated: which dims are rows / columns / averaged."""

    row_dims: tuple[int, ...]  # empty when unfactored
    col_dims: tuple[int, ...]
    averaging_dims: tuple[int, ...]  # all but batch dims: scope of rms() and clipping

    @property
    def factored(self) -> bool:
        return bool(self.row_dims)


def _plan_param(
    path: str,
    shape: tuple[int, ...],
    axes: PartitionSpec | None,
    config: AdafactorConfig,
    factor_rules: Mapping[str, FactorDim],
) -> _FactorPlan:
    ndim = len(shape)
    if axes is None or (len(axes) == 0 and ndim > 0):  # unannotated parameter
        return _plan_by_heuristic(shape, config)
    if len(axes) != ndim:
        raise ValueError(f"parameter {path}: logical axes {axes} do not match its shape {shape}")
    roles = []
    for name in axes:
        if name is not None and name not in factor_rules:
            raise ValueError(
                f"parameter {path}: logical axis {name!r} has no Adafactor factor rule; known "
                f"axes: {sorted(factor_rules)} (pass factor_rules to add it)"
            )
        roles.append(FactorDim.NONE if name is None else factor_rules[name])
    averaging = tuple(d for d, r in enumerate(roles) if r is not FactorDim.BATCH)
    rows = tuple(d for d, r in enumerate(roles) if r is FactorDim.ROW)
    cols = tuple(d for d, r in enumerate(roles) if r is FactorDim.COLUMN)
    big_enough = (
        rows
        and cols
        and min(int(np.prod([shape[d] for d in rows])), int(np.prod([shape[d] for d in cols])))
        >= config.min_dim_size_to_factor
    )
    if not (config.factored and big_enough):
        return _FactorPlan((), (), averaging)
    return _FactorPlan(rows, cols, averaging)


def _plan_by_heuristic(shape: tuple[int, ...], config: AdafactorConfig) -> _FactorPlan:
    """t5x's shape rule: factor the two largest dims if the smaller is big enough."""
    averaging = tuple(range(len(shape)))
    if not config.factored or len(shape) < 2:
        return _FactorPlan((), (), averaging)
    order = np.argsort(shape, kind="stable")
    if shape[order[-2]] < config.min_dim_size_to_factor:
        return _FactorPlan((), (), averaging)
    return _FactorPlan((int(order[-2]),), (int(order[-1]),), averaging)


def _plan_params(params, param_axes, config, factor_rules):
    """Returns (leaves with paths, treedef, plans) for a params tree."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    if param_axes is None:
        axes = [None] * len(with_paths)
    else:
        try:
            axes = treedef.flatten_up_to(param_axes)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"adafactor: param_axes does not have the structure of the params: {err}"
            ) from err
    plans = [
        _plan_param(jax.tree_util.keystr(path), tuple(leaf.shape), ax, config, factor_rules)
        for (path, leaf), ax in zip(with_paths, axes)
    ]
    return [leaf for _, leaf in with_paths], treedef, plans


def _without(seq, dims):
    return tuple(x for d, x in enumerate(seq) if d not in dims)


def _init_param_state(shape, plan: _FactorPlan, config: AdafactorConfig) -> AdafactorParamState:
    placeholder = jnp.zeros((1,), jnp.float32)
    v_row = v_col = v = m = placeholder
    if plan.factored:
        v_row = jnp.zeros(_without(shape, plan.col_dims), jnp.float32)
        v_col = jnp.zeros(_without(shape, plan.row_dims), jnp.float32)
    else:
        v = jnp.zeros(shape, jnp.float32)
    if config.beta1 is not None:
        m = jnp.zeros(shape, jnp.dtype(config.dtype_momentum))
    return AdafactorParamState(v_row, v_col, v, m)


def _precondition(grad, stats, plan, decay, config):
    """Updates the second-moment statistics and returns ``(U, new_stats)`` (steps 1-2)."""
    grad_sqr = grad * grad + config.epsilon1
    mix = 1.0 - decay
    if plan.factored:
        new_row = decay * stats.v_row + mix * jnp.mean(grad_sqr, axis=plan.col_dims)
        new_col = decay * stats.v_col + mix * jnp.mean(grad_sqr, axis=plan.row_dims)
        # Row dims' positions once the column dims are removed from the shape.
        rows_in_row_stat = tuple(d - sum(c < d for c in plan.col_dims) for d in plan.row_dims)
        row_mean = jnp.mean(new_row, axis=rows_in_row_stat, keepdims=True)
        row_factor = jax.lax.rsqrt(new_row / row_mean)
        col_factor = jax.lax.rsqrt(new_col)
        update = (
            grad
            * jnp.expand_dims(row_factor, plan.col_dims)
            * jnp.expand_dims(col_factor, plan.row_dims)
        )
        return update, stats._replace(v_row=new_row, v_col=new_col)
    new_v = decay * stats.v + mix * grad_sqr
    return grad * jax.lax.rsqrt(new_v), stats._replace(v=new_v)


def _rms(x, dims):
    return jnp.sqrt(jnp.mean(x * x, axis=dims, keepdims=True))


def _update_param(param, grad, stats, plan, decay, learning_rate, config):
    """One parameter's Adafactor step: returns ``(optax update, new stats)``."""
    grad = grad.astype(jnp.float32)
    param_f32 = param.astype(jnp.float32)
    update, stats = _precondition(grad, stats, plan, decay, config)
    if config.clipping_threshold is not None:
        clip = jnp.maximum(1.0, _rms(update, plan.averaging_dims) / config.clipping_threshold)
        update = update / clip
    step_size = learning_rate
    if config.multiply_by_parameter_scale:
        step_size = step_size * jnp.maximum(_rms(param_f32, plan.averaging_dims), config.epsilon2)
    subtrahend = step_size * update
    if config.beta1 is not None:
        new_m = config.beta1 * stats.m.astype(jnp.float32) + (1.0 - config.beta1) * subtrahend
        stats = stats._replace(m=new_m.astype(stats.m.dtype))
        subtrahend = new_m
    if config.weight_decay_rate is not None:
        subtrahend = subtrahend + config.weight_decay_rate * param_f32
    return (-subtrahend).astype(param.dtype), stats


def adafactor(
    learning_rate: float | optax.Schedule,
    *,
    config: AdafactorConfig = AdafactorConfig(),
    param_axes: Any = None,
    factor_rules: Mapping[str, FactorDim] = LOGICAL_FACTOR_RULES,
) -> optax.GradientTransformation:
    """Adafactor as an optax transformation (returns the full update, learning rate included).

    Args:
        learning_rate: a constant or an ``optax.Schedule`` of the update count.
        config: hyper-parameters.
        param_axes: tree of logical ``PartitionSpec`` with the structure of the params
            (from :func:`flan_jax.training.partitioning.get_param_logical_axes`); ``None``
            uses the shape heuristic for every parameter.
        factor_rules: logical axis name -> :class:`FactorDim`.

    Returns:
        A transformation whose ``update(grads, state, params)`` requires ``params``.
    """
    schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)

    def init_fn(params):
        leaves, treedef, plans = _plan_params(params, param_axes, config, factor_rules)
        states = [_init_param_state(leaf.shape, plan, config) for leaf, plan in zip(leaves, plans)]
        return AdafactorState(jnp.zeros((), jnp.int32), treedef.unflatten(states))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("adafactor.update needs the current params (parameter scale)")
        leaves, treedef, plans = _plan_params(params, param_axes, config, factor_rules)
        grads_flat = treedef.flatten_up_to(grads)
        states_flat = treedef.flatten_up_to(state.param_states)
        t = (state.count - config.step_offset).astype(jnp.float32)
        decay = 1.0 - (t + 1.0) ** (-config.decay_rate)
        lr = schedule(state.count)
        results = [
            _update_param(p, g, s, plan, decay, lr, config)
            for p, g, s, plan in zip(leaves, grads_flat, states_flat, plans)
        ]
        updates = treedef.unflatten([u for u, _ in results])
        new_states = treedef.unflatten([s for _, s in results])
        return updates, AdafactorState(optax.safe_int32_increment(state.count), new_states)

    return optax.GradientTransformation(init_fn, update_fn)


def adafactor_state_logical_axes(
    params: Any,
    *,
    config: AdafactorConfig = AdafactorConfig(),
    param_axes: Any = None,
    factor_rules: Mapping[str, FactorDim] = LOGICAL_FACTOR_RULES,
) -> AdafactorState:
    """Logical ``PartitionSpec`` of every leaf of :func:`adafactor`'s state.

    Args:
        params: the params or their ``ShapeDtypeStruct`` (only shapes are read).
        config, param_axes, factor_rules: as given to :func:`adafactor`.

    Returns:
        An ``AdafactorState`` whose leaves are ``PartitionSpec``: the count and
        placeholders replicated, row statistics with the parameter's axes minus the
        column axes, column statistics minus the row axes, ``v`` and momentum as the
        parameter.
    """
    leaves, treedef, plans = _plan_params(params, param_axes, config, factor_rules)
    axes_flat = [None] * len(leaves) if param_axes is None else treedef.flatten_up_to(param_axes)
    # Any: this tree puts PartitionSpecs where a live state holds jax.Arrays.
    replicated: Any = PartitionSpec(None)
    out = []
    for leaf, plan, axes in zip(leaves, plans, axes_flat):
        names = tuple(axes) if axes else (None,) * leaf.ndim
        full: Any = PartitionSpec(*names)
        row = col = v = replicated
        if plan.factored:
            row = PartitionSpec(*_without(names, plan.col_dims))
            col = PartitionSpec(*_without(names, plan.row_dims))
        else:
            v = full
        m = full if config.beta1 is not None else replicated
        out.append(AdafactorParamState(row, col, v, m))
    count_axes: Any = PartitionSpec()
    return AdafactorState(count_axes, treedef.unflatten(out))


def make_adafactor(
    learning_rate: float | optax.Schedule,
    *,
    param_axes: Any,
    config: AdafactorConfig = AdafactorConfig(),
    factor_rules: Mapping[str, FactorDim] = LOGICAL_FACTOR_RULES,
) -> Optimizer:
    """Adafactor bundled with its schedule and state layout, for the train step.

    Args:
        learning_rate: a constant or an ``optax.Schedule``.
        param_axes: logical axes of the params (see :func:`adafactor`).
        config: hyper-parameters.
        factor_rules: logical axis name -> :class:`FactorDim`.
    """
    schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)
    tx = adafactor(schedule, config=config, param_axes=param_axes, factor_rules=factor_rules)

    def state_axes(params):
        return adafactor_state_logical_axes(
            params, config=config, param_axes=param_axes, factor_rules=factor_rules
        )

    return Optimizer(tx=tx, learning_rate=schedule, state_logical_axes=state_axes)
