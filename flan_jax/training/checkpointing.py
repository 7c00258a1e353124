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

A step that exists but cannot be read (a truncated file, a missing item, corrupt data) is
reported by step and item, and :meth:`TrainCheckpointManager.restore_newest_readable`
falls back to the newest step that reads. Unreadable steps are never deleted.

A :data:`SaveHook` sees each save pass its :data:`SAVE_EVENTS`; tests kill the process
there to prove a crash at any point of a write leaves a resumable directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from flan_jax import checkpoints
from flan_jax.errors import ConfigError
from flan_jax.models import registry
from flan_jax.models.registry import ModelConfig
from flan_jax.training.train_state import TrainState

PARAMS_ITEM = checkpoints.PARAMS_ITEM
OPT_STATE_ITEM = "opt_state"
DATA_STATE_ITEM = "data_state"
STEP_ITEM = "step"
ITEMS = (PARAMS_ITEM, OPT_STATE_ITEM, DATA_STATE_ITEM, STEP_ITEM)

CheckpointError = checkpoints.CheckpointError
UnreadableCheckpointError = checkpoints.UnreadableCheckpointError

SAVE_EVENTS = ("directory_created", "items_written", "committed")
"""The points of a save a :data:`SaveHook` sees, in order: the step's temporary directory
exists and no item is written yet; every item is written but the step is not committed
(not renamed into place, so invisible to a restore); the step is committed."""

SaveHook = Callable[[str, int], None]
"""``(event, step)``, called at each of :data:`SAVE_EVENTS` (in orbax's save thread)."""


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
            raise ConfigError(f"CheckpointConfig.period must be >= 1; got {self.period}")
        if self.keep is not None and self.keep < 1:
            raise ConfigError(f"CheckpointConfig.keep must be >= 1 or None; got {self.keep}")


@dataclasses.dataclass(frozen=True)
class RestoredTrainState:
    """What :meth:`TrainCheckpointManager.restore` returns.

    Attributes:
        state: the train state, placed by the target shardings.
        data_state: the train iterator's JSON state.
        step: the restored step.
        unreadable: the newer steps that could not be read, newest first (by
            :meth:`TrainCheckpointManager.restore_newest_readable`).
    """

    state: TrainState
    data_state: Any
    step: int
    unreadable: tuple[UnreadableCheckpointError, ...] = ()


