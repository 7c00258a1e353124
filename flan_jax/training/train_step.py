"""The jit-compiled, sharded train step.

One call of :class:`TrainStep` takes a :class:`~flan_jax.training.train_state.TrainState`
and a global batch and returns the next state and scalar metrics:

1. token weights and the normalising factor over the whole batch
   (:func:`flan_jax.training.losses.compute_loss_weights`);
2. the batch split into ``num_microbatches`` microbatches, gradients accumulated in f32 by
   ``lax.scan`` (each microbatch's loss is already divided by the whole batch's factor, so
   the sum of the microbatch gradients is the gradient of the whole batch);
3. the optimizer update, dropped when the loss or the gradient is not finite (the step
   counts in ``num_skipped_steps``);
4. metrics: ``loss``, ``z_loss``, ``accuracy``, ``grad_norm``, ``learning_rate``,
   ``num_real_target_tokens``, ``num_sequences``, ``nonfinite``, ``num_skipped_steps``.

A call returns as soon as the step is dispatched: nothing is read back to the host, so the
device never waits for Python between steps. The trainer fetches the metrics of all steps
since the last logging step at once and acts on ``nonfinite`` there
(``TrainStepConfig.on_nonfinite``: stop the run or go on skipping).

Dropout keys are ``fold_in(fold_in(key(dropout_seed), step), microbatch)``: a resumed run
draws the same masks as an uninterrupted one, and the masks do not depend on the mesh.

The model enters through :class:`flan_jax.models.interface.Model`: its final hidden states
and its output kernel, which the fused loss kernel combines chunk by chunk.

Only the optimizer's trainable parameters (``Optimizer.trainable``; all by default) are
differentiated and updated: the params are split into a trainable and a frozen part
before ``jax.value_and_grad``, so no gradient of a frozen weight is formed or stored, and
the frozen part is passed through to the next state unchanged (bit for bit).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flan_jax.errors import ConfigError
from flan_jax.models.interface import Model
from flan_jax.training import losses, partitioning
from flan_jax.training.train_state import Optimizer, TrainState, merge_params, split_params

Batch = Mapping[str, jax.Array]
NONFINITE_MODES = ("raise", "skip")


@dataclasses.dataclass(frozen=True)
class TrainStepConfig:
    """Options of the train step.

    Attributes:
        num_microbatches: gradient accumulation steps; must divide the global batch and
            leave each microbatch divisible by the number of batch shards.
        on_nonfinite: what the trainer does, at the next logging step, about steps whose
            loss or gradient was not finite (their updates are never applied):
            ``"raise"`` stops the run with a ``trainer.NonFiniteError`` naming the steps,
            ``"skip"`` logs them and goes on.
        dropout_seed: seed of the dropout keys.
        donate_state: let XLA reuse the input state's buffers for the output (the state
            passed in must not be used again).
        constrain_activations: trace the model under the mesh and the logical rules, so
            its ``nn.with_logical_constraint`` annotations pin activation shardings;
            without it XLA propagates shardings from the parameters and the batch alone
            (same numbers, possibly more communication on large meshes).
        enable_dropout: apply the model's dropout (at its configured rate) in training.
    """

    num_microbatches: int = 1
    on_nonfinite: str = "raise"
    dropout_seed: int = 0
    donate_state: bool = True
    constrain_activations: bool = True
    enable_dropout: bool = True

    def __post_init__(self) -> None:
        if self.num_microbatches < 1:
            raise ConfigError(
                f"TrainStepConfig.num_microbatches must be >= 1; got {self.num_microbatches}"
            )
        if self.on_nonfinite not in NONFINITE_MODES:
            raise ConfigError(
                f"TrainStepConfig.on_nonfinite must be one of {NONFINITE_MODES}; "
                f"got {self.on_nonfinite!r}"
            )


def _split_microbatches(batch: Batch, num_microbatches: int, batch_sharding: NamedSharding):
    """``[B, ...]`` -> ``[k, B / k, ...]``; microbatch i takes rows i, i + k, i + 2k, ...

    Interleaving keeps every microbatch spread over all batch shards (each device keeps
    its own rows), instead of microbatch 0 living on the first devices only.
    """
    spec = PartitionSpec(None, *batch_sharding.spec)
    out = {}
    for name, x in batch.items():
        rows = x.shape[0] // num_microbatches
        x = x.reshape((rows, num_microbatches) + x.shape[1:]).swapaxes(0, 1)
        out[name] = jax.lax.with_sharding_constraint(x, NamedSharding(batch_sharding.mesh, spec))
    return out


class _GradientComputer:
    """Loss and gradient of one microbatch, and their accumulation over microbatches."""

    def __init__(
        self,
        model: Model,
        loss_config,
        num_microbatches,
        batch_sharding,
        rules,
        *,
        enable_dropout: bool,
    ):
        self._model = model
        self._enable_dropout = enable_dropout
        self._loss_config = loss_config
        self._num_microbatches = num_microbatches
        self._batch_sharding = batch_sharding
        self._rules = rules

    def _loss(self, trainable, frozen, microbatch, weights, factor, rng):
        params = merge_params(trainable, frozen)
        hidden = self._model.hidden_states(
            params, microbatch, dropout_rng=rng if self._enable_dropout else None
        )
        stats = losses.compute_loss(
            hidden,
            self._model.output_kernel(params),
            microbatch,
            self._loss_config,
            weights=weights,
            factor=factor,
            mesh=self._batch_sharding.mesh,
            rules=self._rules,
        )
        return stats.loss, stats

    def __call__(self, trainable, frozen, batch, weights, factor, rng):
        """Returns ``(grads, LossStats)`` summed over the microbatches of ``batch``.

        ``grads`` has the structure of ``trainable``; ``frozen`` is not differentiated.
        """
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        if self._num_microbatches == 1:
            (_, stats), grads = grad_fn(
                trainable, frozen, batch, weights, factor, jax.random.fold_in(rng, 0)
            )
            return grads, stats
        split = _split_microbatches(
            {**batch, "_weights": weights}, self._num_microbatches, self._batch_sharding
        )

        def body(carry, inputs):
            index, microbatch = inputs
            mb_weights = microbatch.pop("_weights")
            (_, stats), grads = grad_fn(
                trainable, frozen, microbatch, mb_weights, factor, jax.random.fold_in(rng, index)
            )
            return jax.tree.map(jnp.add, carry, (grads, stats)), None

        zeros = (
            jax.tree.map(jnp.zeros_like, trainable),
            losses.LossStats(*[jnp.zeros((), jnp.float32)] * len(losses.LossStats._fields)),
        )
        indices = jnp.arange(self._num_microbatches)
        (grads, stats), _ = jax.lax.scan(body, zeros, (indices, split))
        return grads, stats


def _select_tree(keep_new, new, old):
    return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def _build_step_fn(
    compute_gradients: _GradientComputer,
    optimizer: Optimizer,
    loss_config: losses.LossConfig,
    config: TrainStepConfig,
):
    def step_fn(state: TrainState, batch: Batch):
        weights, factor = losses.compute_loss_weights(batch, loss_config)
        rng = jax.random.fold_in(jax.random.key(config.dropout_seed), state.step)
        trainable, frozen = split_params(state.params, optimizer.trainable)
        grads, stats = compute_gradients(trainable, frozen, batch, weights, factor, rng)
        grad_norm = optax.global_norm(grads)
        updates, new_opt_state = optimizer.tx.update(grads, state.opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        finite = jnp.isfinite(stats.loss) & jnp.isfinite(grad_norm)
        skipped = state.num_skipped_steps + (~finite).astype(jnp.int32)
        new_state = TrainState(
            step=state.step + 1,
            params=merge_params(_select_tree(finite, new_trainable, trainable), frozen),
            opt_state=_select_tree(finite, new_opt_state, state.opt_state),
            num_skipped_steps=skipped,
        )
        metrics = {
            "loss": stats.loss,
            "z_loss": stats.z_loss,
            "accuracy": stats.num_correct / jnp.maximum(stats.num_real_target_tokens, 1.0),
            "grad_norm": grad_norm,
            "learning_rate": optimizer.learning_rate(state.step - state.num_skipped_steps),
            "num_real_target_tokens": stats.num_real_target_tokens,
            "num_sequences": losses.count_sequences(batch),
            "nonfinite": (~finite).astype(jnp.int32),
            "num_skipped_steps": skipped,
        }
        return new_state, metrics

    return step_fn


class TrainStep:
    """The compiled train step: ``state, metrics = train_step(state, batch)``.

    Attributes:
        mesh: the device mesh.
        rules: the logical axis rules used for activations.
        state_shardings: the train state's shardings (inputs and outputs).
        batch_sharding: the sharding of every batch feature (split along the batch dim).
        jitted: the underlying ``jax.jit`` function, e.g. for ``.lower(...).compile()``
            cost analysis; call it under :meth:`context`.
    """

    def __init__(self, step_fn, mesh, rules, state_shardings, config: TrainStepConfig):
        self.mesh = mesh
        self.rules = rules
        self.state_shardings = state_shardings
        self.batch_sharding = _batch_sharding(mesh, rules)
        self._config = config
        replicated = NamedSharding(mesh, PartitionSpec())
        self.jitted = jax.jit(
            step_fn,
            in_shardings=(state_shardings, self.batch_sharding),
            out_shardings=(state_shardings, replicated),
            donate_argnums=(0,) if config.donate_state else (),
        )

    @contextlib.contextmanager
    def context(self):
        """The mesh and logical-rules context the model's sharding constraints need."""
        if not self._config.constrain_activations:
            yield
            return
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    @property
    def config(self) -> TrainStepConfig:
        return self._config

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        """Dispatches one step; returns without waiting for it (metrics stay on device)."""
        self._check_batch(batch)
        with self.context():
            return self.jitted(state, batch)

    def _check_batch(self, batch: Batch) -> None:
        shards = partitioning.get_batch_shard_count(self.mesh, self.rules)
        k = self._config.num_microbatches
        for name, x in batch.items():
            if x.shape[0] % (k * shards):
                raise ValueError(
                    f"batch feature {name!r} has {x.shape[0]} rows; the train step needs a "
                    f"multiple of num_microbatches ({k}) x batch shards ({shards})"
                )


