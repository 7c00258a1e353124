"""Helpers for the trainer tests: a tiny T5, synthetic batches and short sharded runs.

The same helpers run inside the tests and inside the subprocess scripts of
``tests/training`` that need their own ``XLA_FLAGS`` (fake CPU devices) or their own
``jax.distributed`` process, so every run of a comparison builds exactly the same model,
data and optimizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from flan_jax.models import t5
from flan_jax.testing.models import make_tiny_t5_config
from flan_jax.training import adafactor, losses, partitioning, train_state, train_step


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


def pack_examples(
    examples: Sequence[Mapping[str, Sequence[int]]], encoder_length: int, decoder_length: int
) -> dict[str, np.ndarray]:
    """Packs examples into one row by hand, as a feature converter with packing would.

    Args:
        examples: each with ``inputs`` and ``targets`` token lists (EOS included).
        encoder_length, decoder_length: the row lengths.

    Returns:
        A one-row batch with segment ids ``1, 2, ...``, per-segment positions, decoder
        inputs shifted right within each segment, and zero padding.

    Example: targets ``[7, 1]`` and ``[9, 4, 1]`` in a row of 6 give
    ``decoder_target_tokens [[7, 1, 9, 4, 1, 0]]``, ``decoder_input_tokens
    [[0, 7, 0, 9, 4, 0]]``, ``decoder_segment_ids [[1, 1, 2, 2, 2, 0]]`` and
    ``decoder_positions [[0, 1, 0, 1, 2, 0]]``.
    """

    def row(key, length, shift):
        tokens, segments, positions = (np.zeros(length, np.int32) for _ in range(3))
        offset = 0
        for segment, example in enumerate(examples, start=1):
            seq = np.asarray(example[key], np.int32)
            if shift:
                seq = np.concatenate([[0], seq[:-1]]).astype(np.int32)
            end = offset + len(seq)
            if end > length:
                raise ValueError(f"the examples' {key} need {end} positions; the row has {length}")
            tokens[offset:end], segments[offset:end] = seq, segment
            positions[offset:end] = np.arange(len(seq))
            offset = end
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
    constrain_activations: bool = True

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


@dataclasses.dataclass
class TinyTrainer:
    """A built tiny run: its initial state, compiled step, mesh and rules."""

    state: train_state.TrainState
    step: train_step.TrainStep
    mesh: jax.sharding.Mesh
    rules: partitioning.LogicalRules

    def global_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a global numpy batch, assembled into global arrays."""
        num_rows = len(next(iter(batch.values())))
        rows = partitioning.get_local_batch_rows(self.mesh, num_rows, self.rules)
        local = {k: v[rows] for k, v in batch.items()}
        return partitioning.make_global_batch(local, self.mesh, self.rules)


def make_tiny_trainer(
    run: TinyRun,
    devices: list[jax.Device] | None = None,
    step_config: train_step.TrainStepConfig | None = None,
) -> TinyTrainer:
    """Builds the tiny T5, its sharded Adafactor state and the train step of ``run``."""
    config = make_tiny_t5_config(**dict(run.model_overrides))
    mesh = partitioning.make_mesh(run.mesh, devices)
    rules = partitioning.get_logical_axis_rules(run.rules)
    param_axes = t5.param_logical_axes(config)
    optimizer = adafactor.make_adafactor(
        run.learning_rate, param_axes=param_axes, config=run.adafactor_config
    )
    abstract = t5.abstract_params(config)
    shardings = train_state.get_train_state_shardings(abstract, param_axes, optimizer, mesh, rules)
    host_params = jax.tree.map(np.asarray, t5.init_params(config, jax.random.key(run.seed)))
    step = train_step.make_train_step(
        model=t5.T5Model(config),
        optimizer=optimizer,
        loss_config=run.loss,
        mesh=mesh,
        rules=rules,
        state_shardings=shardings,
        config=step_config
        or train_step.TrainStepConfig(
            num_microbatches=run.num_microbatches,
            constrain_activations=run.constrain_activations,
        ),
    )
    state = train_state.init_sharded_train_state(host_params, optimizer, shardings)
    return TinyTrainer(state, step, mesh, rules)


