"""Subprocess entry point: fits the tiny decoder-only model on several meshes with `fit()`.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (JAX reads it at import).
Writes one ``<name>.npz`` per run into ``--out``: the last step's loss and the final
parameters.

Usage: python run_sharded_decoder_training.py --out DIR --vocab FILE NAME=DATA,FSDP,MODEL,RULES ...
"""

import argparse
import pathlib

import jax
import numpy as np

from flan_jax.data import vocabularies
from flan_jax.models import decoder
from flan_jax.models.config import DecoderConfig
from flan_jax.training import checkpointing, metrics, partitioning, trainer

BATCH, LENGTH = 8, 16
CONFIG = DecoderConfig(
    vocab_size=128,
    emb_dim=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=48,
    num_layers=2,
    rope_scaling_factor=4.0,
    rope_original_max_length=8,
    prefix_lm=True,
    dropout_rate=0.1,
    dtype="float32",
)


def make_batch(step: int) -> dict[str, np.ndarray]:
    """Two packed examples per row (lengths 9 and 5, 2 padding), prefix of 4 and 2 tokens."""
    rng = np.random.default_rng(step)
    segments = np.array([1] * 9 + [2] * 5 + [0] * 2)
    positions = np.array(list(range(9)) + list(range(5)) + [0, 0])
    prefix = np.array([1] * 4 + [0] * 5 + [1] * 2 + [0] * 3 + [0, 0])
    targets = rng.integers(0, CONFIG.vocab_size, (BATCH, LENGTH)) * (segments > 0)
    inputs = np.roll(targets, 1, axis=1) * (positions > 0)  # start token 0 per segment
    return {
        "decoder_input_tokens": inputs.astype(np.int32),
        "decoder_target_tokens": targets.astype(np.int32),
        "decoder_loss_weights": np.tile((prefix == 0) & (segments > 0), (BATCH, 1)).astype(
            np.float32
        ),
        "decoder_segment_ids": np.tile(segments, (BATCH, 1)).astype(np.int32),
        "decoder_positions": np.tile(positions, (BATCH, 1)).astype(np.int32),
        "decoder_causal_attention": np.tile(prefix, (BATCH, 1)).astype(np.int32),
    }


class StepBatches:
    """The batch of each step, the same on every mesh."""

    def __init__(self) -> None:
        self.step = 0

    def __next__(self) -> dict[str, np.ndarray]:
        self.step += 1
        return make_batch(self.step)

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state) -> None:
        self.step = state["step"]

    def log_scalars(self) -> dict:
        return {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    vocabulary = vocabularies.get_vocabulary(args.vocab)
    for spec in args.runs:
        name, sizes = spec.split("=")
        data, fsdp, model, rules = sizes.split(",")
        result = trainer.fit(
            model=decoder.DecoderModel(CONFIG),
            batch_source=StepBatches(),
            vocabulary=vocabulary,
            model_dir=str(pathlib.Path(args.out) / name),
            train_steps=args.steps,
            batch_size=BATCH,
            feature_lengths={"inputs": LENGTH // 2, "targets": LENGTH // 2},
            learning_rate=1e-2,
            partitioning_config=trainer.PartitioningConfig(
                mesh=partitioning.MeshConfig(int(data), int(fsdp), int(model)), rules=rules
            ),
            checkpoint_config=checkpointing.CheckpointConfig(async_save=False),
            metrics_config=metrics.MetricsConfig(
                log_period=1, tensorboard=False, progress_bar=False
            ),
        )
        flat = jax.tree_util.tree_flatten_with_path(result.state.params)[0]
        params = {
            "param/" + "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
            for path, leaf in flat
        }
        loss = np.asarray(result.train_metrics["train/loss"])
        np.savez(pathlib.Path(args.out) / f"{name}.npz", loss=loss, **params)


if __name__ == "__main__":
    main()