def _batch_sharding(mesh: Mesh, rules: partitioning.LogicalRules) -> NamedSharding:
    """One sharding for every feature: the batch dim split, other dims whole."""
    axes = partitioning.get_batch_mesh_axes(rules)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def make_train_step(
    *,
    model: Model,
    optimizer: Optimizer,
    loss_config: losses.LossConfig,
    mesh: Mesh,
    rules: partitioning.LogicalRules,
    state_shardings: TrainState,
    config: TrainStepConfig = TrainStepConfig(),
) -> TrainStep:
    """Builds the jit-compiled train step.

    Args:
        model: the model (hidden states and output kernel; dropout from its config).
        optimizer: the optax transformation, its schedule and state layout.
        loss_config: the loss.
        mesh: device mesh.
        rules: logical axis rules (activations and the batch follow them).
        state_shardings: from
            :func:`flan_jax.training.train_state.get_train_state_shardings`.
        config: step options.

    Returns:
        A :class:`TrainStep`.
    """
    batch_sharding = _batch_sharding(mesh, rules)
    compute_gradients = _GradientComputer(
        model,
        loss_config,
        config.num_microbatches,
        batch_sharding,
        rules,
        enable_dropout=config.enable_dropout,
    )
    step_fn = _build_step_fn(compute_gradients, optimizer, loss_config, config)
    return TrainStep(step_fn, mesh, rules, state_shardings, config)
