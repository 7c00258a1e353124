"""Train-state checkpoints: orbax steps in the self-contained checkpoint directory.

A training run's ``MODEL_DIR`` is a checkpoint directory in the layout of
:mod:`flan_jax.checkpoints` (``flan_jax_config.json``, ``spiece.model``, ``<step>/``), so
``flan-jax infer --checkpoint MODEL_DIR`` works on it. Every step directory holds four
orbax items:

    <step>/params      the model parameters (what `load_model_checkpoint` reads)
    <step>/opt_state   the optimizer state, sharded like the parameters
    <step>/data_state  the train iterator's position (JSON), so the data stream resumes
    <step>/step        {"step": N, "num_skipped_steps": K} (JSON)

Saves are asynchronous (the train loop continues while the arrays are written) and atomic:
orbax writes each step into a temporary directory and renames it when complete, so a
crash mid-save leaves the previous latest step intact and invisible half-written data.
Only the last ``keep`` steps are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from flan_jax import checkpoints
from flan_jax.models.config import T5Config
from flan_jax.training.train_state import TrainState

PARAMS_ITEM = checkpoints.PARAMS_ITEM
OPT_STATE_ITEM = "opt_state"
DATA_STATE_ITEM = "data_state"
STEP_ITEM = "step"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When and how the trainer writes checkpoints.

    Attributes:
        period: save every ``period`` steps (and always after the last step).
        keep: how many of the most recent steps to keep (``None`` keeps all).
        async_save: write in a background thread while training continues.
    """

    period: int = 1000
    keep: int | None = 3
    async_save: bool = True

    def __post_init__(self) -> None:
        if self.period < 1:
            raise ValueError(f"CheckpointConfig.period must be >= 1; got {self.period}")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"CheckpointConfig.keep must be >= 1 or None; got {self.keep}")


@dataclasses.dataclass(frozen=True)
class RestoredTrainState:
    """What :meth:`TrainCheckpointManager.restore` returns.

    Attributes:
        state: the train state, placed by the target shardings.
        data_state: the train iterator's JSON state.
        step: the restored step.
    """

    state: TrainState
    data_state: Any
    step: int