def _as_restore_target(abstract: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` leaves carrying the shardings orbax should restore into."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )


def _hooked_temporary_path_class(directory: Path, hook: SaveHook) -> type:
    """orbax's temporary-path class for ``directory``, calling ``hook`` at the save events.

    orbax creates a step's temporary directory (``create``), has the handlers write the
    items into it, then commits it (``finalize``: the commit marker and the rename), so
    these two methods bracket every point of a write.
    """
    base = ocp.path.atomicity_defaults.get_default_temporary_path_class(directory)

    def step_of(path: Any) -> int | None:
        # The items of a step are written through temporary paths of this class too.
        final = path.get_final()
        return int(final.name) if str(final.parent) == str(directory) else None

    class HookedTemporaryPath(base):  # type: ignore[misc, valid-type]
        async def create(self, *args: Any, **kwargs: Any) -> Any:
            path = await super().create(*args, **kwargs)
            if (step := step_of(self)) is not None:
                hook("directory_created", step)
            return path

        async def finalize(self, *args: Any, **kwargs: Any) -> None:
            step = step_of(self)
            if step is not None:
                hook("items_written", step)
            await super().finalize(*args, **kwargs)
            if step is not None:
                hook("committed", step)

    return HookedTemporaryPath


def _all_processes_agree(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (each reads its own shards, so one may fail)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


class TrainCheckpointManager:
    """Saves and restores :class:`TrainState` plus the data state in ``model_dir``.

    Args:
        model_dir: the run's checkpoint directory (created if missing).
        config: period, retention and async options.
        model_config: written to ``flan_jax_config.json`` with the vocabulary, so the
            directory is a loadable model checkpoint.
        vocab_path: the vocabulary (SentencePiece model or tokenizer.json) copied in.
        extra_ids: sentinel ids appended to the vocabulary.
        save_hook: called at each of :data:`SAVE_EVENTS` of every save (fault injection
            in tests); None for none.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        config: CheckpointConfig,
        *,
        model_config: ModelConfig,
        vocab_path: str | os.PathLike,
        extra_ids: int,
        save_hook: SaveHook | None = None,
    ) -> None:
        self.model_dir = Path(model_dir).absolute()
        self.config = config
        self._unreadable_steps: set[int] = set()
        if jax.process_index() == 0:
            checkpoints.write_model_metadata(
                self.model_dir, config=model_config, vocab_path=vocab_path, extra_ids=extra_ids
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep,
            create=True,
            enable_async_checkpointing=config.async_save,
            temporary_path_class=(
                _hooked_temporary_path_class(self.model_dir, save_hook) if save_hook else None
            ),
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
        """The newest complete step (it may still be unreadable), or None for a fresh directory."""
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
            if step in self._unreadable_steps:
                logging.warning(
                    "checkpoint step %d in %s cannot be read and is left as it is (not "
                    "rewritten, not deleted); the next save is a later step",
                    step,
                    self.model_dir,
                )
            else:
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
        if not self._manager.save(step, args=args):
            # orbax saves only steps after its latest one (e.g. not between a step the run
            # fell back to and a newer unreadable one).
            logging.warning(
                "checkpoint step %d not saved: %s already has the later step %s",
                step,
                self.model_dir,
                self.latest_step(),
            )

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
            checkpoints.MissingCheckpointError: if there is no such step.
            UnreadableCheckpointError: if the step cannot be read (on any process); the
                message names the step, the item and the storage error.
        """
        steps = self.all_steps()
        step = self.latest_step() if step is None else step
        if step is None or step not in steps:
            raise checkpoints.MissingCheckpointError(
                f"{self.model_dir}: no checkpoint step {step}; available steps: {steps}"
            )
        error: UnreadableCheckpointError | None = None
        try:
            items = self._read_items(step, abstract_state, shardings)
        except UnreadableCheckpointError as raised:
            error = raised
        # Every process must resume from the same step, or none does.
        if not _all_processes_agree(error is None):
            raise error or UnreadableCheckpointError(
                self.model_dir, step, "another process could not read its shards"
            )
        counters = items[STEP_ITEM]
        state = TrainState(
            step=jax.device_put(
                jax.numpy.asarray(counters["step"], jax.numpy.int32), shardings.step
            ),
            params=items[PARAMS_ITEM],
            opt_state=items[OPT_STATE_ITEM],
            num_skipped_steps=jax.device_put(
                jax.numpy.asarray(counters["num_skipped_steps"], jax.numpy.int32),
                shardings.num_skipped_steps,
            ),
        )
        return RestoredTrainState(state, items[DATA_STATE_ITEM], int(step))

    def _read_items(
        self, step: int, abstract_state: TrainState, shardings: TrainState
    ) -> dict[str, Any]:
        """Reads the step's items one by one, so a failure names its item."""
        checkpoints.check_step_items(self.model_dir, step, ITEMS)
        args = {
            PARAMS_ITEM: ocp.args.StandardRestore(
                _as_restore_target(abstract_state.params, shardings.params)
            ),
            OPT_STATE_ITEM: ocp.args.StandardRestore(
                _as_restore_target(abstract_state.opt_state, shardings.opt_state)
            ),
            DATA_STATE_ITEM: ocp.args.JsonRestore(),
            STEP_ITEM: ocp.args.JsonRestore(),
        }
        items = {}
        for item, item_args in args.items():
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**{item: item_args}))
                items[item] = restored[item]
            except Exception as error:  # Storage errors have no common type.
                checkpoints.quiet_orphaned_reads()
                raise UnreadableCheckpointError(
                    self.model_dir, step, f"item {item}: {checkpoints.summarize_read_error(error)}"
                ) from error
        counters = items[STEP_ITEM]
        if not (isinstance(counters, dict) and {"step", "num_skipped_steps"} <= set(counters)):
            raise UnreadableCheckpointError(
                self.model_dir,
                step,
                f"item {STEP_ITEM}: expected {{'step': N, 'num_skipped_steps': K}}; "
                f"got {counters!r}",
            )
        return items

    def restore_newest_readable(
        self, abstract_state: TrainState, shardings: TrainState
    ) -> RestoredTrainState | None:
        """Restores the newest step that can be read, passing over (never deleting) the rest.

        Args:
            abstract_state, shardings: as for :meth:`restore`.

        Returns:
            The restored state, with the newer unreadable steps in ``unreadable``; None when
            the directory has no step.

        Raises:
            CheckpointError: if there are steps but none can be read (each step's reason is
                in the message).
        """
        unreadable: list[UnreadableCheckpointError] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                restored = self.restore(abstract_state, shardings, step=step)
            except UnreadableCheckpointError as error:
                unreadable.append(error)
                continue
            self._unreadable_steps.update(error.step for error in unreadable)
            return dataclasses.replace(restored, unreadable=tuple(unreadable))
        if unreadable:
            reasons = "; ".join(f"step {error.step}: {error.reason}" for error in unreadable)
            raise CheckpointError(
                f"no checkpoint step in {self.model_dir} can be read ({reasons}). Nothing was "
                "deleted: move the step directories out of it, or train in a new directory, "
                "to start afresh."
            )
        return None

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
    model_config: ModelConfig,
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
        checkpoints.CheckpointError: if the checkpoint's model config differs from
            ``model_config``.
        checkpoints.MissingCheckpointError: if the directory or the step does not exist.
        UnreadableCheckpointError: if the step's parameters cannot be read.
    """
    metadata = checkpoints.read_model_metadata(path)
    stored_kind, run_kind = registry.kind_of(metadata.config), registry.kind_of(model_config)
    if stored_kind != run_kind:
        raise checkpoints.CheckpointError(
            f"INITIAL_CHECKPOINT_PATH {path}: it holds a {stored_kind!r} model, the run "
            f"trains a {run_kind!r} model; include the gin file of a {stored_kind} size."
        )
    if metadata.config != model_config:
        stored, wanted = metadata.config.to_dict(), model_config.to_dict()
        diff = {k: (stored[k], wanted[k]) for k in wanted if stored.get(k) != wanted[k]}
        # Dropout and dtype are run choices, not architecture: a fine-tune may change them.
        architecture = {k: v for k, v in diff.items() if k not in ("dropout_rate", "dtype")}
        if architecture:
            raise checkpoints.CheckpointError(
                f"INITIAL_CHECKPOINT_PATH {path}: its model config differs from the run's in "
                f"{ {k: f'checkpoint {a!r} vs run {b!r}' for k, (a, b) in architecture.items()} }"
            )
    step = checkpoints.find_step(path, step)
    return checkpoints.restore_params(
        path, step=step, target=_as_restore_target(abstract_params, shardings)
    )
