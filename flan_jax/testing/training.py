"""Helpers for the trainer tests: a tiny T5, synthetic batches and short sharded runs.

The same helpers run inside the tests and inside the subprocess scripts of
``tests/training`` that need their own ``XLA_FLAGS`` (fake CPU devices) or their own
``jax.distributed`` process, so every run of a comparison builds exactly the same model,
data and optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from flan_jax.models import t5
from flan_jax.models.config import T5Config
from flan_jax.training import adafactor, losses, partitioning, train_state, train_step


def make_tiny_t5_config(**overrides: Any) -> T5Config:
    """A 1+1-layer f32 T5 small enough for CPU tests, with shardable dims (all even)."""
    fields = dict(
        vocab_size=128,
        emb_dim=32,
        num_heads=4,
        head_dim=8,
        mlp_dim=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        dtype="float32",
    )
    fields.update(overrides)
    return T5Config(**fields)


def make_random_batch(
    seed: int, batch_size: int, encoder_length: int, decoder_length: int, vocab_size: int
) -> dict[str, np.ndarray]:
    """An unpacked feature-converter batch with random tokens and ragged padding.

    Every row has at least one real target token; targets end with EOS (1) and the
    decoder inputs are the targets shifted right behind a 0.
    """
    rng = np.random.default_rng(seed)
    enc = rng.integers(3, vocab_size, size=(batch_size, encoder_length), dtype=np.int32)
    dec = rng.integers(3, vocab_size, size=(batch_size, decoder_length), dtype=np.int32)
    enc_lens = rng.integers(1, encoder_length + 1, size=batch_size)
    dec_lens = rng.integers(1, decoder_length + 1, size=batch_size)
    enc[np.arange(encoder_length)[None, :] >= enc_lens[:, None]] = 0
    dec[np.arange(decoder_length)[None, :] >= dec_lens[:, None]] = 0
    dec[np.arange(batch_size), dec_lens - 1] = 1
    decoder_input = np.pad(dec[:, :-1], ((0, 0), (1, 0)))
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": decoder_input,
        "decoder_target_tokens": dec,
        "decoder_loss_weights": (dec > 0).astype(np.float32),
    }


def pack_two_examples(
    first: dict[str, np.ndarray], second: dict[str, np.ndarray], encoder_length: int, decoder_length: int
) -> dict[str, np.ndarray]:
    """Packs two single-example features (1-D, unpadded) into one row, by hand.

    ``first`` and ``second`` hold ``inputs`` and ``targets`` token lists; the result is
    a batch of one row with segment ids 1 and 2, per-segment positions, and padding.
    """

    def row(key, length, shift):
        tokens = np.zeros(length, np.int32)
        segments = np.zeros(length, np.int32)
        positions = np.zeros(length, np.int32)
        offset = 0
        for segment, example in enumerate((first, second), start=1):
            seq = np.asarray(example[key], np.int32)
            if shift:
                seq = np.concatenate([[0], seq[:-1]])
            tokens[offset : offset + len(seq)] = seq
            segments[offset : offset + len(seq)] = segment
            positions[offset : offset + len(seq)] = np.arange(len(seq))
            offset += len(seq)
        assert offset <= length, "examples do not fit the packed length"
        return tokens[None], segments[None], positions[None]

    enc, enc_seg, enc_pos = row("inputs", encoder_length, shift=False)
    dec, dec_seg, dec_pos = row("targets", decoder_length, shift=False)
    dec_in, _, _ = row("targets", decoder_length, shift=True)
    return {
        "encoder_input_tokens": enc,
        "encoder_segment_ids": enc_seg,
        "encoder_positions": enc_pos,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": dec,
        "decoder_segment_ids": dec_seg,
        "decoder_positions": dec_pos,
        "decoder_loss_weights": (dec > 0).astype(np.float32),
    }


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """A short training run of the tiny T5, identical wherever it is executed.

    Attributes:
        mesh: mesh sizes.
        rules: logical-rules preset.
        num_steps: train steps.
        batch_size: global batch rows.
        encoder_length, decoder_length: feature lengths.
        num_microbatches: gradient accumulation.
        loss: loss options.
        adafactor_config: optimizer options; the low ``min_dim_size_to_factor`` makes the
            tiny model's matrices factored, so factored statistics get sharded too.
        learning_rate: constant learning rate.
        model_overrides: fields of the tiny ``T5Config`` to change.
        seed: parameter and data seed.
        constrain_activations: see ``TrainStepConfig``.
    """

    mesh: partitioning.MeshConfig = partitioning.MeshConfig()
    rules: str = "1d"
    num_steps: int = 5
    batch_size: int = 8
    encoder_length: int = 16
    decoder_length: int = 8
    num_microbatches: int = 1
    loss: losses.LossConfig = losses.LossConfig()
    adafactor_config: adafactor.AdafactorConfig = adafactor.AdafactorConfig(
        min_dim_size_to_factor=16
    )
    learning_rate: float = 1e-2
    model_overrides: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    constrain_activations: bool = False

    def make_batch(self, step: int) -> dict[str, np.ndarray]:
        """The global batch of ``step``."""
        config = make_tiny_t5_config(**dict(self.model_overrides))
        return make_random_batch(
            self.seed * 1000 + step,
            self.batch_size,
            self.encoder_length,
            self.decoder_length,
            config.vocab_size,
        )


def run_tiny_training(run: TinyRun, devices: list[jax.Device] | None = None) -> dict[str, np.ndarray]:
    """Trains the tiny T5 for ``run.num_steps`` steps; every process gets the full result.

    Returns:
        ``{"loss": [steps], "grad_norm": [steps], "param/<path>": array, ...}`` as numpy.
    """
    config = make_tiny_t5_config(**dict(run.model_overrides))
    model = t5.EncoderDecoder(config)
    mesh = partitioning.make_mesh(run.mesh, devices)
    rules = partitioning.get_logical_axis_rules(run.rules)
    param_axes = t5.param_logical_axes(config)
    optimizer = adafactor.make_adafactor(
        run.learning_rate, param_axes=param_axes, config=run.adafactor_config
    )
    abstract = t5.abstract_params(config)
    shardings = train_state.get_train_state_shardings(abstract, param_axes, optimizer, mesh, rules)
    host_params = jax.tree.map(np.asarray, t5.init_params(config, jax.random.key(run.seed)))
    state = train_state.init_sharded_train_state(host_params, optimizer, shardings)
    step = train_step.make_train_step(
        forward=train_step.make_encoder_decoder_forward(model),
        output_kernel_fn=t5.output_kernel,
        optimizer=optimizer,
        loss_config=run.loss,
        mesh=mesh,
        rules=rules,
        state_shardings=shardings,
        config=train_step.TrainStepConfig(
            num_microbatches=run.num_microbatches,
            constrain_activations=run.constrain_activations,
        ),
    )
    rows = partitioning.get_local_batch_rows(mesh, run.batch_size, rules)
    history: dict[str, list[float]] = {"loss": [], "grad_norm": []}
    for i in range(run.num_steps):
        local = {k: v[rows] for k, v in run.make_batch(i).items()}
        state, metrics = step(state, partitioning.make_global_batch(local, mesh, rules))
        for name in history:
            history[name].append(float(metrics[name]))
    params = multihost_utils.process_allgather(state.params, tiled=True)
    flat = {
        "param/" + jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    return {**{k: np.asarray(v) for k, v in history.items()}, **flat}
