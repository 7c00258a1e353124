"""The self-contained model checkpoint directory: weights, model config and vocabulary.

Layout:

    CKPT_DIR/
      flan_jax_config.json  {"model_kind": "t5" | "decoder", "model": config.to_dict(),
                             "vocabulary": {"path": "spiece.model", "extra_ids": N}}
      spiece.model          the vocabulary, copied in: a SentencePiece model, or a
                            tokenizer.json (with the files it reads beside it)
      <step>/               orbax CheckpointManager step directories; item "params" always,
                            trainer items ("opt_state", "data_state") when written by training

The trainer manages the same directory with more items, so any training run's directory can
be loaded here: only ``<step>/params`` is opened, so the other items are neither read nor
warned about. A step that cannot be read raises :class:`UnreadableCheckpointError`, one
line naming the directory, the step, the item and the storage error's own message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
import seqio

from flan_jax.data import file_io, vocabularies
from flan_jax.errors import UserError
from flan_jax.models import registry
from flan_jax.models.interface import Model
from flan_jax.models.registry import ModelConfig

CONFIG_FILENAME = "flan_jax_config.json"
VOCAB_FILENAME = "spiece.model"
PARAMS_ITEM = "params"

Params = dict[str, Any]

# Longest storage-error text kept in a message (TensorStore's own text can run to pages);
# a longer one keeps its start (what was read) and its end (what went wrong).
_MAX_REASON_CHARS = 400
_TENSORSTORE_ANNOTATION = re.compile(r"\s*\[(source locations|tensorstore_spec)=.*$")


class CheckpointError(UserError, ValueError):
    """A checkpoint directory or step that cannot be used; the message says why and what to do."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint directory, its config or the requested step does not exist."""


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint step exists but cannot be read (truncated file, missing item, bad data).

    Attributes:
        ckpt_dir: the checkpoint directory.
        step: the step.
        reason: one line: the item and the innermost storage error.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, step: int, reason: str) -> None:
        self.ckpt_dir, self.step, self.reason = Path(ckpt_dir), step, reason
        super().__init__(f"checkpoint step {step} in {ckpt_dir} cannot be read ({reason})")


def summarize_read_error(error: BaseException) -> str:
    """One line for a failed read: the first line of the innermost chained error.

    TensorStore wraps its useful text (``OUT_OF_RANGE: Error reading "..." ...``) in an
    outer exception whose message is a page of JSON spec, so the chain's root is kept.
    """
    root = error
    while (cause := root.__cause__ or root.__context__) is not None and cause is not root:
        root = cause
    lines = str(root).strip().splitlines()
    text = lines[0].strip("'\" ") if lines else ""
    text = _TENSORSTORE_ANNOTATION.sub("", text)  # a JSON spec after the message
    summary = f"{type(root).__name__}: {text}" if text else type(root).__name__
    if len(summary) > _MAX_REASON_CHARS:
        half = _MAX_REASON_CHARS // 2
        summary = f"{summary[:half]} ... {summary[-half:]}"
    return summary


_ORBAX_DIR = os.path.dirname(ocp.__file__)


def _comes_from_orbax(error: BaseException | None) -> bool:
    tb = error.__traceback__ if error is not None else None
    return any(_ORBAX_DIR in frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb))


def _is_orphaned_read_report(error: BaseException | None, source: object) -> bool:
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    code = getattr(source, "cr_code", None)  # a coroutine closed while still reading
    return (code is not None and _ORBAX_DIR in code.co_filename) or _comes_from_orbax(error)


class _OrphanedReadLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not ("never retrieved" in record.getMessage() and _comes_from_orbax(error))


def quiet_orphaned_reads() -> None:
    """After a failed read, drops the reports of the reads orbax left running (idempotent).

    When one array of a step cannot be read, orbax closes its event loop while the step's
    other reads are still in flight. Each of them reports later, from TensorStore's threads
    and the garbage collector ("Event loop is closed", "Task exception was never
    retrieved", "Exception ignored in <coroutine _read_array_index_and_device_put>"):
    hundreds of lines after the one-line error. Only reports of that origin are dropped.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_orphaned_reads", False):
        return

    def unraisablehook(unraisable: Any) -> None:
        if not _is_orphaned_read_report(unraisable.exc_value, unraisable.object):
            previous(unraisable)

    unraisablehook.drops_orphaned_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = unraisablehook
    logging.getLogger("asyncio").addFilter(_OrphanedReadLogFilter())


def list_step_items(step_dir: Path) -> list[str]:
    """The items (sub-directories) a step directory holds, sorted."""
    return sorted(p.name for p in step_dir.iterdir() if p.is_dir())


def check_step_items(ckpt_dir: Path, step: int, items: Sequence[str]) -> None:
    """Raises :class:`UnreadableCheckpointError` naming missing items and those present."""
    present = list_step_items(ckpt_dir / str(step))
    missing = [item for item in items if item not in present]
    if missing:
        raise UnreadableCheckpointError(
            ckpt_dir,
            step,
            f"missing item{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"items present: {', '.join(present) or 'none'}",
        )


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What `flan_jax_config.json` holds.

    Attributes:
      config: The model architecture (its type is the checkpoint's model kind).
      vocab_path: Absolute path of the vocabulary file inside the checkpoint directory.
      extra_ids: Number of sentinel ids appended to the SentencePiece vocabulary.
    """

    config: ModelConfig
    vocab_path: Path
    extra_ids: int


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    """A restored model checkpoint.

    Attributes:
      params: The float32 parameter tree (plain arrays).
      config: The model architecture.
      vocabulary: The vocabulary stored with the weights.
      step: The step that was restored.
    """

    params: Params
    config: ModelConfig
    vocabulary: seqio.Vocabulary
    step: int

    @property
    def model(self) -> Model:
        """The model interface of ``config`` (for decoding and scoring)."""
        return registry.build_model(self.config)


