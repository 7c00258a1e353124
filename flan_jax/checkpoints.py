"""The self-contained model checkpoint directory: weights, model config and vocabulary.

Layout:

    CKPT_DIR/
      flan_jax_config.json  {"model": T5Config.to_dict(),
                             "vocabulary": {"path": "spiece.model", "extra_ids": N}}
      spiece.model          the SentencePiece model, copied in
      <step>/               orbax CheckpointManager step directories; item "params" always,
                            trainer items ("opt_state", "data_state") when written by training

The trainer manages the same directory with more items, so any training run's directory can
be loaded here (only the "params" item is read).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
import seqio

from flan_jax.data import file_io
from flan_jax.models.config import T5Config
from flan_jax.models.t5 import T5Model, abstract_params

CONFIG_FILENAME = "flan_jax_config.json"
VOCAB_FILENAME = "spiece.model"
PARAMS_ITEM = "params"

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What `flan_jax_config.json` holds.

    Attributes:
      config: The model architecture.
      vocab_path: Absolute path of the SentencePiece model inside the checkpoint directory.
      extra_ids: Number of sentinel ids appended to the SentencePiece vocabulary.
    """

    config: T5Config
    vocab_path: Path
    extra_ids: int


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    """A restored model checkpoint.

    Attributes:
      params: The float32 parameter tree (plain arrays).
      config: The model architecture.
      vocabulary: The SentencePiece vocabulary stored with the weights.
      step: The step that was restored.
    """

    params: Params
    config: T5Config
    vocabulary: seqio.SentencePieceVocabulary
    step: int

    @property
    def model(self) -> T5Model:
        """The model interface of ``config`` (for decoding and scoring)."""
        return T5Model(self.config)


def write_model_metadata(
    ckpt_dir: str | os.PathLike, *, config: T5Config, vocab_path: str | os.PathLike, extra_ids: int
) -> None:
    """Writes `flan_jax_config.json` and copies the SentencePiece model into `ckpt_dir`.

    Args:
      ckpt_dir: The checkpoint directory (created if missing).
      config: The model architecture.
      vocab_path: A SentencePiece model file.
      extra_ids: Sentinel ids appended to the vocabulary (100 for T5).
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    vocab_path = Path(vocab_path)
    if not vocab_path.is_file():
        raise FileNotFoundError(f"SentencePiece model {vocab_path} does not exist.")
    target = ckpt_dir / VOCAB_FILENAME
    if not target.exists() or not os.path.samefile(vocab_path, target):
        model_bytes = vocab_path.read_bytes()
        file_io.write_atomically(target, lambda f: f.write(model_bytes), mode="wb")
    metadata = {
        "model": config.to_dict(),
        "vocabulary": {"path": VOCAB_FILENAME, "extra_ids": int(extra_ids)},
    }
    text = json.dumps(metadata, indent=2) + "\n"
    file_io.write_atomically(ckpt_dir / CONFIG_FILENAME, lambda f: f.write(text))


def read_model_metadata(ckpt_dir: str | os.PathLike) -> ModelMetadata:
    """Reads and validates `flan_jax_config.json` of a checkpoint directory."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"Checkpoint directory {ckpt_dir} does not exist.")
    config_path = ckpt_dir / CONFIG_FILENAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} is missing: {ckpt_dir} is not a flan_jax "
            "checkpoint directory (convert one with `flan-jax convert`)."
        )
    try:
        metadata = json.loads(config_path.read_text())
        model, vocab = metadata["model"], metadata["vocabulary"]
        vocab_name, extra_ids = vocab["path"], vocab["extra_ids"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{config_path}: malformed ({error!r}); expected "
            '{"model": {...}, "vocabulary": {"path": ..., "extra_ids": N}}.'
        ) from error
    config = T5Config.from_dict(model, source=f"{config_path} field 'model'")
    vocab_path = ckpt_dir / vocab_name
    if not vocab_path.is_file():
        raise FileNotFoundError(
            f"{config_path} names vocabulary {vocab_name!r}, but {vocab_path} does not exist."
        )
    if not isinstance(extra_ids, int) or extra_ids < 0:
        raise ValueError(
            f"{config_path}: vocabulary.extra_ids must be a non-negative int, got {extra_ids!r}."
        )
    return ModelMetadata(config, vocab_path.absolute(), extra_ids)


def _manager(ckpt_dir: Path, create: bool) -> ocp.CheckpointManager:
    # Registering the handler lets `item_metadata` describe "params" before restoring it;
    # trainer items in the same steps are left alone.
    return ocp.CheckpointManager(
        ckpt_dir.absolute(),
        options=ocp.CheckpointManagerOptions(create=create),
        item_handlers={PARAMS_ITEM: ocp.StandardCheckpointHandler()},
    )


def save_model_checkpoint(
    ckpt_dir: str | os.PathLike,
    *,
    params: Params,
    config: T5Config,
    vocab_path: str | os.PathLike,
    extra_ids: int,
    step: int = 0,
) -> Path:
    """Saves weights, config and vocabulary as a self-contained checkpoint directory.

    Args:
      ckpt_dir: Destination directory.
      params: Parameter tree matching `config`.
      config: The model architecture.
      vocab_path: The SentencePiece model to copy in.
      extra_ids: Sentinel ids appended to the vocabulary.
      step: Step number of the orbax step directory.

    Returns:
      The checkpoint directory.
    """
    ckpt_dir = Path(ckpt_dir)
    _check_params_match(params, config, source="params to save")
    write_model_metadata(ckpt_dir, config=config, vocab_path=vocab_path, extra_ids=extra_ids)
    manager = _manager(ckpt_dir, create=True)
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


def _check_params_match(params: Any, config: T5Config, *, source: str) -> None:
    problems = _shape_mismatches(_flat_shapes(params), _flat_shapes(abstract_params(config)))
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise ValueError(f"{source}: the weights do not match the model config ({shown}).")


def load_model_checkpoint(
    ckpt_dir: str | os.PathLike, *, step: int | None = None
) -> LoadedCheckpoint:
    """Restores the parameters, config and vocabulary of a checkpoint directory.

    Args:
      ckpt_dir: A directory written by `save_model_checkpoint` or by the trainer.
      step: The step to restore; the latest when None.

    Returns:
      The restored checkpoint, parameters on the default device.
    """
    ckpt_dir = Path(ckpt_dir)
    metadata = read_model_metadata(ckpt_dir)
    manager = _manager(ckpt_dir, create=False)
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"{ckpt_dir} holds no checkpoint step directories.")
    step = manager.latest_step() if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{ckpt_dir} has no step {step}; available steps: {steps}.")
    stored = manager.item_metadata(step)[PARAMS_ITEM]
    stored = getattr(stored, "tree", stored)
    _check_params_match(stored, metadata.config, source=f"{ckpt_dir}/{step}")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract_params(metadata.config),
    )
    restored = manager.restore(
        step, args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(target)})
    )
    manager.close()
    vocabulary = seqio.SentencePieceVocabulary(
        str(metadata.vocab_path), extra_ids=metadata.extra_ids
    )
    return LoadedCheckpoint(restored[PARAMS_ITEM], metadata.config, vocabulary, int(step))
