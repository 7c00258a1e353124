"""A small training loop for distillation runs, on the trainer's own train step.

The distillation batches are built in memory (:mod:`flan_jax.distill.targets`) and carry
the teacher rows as extra ``[batch, length, k]`` features, which the seqio-based trainer
loop does not serve. This loop therefore drives
:func:`flan_jax.training.train_step.make_train_step` directly (the same jitted, sharded step,
Adafactor, loss weighting and normalisation as ``flan-jax train``) over an iterator of numpy
batches, and calls back at chosen steps (evaluation, checkpoints).

Phases: :func:`build_student_trainer` (mesh, optimizer, state, compiled step), then
:func:`run_student_training` (the loop).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from flan_jax.distill import kl_loss  # noqa: F401  (registers the "sparse_kl" token loss)
from flan_jax.models import t5
from flan_jax.models.config import T5Config
from flan_jax.training import adafactor, losses, partitioning, train_state, train_step


@dataclasses.dataclass(frozen=True)
class StudentTrainConfig:
    """Options of a distillation (or plain fine-tuning) run.

    Attributes:
      num_steps: train steps.
      learning_rate: constant Adafactor learning rate (t5x fine-tuning: 1e-3).
      loss: the loss; ``kind="sparse_kl"`` for distribution matching, ``"cross_entropy"``
        for sample matching and answer-only fine-tuning.
      optimizer: Adafactor hyper-parameters.
      mesh: device mesh sizes.
      rules: logical axis rules preset (``"1d"`` or ``"2d"``).
      seed: parameter-initialisation seed (when no initial parameters are given).
      dropout_seed: seed of the dropout masks.
      constrain_activations: trace the model under the mesh and rules (see
        ``TrainStepConfig``).
    """

    num_steps: int = 100
    learning_rate: float = 1e-3
    loss: losses.LossConfig = losses.LossConfig()
    optimizer: adafactor.AdafactorConfig = adafactor.AdafactorConfig()
    mesh: partitioning.MeshConfig = partitioning.MeshConfig()
    rules: str = "1d"
    seed: int = 0
    dropout_seed: int = 0
    constrain_activations: bool = True

    def __post_init__(self) -> None:
        if self.num_steps < 0:
            raise ValueError(f"StudentTrainConfig.num_steps must be >= 0; got {self.num_steps}")
        if not self.learning_rate > 0:
            raise ValueError("StudentTrainConfig.learning_rate must be > 0; got "
                             f"{self.learning_rate}")


@dataclasses.dataclass
class StudentTrainer:
    """A built run: the compiled step, its state and where batches go."""

    model_config: T5Config
    step: train_step.TrainStep
    state: train_state.TrainState
    mesh: jax.sharding.Mesh
    rules: partitioning.LogicalRules

    def place_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a global numpy batch, as global arrays on the mesh."""
        rows = partitioning.get_local_batch_rows(
            self.mesh, len(next(iter(batch.values()))), self.rules)
        return partitioning.make_global_batch({k: v[rows] for k, v in batch.items()},
                                              self.mesh, self.rules)

    @property
    def params(self) -> Any:
        return self.state.params


def build_student_trainer(model_config: T5Config, config: StudentTrainConfig, *,
                          init_params: Any | None = None) -> StudentTrainer:
    """Phase 1: mesh, Adafactor, the sharded state (fresh or from ``init_params``), the step."""
    mesh = partitioning.make_mesh(config.mesh)
    rules = partitioning.get_logical_axis_rules(config.rules)
    param_axes = t5.param_logical_axes(model_config)
    optimizer = adafactor.make_adafactor(config.learning_rate, param_axes=param_axes,
                                         config=config.optimizer)
    shardings = train_state.get_train_state_shardings(
        t5.abstract_params(model_config), param_axes, optimizer, mesh, rules)
    if init_params is None:
        init_params = t5.init_params(model_config, jax.random.key(config.seed))
    host_params = jax.tree.map(np.asarray, init_params)
    step = train_step.make_train_step(
        forward=train_step.make_encoder_decoder_forward(t5.EncoderDecoder(model_config)),
        output_kernel_fn=t5.output_kernel,
        optimizer=optimizer,
        loss_config=config.loss,
        mesh=mesh,
        rules=rules,
        state_shardings=shardings,
        config=train_step.TrainStepConfig(dropout_seed=config.dropout_seed,
                                          constrain_activations=config.constrain_activations),
    )
    state = train_state.init_sharded_train_state(host_params, optimizer, shardings)
    return StudentTrainer(model_config, step, state, mesh, rules)


StepCallback = Callable[[int, Any], None]


def run_student_training(trainer: StudentTrainer, batches: Iterator[Mapping[str, np.ndarray]],
                         *, num_steps: int, callback: StepCallback | None = None,
                         callback_steps: frozenset[int] | set[int] = frozenset(),
                         ) -> dict[str, list[float]]:
    """Phase 2: ``num_steps`` train steps; returns the per-step metrics.

    Args:
      trainer: from :func:`build_student_trainer`; its ``state`` is advanced in place.
      batches: global numpy batches (e.g. :func:`flan_jax.distill.targets.iterate_batches`).
      num_steps: steps to run.
      callback: ``callback(step, params)`` after the steps in ``callback_steps`` (step 0
        means before training); ``params`` are valid during the call only, since the next
        step donates the state's buffers (copy them to keep them).
      callback_steps: the steps (counted after the update) to call back at.

    Returns:
      ``{"loss": [...], "accuracy": [...], "grad_norm": [...]}``, one entry per step.
    """
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "grad_norm": []}
    if callback is not None and 0 in callback_steps:
        callback(0, trainer.state.params)
    for step in range(1, num_steps + 1):
        trainer.state, metrics = trainer.step(trainer.state, trainer.place_batch(next(batches)))
        for name, values in history.items():
            values.append(float(metrics[name]))
        if callback is not None and step in callback_steps:
            callback(step, trainer.state.params)
    return history