def write_model_metadata(
    ckpt_dir: str | os.PathLike,
    *,
    config: ModelConfig,
    vocab_path: str | os.PathLike,
    extra_ids: int,
) -> None:
    """Writes `flan_jax_config.json` and copies the vocabulary into `ckpt_dir`.

    Args:
      ckpt_dir: The checkpoint directory (created if missing).
      config: The model architecture (a T5Config or a DecoderConfig).
      vocab_path: A SentencePiece model (stored as `spiece.model`), or a Hugging Face
        `tokenizer.json` (stored under its name, with the files it reads beside it).
      extra_ids: Sentinel ids appended to the vocabulary (100 for T5).
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    vocab_path = Path(vocab_path)
    if not vocab_path.is_file():
        raise FileNotFoundError(f"Vocabulary file {vocab_path} does not exist.")
    if vocab_path.suffix == ".json":
        vocab_name = vocabularies.copy_vocabulary(vocab_path, ckpt_dir).name
    else:
        vocab_name = VOCAB_FILENAME
        target = ckpt_dir / VOCAB_FILENAME
        if not target.exists() or not os.path.samefile(vocab_path, target):
            model_bytes = vocab_path.read_bytes()
            file_io.write_atomically(target, lambda f: f.write(model_bytes), mode="wb")
    metadata = {
        "model_kind": registry.kind_of(config),
        "model": config.to_dict(),
        "vocabulary": {"path": vocab_name, "extra_ids": int(extra_ids)},
    }
    text = json.dumps(metadata, indent=2) + "\n"
    file_io.write_atomically(ckpt_dir / CONFIG_FILENAME, lambda f: f.write(text))


def read_model_metadata(ckpt_dir: str | os.PathLike) -> ModelMetadata:
    """Reads and validates `flan_jax_config.json` of a checkpoint directory."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise MissingCheckpointError(f"Checkpoint directory {ckpt_dir} does not exist.")
    config_path = ckpt_dir / CONFIG_FILENAME
    if not config_path.is_file():
        raise MissingCheckpointError(
            f"{config_path} is missing: {ckpt_dir} is not a flan_jax "
            "checkpoint directory (convert one with `flan-jax convert`)."
        )
    try:
        metadata = json.loads(config_path.read_text())
        model, vocab = metadata["model"], metadata["vocabulary"]
        vocab_name, extra_ids = vocab["path"], vocab["extra_ids"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{config_path}: malformed ({error!r}); expected "
            '{"model": {...}, "vocabulary": {"path": ..., "extra_ids": N}}.'
        ) from error
    # Checkpoints written before decoder-only models have no kind: they are T5.
    kind = metadata.get("model_kind", registry.DEFAULT_KIND)
    config = registry.config_from_dict(kind, model, source=f"{config_path} field 'model'")
    vocab_path = ckpt_dir / vocab_name
    if not vocab_path.is_file():
        raise MissingCheckpointError(
            f"{config_path} names vocabulary {vocab_name!r}, but {vocab_path} does not exist."
        )
    if not isinstance(extra_ids, int) or extra_ids < 0:
        raise CheckpointError(
            f"{config_path}: vocabulary.extra_ids must be a non-negative int, got {extra_ids!r}."
        )
    return ModelMetadata(config, vocab_path.absolute(), extra_ids)


def list_steps(ckpt_dir: str | os.PathLike) -> list[int]:
    """The complete steps of a checkpoint directory, ascending (half-written ones excluded)."""
    manager = ocp.CheckpointManager(
        Path(ckpt_dir).absolute(),
        options=ocp.CheckpointManagerOptions(create=False),
    )
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def find_step(ckpt_dir: str | os.PathLike, step: int | None) -> int:
    """``step``, or the latest step when None; raises if the directory does not hold it."""
    steps = list_steps(ckpt_dir)
    if not steps:
        raise MissingCheckpointError(f"{ckpt_dir} holds no checkpoint step directories.")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise MissingCheckpointError(
            f"{ckpt_dir} has no step {step}; available steps: {_format_steps(steps)}."
        )
    return step


def _format_steps(steps: Sequence[int]) -> str:
    return ", ".join(map(str, steps))