def _as_restore_target(abstract: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` leaves carrying the shardings orbax should restore into."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )


class TrainCheckpointManager:
    """Saves and restores :class:`TrainState` plus the data state in ``model_dir``.

    Args:
        model_dir: the run's checkpoint directory (created if missing).
        config: period, retention and async options.
        model_config: written to ``flan_jax_config.json`` with the vocabulary, so the
            directory is a loadable model checkpoint.
        vocab_path: the SentencePiece model copied into the directory.
        extra_ids: sentinel ids appended to the vocabulary.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        config: CheckpointConfig,
        *,
        model_config: T5Config,
        vocab_path: str | os.PathLike,
        extra_ids: int,
    ) -> None:
        self.model_dir = Path(model_dir).absolute()
        self.config = config
        if jax.process_index() == 0:
            checkpoints.write_model_metadata(
                self.model_dir, config=model_config, vocab_path=vocab_path, extra_ids=extra_ids
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep,
            create=True,
            enable_async_checkpointing=config.async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.model_dir,
            options=options,
            item_handlers={
                PARAMS_ITEM: ocp.StandardCheckpointHandler(),
                OPT_STATE_ITEM: ocp.StandardCheckpointHandler(),
                DATA_STATE_ITEM: ocp.JsonCheckpointHandler(),
                STEP_ITEM: ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The newest complete step, or None for a fresh directory."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int, *, last_step: int) -> bool:
        """Whether the trainer saves after reaching ``step``."""
        return step % self.config.period == 0 or step == last_step

    def save(self, state: TrainState, data_state: Any) -> None:
        """Starts saving ``state`` at its step (returns before the write ends when async).

        Args:
            state: the train state (sharded arrays are written by every process).
            data_state: the iterator's JSON-serialisable state after the step's batch.
        """
        step = int(state.step)
        if step in self._manager.all_steps():
            logging.info("checkpoint step %d already exists; not saving it again", step)
            return
        args = ocp.args.Composite(
            **{
                PARAMS_ITEM: ocp.args.StandardSave(state.params),
                OPT_STATE_ITEM: ocp.args.StandardSave(state.opt_state),
                DATA_STATE_ITEM: ocp.args.JsonSave(data_state),
                STEP_ITEM: ocp.args.JsonSave(
                    {"step": step, "num_skipped_steps": int(state.num_skipped_steps)}
                ),
            }
        )
        self._manager.save(step, args=args)

    def restore(
        self, abstract_state: TrainState, shardings: TrainState, *, step: int | None = None
    ) -> RestoredTrainState:
        """Restores a step (default: the latest) directly into ``shardings``.

        Args:
            abstract_state: ``ShapeDtypeStruct`` tree of the train state.
            shardings: the target ``NamedSharding`` tree (each process reads only the
                shards its devices hold).
            step: the step to restore; the latest when None.

        Raises:
            FileNotFoundError: if there is no such step.
        """
        steps = self.all_steps()
        step = self.latest_step() if step is None else step
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"{self.model_dir}: no checkpoint step {step}; available steps: {steps}"
            )
        args = ocp.args.Composite(
            **{
                PARAMS_ITEM: ocp.args.StandardRestore(
                    _as_restore_target(abstract_state.params, shardings.params)
                ),
                OPT_STATE_ITEM: ocp.args.StandardRestore(
                    _as_restore_target(abstract_state.opt_state, shardings.opt_state)
                ),
                DATA_STATE_ITEM: ocp.args.JsonRestore(),
                STEP_ITEM: ocp.args.JsonRestore(),
            }
        )
        restored = self._manager.restore(step, args=args)
        counters = restored[STEP_ITEM]
        scalar = shardings.step
        state = TrainState(
            step=jax.device_put(jax.numpy.asarray(counters["step"], jax.numpy.int32), scalar),
            params=restored[PARAMS_ITEM],
            opt_state=restored[OPT_STATE_ITEM],
            num_skipped_steps=jax.device_put(
                jax.numpy.asarray(counters["num_skipped_steps"], jax.numpy.int32),
                shardings.num_skipped_steps,
            ),
        )
        return RestoredTrainState(state, restored[DATA_STATE_ITEM], int(step))

    def read_data_state(self, step: int | None = None) -> Any:
        """The data state saved with a step (default: the latest), without any arrays."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{DATA_STATE_ITEM: ocp.args.JsonRestore()})
        )
        return restored[DATA_STATE_ITEM]

    def wait_until_finished(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def load_initial_params(
    path: str | os.PathLike,
    *,
    model_config: T5Config,
    abstract_params: Any,
    shardings: Any,
    step: int | None = None,
) -> Any:
    """Restores only the parameters of a flan_jax or converted HF checkpoint directory.

    Used to start fine-tuning from a pretrained model: the optimizer state and the data
    position start fresh. The parameters go straight into ``shardings``.

    Args:
        path: a checkpoint directory (``flan-jax convert`` output or a training run).
        model_config: the run's model config; it must match the checkpoint's.
        abstract_params: ``ShapeDtypeStruct`` tree of the parameters.
        shardings: ``NamedSharding`` tree of the parameters.
        step: the step to read; the latest when None.

    Raises:
        ValueError: if the checkpoint's model config differs from ``model_config``.
        FileNotFoundError: if the directory or the step does not exist.
    """
    metadata = checkpoints.read_model_metadata(path)
    if metadata.config != model_config:
        stored, wanted = metadata.config.to_dict(), model_config.to_dict()
        diff = {k: (stored[k], wanted[k]) for k in wanted if stored.get(k) != wanted[k]}
        # Dropout and dtype are run choices, not architecture: a fine-tune may change them.
        architecture = {k: v for k, v in diff.items() if k not in ("dropout_rate", "dtype")}
        if architecture:
            raise ValueError(
                f"INITIAL_CHECKPOINT_PATH {path}: its model config differs from the run's in "
                f"{ {k: f'checkpoint {a!r} vs run {b!r}' for k, (a, b) in architecture.items()} }"
            )
    manager = ocp.CheckpointManager(
        Path(path).absolute(),
        options=ocp.CheckpointManagerOptions(create=False, read_only=True),
        item_handlers={PARAMS_ITEM: ocp.StandardCheckpointHandler()},
    )
    steps = list(manager.all_steps())
    step = manager.latest_step() if step is None else step
    if step is None or step not in steps:
        raise FileNotFoundError(f"INITIAL_CHECKPOINT_PATH {path}: no step {step}; steps: {steps}")
    target = _as_restore_target(abstract_params, shardings)
    restored = manager.restore(
        step, args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(target)})
    )
    manager.close()
    return restored[PARAMS_ITEM]