def run_tiny_training(
    run: TinyRun, devices: list[jax.Device] | None = None
) -> dict[str, np.ndarray]:
    """Trains the tiny T5 for ``run.num_steps`` steps; every process gets the full result.

    Returns:
        ``{"loss": [steps], "grad_norm": [steps], "param/<path>": array, ...}`` as numpy.
    """
    trainer = make_tiny_trainer(run, devices)
    state = trainer.state
    history: dict[str, list[float]] = {"loss": [], "grad_norm": []}
    for i in range(run.num_steps):
        state, metrics = trainer.step(state, trainer.global_batch(run.make_batch(i)))
        for name in history:
            history[name].append(float(metrics[name]))
    params = multihost_utils.process_allgather(state.params, tiled=True)
    flat = {
        "param/" + jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    return {**{k: np.asarray(v) for k, v in history.items()}, **flat}


def assert_results_match(
    result: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], rtol: float = 1e-5
) -> None:
    """Asserts two :func:`run_tiny_training` results agree to ``rtol``, array by array.

    Each array is compared elementwise with ``rtol`` and an absolute floor of ``rtol``
    times the array's largest magnitude: "relative" to the array's own scale, so that
    entries that happen to be near zero are not held to an impossible bound.
    """
    assert sorted(result) == sorted(reference), "the runs have different parameters"
    for name, expected in reference.items():
        np.testing.assert_allclose(
            result[name],
            expected,
            rtol=rtol,
            atol=rtol * float(np.max(np.abs(expected))),
            err_msg=name,
        )


def find_free_port() -> int:
    """A TCP port on localhost that was free a moment ago (for a jax coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_python_script(
    script: str, args: Sequence[str], *, num_cpu_devices: int
) -> subprocess.Popen[str]:
    """Starts ``python script args...`` with ``num_cpu_devices`` fake CPU devices.

    JAX reads ``XLA_FLAGS`` once at import, so each device count needs its own process.
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_cpu_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.Popen(
        [sys.executable, script, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_scripts(processes: Sequence[subprocess.Popen[str]], timeout: float) -> None:
    """Waits for all processes; kills them all and fails on a timeout or a non-zero exit."""
    deadline = time.monotonic() + timeout
    try:
        outputs = [
            p.communicate(timeout=max(deadline - time.monotonic(), 1.0))[0] for p in processes
        ]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        for p in processes:
            p.communicate()
        raise AssertionError(f"subprocesses did not finish within {timeout} s") from None
    for p, out in zip(processes, outputs):
        if p.returncode != 0:
            raise AssertionError(f"{p.args!r} exited with {p.returncode}:\n{out[-4000:]}")


_READ_METHODS = ("__array__", "item", "tolist")


@contextlib.contextmanager
def forbid_device_to_host_reads():
    """Fails any read of a ``jax.Array``'s value on the host inside the block.

    ``jax.transfer_guard_device_to_host("disallow")`` catches such reads on accelerators;
    on the CPU backend device memory is host memory and the guard stays silent, so the
    array's Python read paths (``int``/``float``/``bool``, ``.item()``, ``.tolist()``,
    ``__array__``, ``jax.device_get``) are made to raise as well. Reads through numpy's
    buffer protocol (``np.asarray`` of a CPU array) are not caught.
    """
    array_type = type(jax.numpy.zeros(()))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("device-to-host read inside forbid_device_to_host_reads()")

    saved = {name: array_type.__dict__[name] for name in ("_value",) + _READ_METHODS}
    try:
        array_type._value = property(refuse)
        for name in _READ_METHODS:
            setattr(array_type, name, refuse)
        with jax.transfer_guard_device_to_host("disallow"):
            yield
    finally:
        for name, value in saved.items():
            setattr(array_type, name, value)


class SyntheticBatches:
    """A :class:`flan_jax.data.batch_source.BatchSource` over ``run.make_batch(step)``.

    Args:
        run: the tiny run whose batches are served (global batches; one process).
        overrides: ``{batch index: batch}`` served instead of the synthetic batch (e.g. a
            batch with a NaN weight).
    """

    def __init__(
        self, run: TinyRun, overrides: Mapping[int, Mapping[str, np.ndarray]] | None = None
    ):
        self._run = run
        self._overrides = dict(overrides or {})
        self._served = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._overrides.get(self._served) or self._run.make_batch(self._served)
        self._served += 1
        return dict(batch)

    def get_state(self) -> dict[str, Any]:
        return {"served": self._served}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._served = int(state["served"])

    def log_scalars(self) -> dict[str, float]:
        return {}