def restore_params(ckpt_dir: str | os.PathLike, *, step: int, target: Any) -> Params:
    """Reads ``<ckpt_dir>/<step>/params`` into ``target`` and nothing else of the step.

    Args:
        ckpt_dir: a checkpoint directory.
        step: an existing step.
        target: ``ShapeDtypeStruct`` tree (with shardings) to restore into.

    Raises:
        UnreadableCheckpointError: the step has no ``params`` item (the message lists the
            items it has) or the item cannot be read.
    """
    ckpt_dir = Path(ckpt_dir).absolute()
    check_step_items(ckpt_dir, step, [PARAMS_ITEM])
    # A checkpointer on the item directory alone: the step's other items (optimizer state,
    # data position) are not opened, so orbax has nothing to warn about.
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        return checkpointer.restore(
            ckpt_dir / str(step) / PARAMS_ITEM, args=ocp.args.StandardRestore(target)
        )
    except Exception as error:  # Storage errors have no common type (TensorStore, JSON, OS).
        quiet_orphaned_reads()
        raise UnreadableCheckpointError(
            ckpt_dir, step, f"item {PARAMS_ITEM}: {summarize_read_error(error)}"
        ) from error
    finally:
        checkpointer.close()


def _read_params_shapes(ckpt_dir: Path, step: int) -> Any:
    check_step_items(ckpt_dir, step, [PARAMS_ITEM])
    try:
        stored = ocp.StandardCheckpointHandler().metadata(ckpt_dir / str(step) / PARAMS_ITEM)
    except Exception as error:  # As in restore_params: any storage error.
        raise UnreadableCheckpointError(
            ckpt_dir, step, f"item {PARAMS_ITEM} metadata: {summarize_read_error(error)}"
        ) from error
    return getattr(stored, "tree", stored)


def save_model_checkpoint(
    ckpt_dir: str | os.PathLike,
    *,
    params: Params,
    config: ModelConfig,
    vocab_path: str | os.PathLike,
    extra_ids: int,
    step: int = 0,
) -> Path:
    """Saves weights, config and vocabulary as a self-contained checkpoint directory.

    Args:
      ckpt_dir: Destination directory.
      params: Parameter tree matching `config`.
      config: The model architecture.
      vocab_path: The vocabulary (SentencePiece model or tokenizer.json) to copy in.
      extra_ids: Sentinel ids appended to the vocabulary.
      step: Step number of the orbax step directory.

    Returns:
      The checkpoint directory.
    """
    ckpt_dir = Path(ckpt_dir)
    _check_params_match(params, config, source="params to save")
    write_model_metadata(ckpt_dir, config=config, vocab_path=vocab_path, extra_ids=extra_ids)
    manager = ocp.CheckpointManager(
        ckpt_dir.absolute(), item_handlers={PARAMS_ITEM: ocp.StandardCheckpointHandler()}
    )
    manager.save(
        step, args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardSave(params)}), force=True
    )
    manager.wait_until_finished()
    manager.close()
    return ckpt_dir


def _shape_mismatches(
    actual: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> list[str]:
    problems = [f"missing {name} {shape}" for name, shape in expected.items() if name not in actual]
    problems += [
        f"unexpected {name} {shape}" for name, shape in actual.items() if name not in expected
    ]
    problems += [
        f"{name}: stored {actual[name]}, config expects {shape}"
        for name, shape in expected.items()
        if name in actual and actual[name] != shape
    ]
    return problems


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in flat
    }


def _check_params_match(params: Any, config: ModelConfig, *, source: str) -> None:
    expected = registry.build_model(config).abstract_params()
    problems = _shape_mismatches(_flat_shapes(params), _flat_shapes(expected))
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise CheckpointError(f"{source}: the weights do not match the model config ({shown}).")


def load_model_checkpoint(
    ckpt_dir: str | os.PathLike, *, step: int | None = None
) -> LoadedCheckpoint:
    """Restores the parameters, config and vocabulary of a checkpoint directory.

    Args:
      ckpt_dir: A directory written by `save_model_checkpoint` or by the trainer.
      step: The step to restore; the latest when None.

    Returns:
      The restored checkpoint, parameters on the default device.

    Raises:
      MissingCheckpointError: no such directory, config, vocabulary or step.
      UnreadableCheckpointError: the step has no ``params`` item or it cannot be read.
      CheckpointError: the stored weights do not match the stored model config.
    """
    ckpt_dir = Path(ckpt_dir).absolute()
    metadata = read_model_metadata(ckpt_dir)
    step = find_step(ckpt_dir, step)
    _check_params_match(
        _read_params_shapes(ckpt_dir, step), metadata.config, source=f"{ckpt_dir}/{step}"
    )
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        registry.build_model(metadata.config).abstract_params(),
    )
    params = restore_params(ckpt_dir, step=step, target=target)
    vocabulary = vocabularies.get_vocabulary(str(metadata.vocab_path), metadata.extra_ids)
    return LoadedCheckpoint(params, metadata.config, vocabulary, int(step))
