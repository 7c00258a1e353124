"""Training metrics: throughput, MFU, and writers (TensorBoard, JSONL, console progress bar).

The train step returns per-step scalars (loss, accuracy, learning rate, grad norm, real
target tokens, sequences). :class:`ThroughputMeter` turns them and the wall clock into
rates, and :func:`estimate_train_flops_per_step` gives the FLOP count an MFU needs:

    MFU = (FLOPs of one step / seconds per step) / (peak FLOP/s of all devices)

The FLOP count is of the matmuls the model executes on the *padded* batch (padding costs
as much as real tokens), so MFU measures hardware use while ``real_target_tokens_per_s``
measures useful work; packing raises the second without changing the first.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import tqdm

from flan_jax.models.config import T5Config


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """Where and how often metrics are written.

    Attributes:
        log_period: write train metrics every ``log_period`` steps.
        peak_flops_per_device: peak FLOP/s of one device for the MFU estimate (for example
            197e12 for a TPU v4 chip in bf16, 989e12 for an H100 in bf16); ``None`` leaves
            MFU out.
        tensorboard: also write TensorBoard event files under ``MODEL_DIR/train``.
        progress_bar: show a tqdm bar on process 0.
    """

    log_period: int = 10
    peak_flops_per_device: float | None = None
    tensorboard: bool = True
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.log_period < 1:
            raise ValueError(f"MetricsConfig.log_period must be >= 1; got {self.log_period}")
        if self.peak_flops_per_device is not None and self.peak_flops_per_device <= 0:
            raise ValueError(
                "MetricsConfig.peak_flops_per_device must be > 0 or None; "
                f"got {self.peak_flops_per_device}"
            )


def _forward_flops_per_token(config: T5Config, own_length: int, cross_length: int, *,
                             decoder: bool) -> float:
    """Forward matmul FLOPs of one token through one layer stack (2 FLOPs per MAC)."""
    d, inner = config.emb_dim, config.num_heads * config.head_dim
    mlp_in = 2 if config.feed_forward == "gated-gelu" else 1
    attention_proj = 4 * d * inner  # q, k, v, o
    attention_scores = 2 * own_length * inner  # q.k and probs.v
    mlp = (mlp_in + 1) * d * config.mlp_dim
    per_layer = attention_proj + attention_scores + mlp
    if decoder:
        per_layer += 4 * d * inner + 2 * cross_length * inner
        layers = config.num_decoder_layers
        return 2.0 * (layers * per_layer + d * config.vocab_size)
    return 2.0 * config.num_encoder_layers * per_layer


def estimate_train_flops_per_step(
    config: T5Config, *, batch_size: int, inputs_length: int, targets_length: int
) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3x forward).

    Args:
        config: the model.
        batch_size: rows per step (global).
        inputs_length: encoder length per row.
        targets_length: decoder length per row.
    """
    encoder = _forward_flops_per_token(config, inputs_length, 0, decoder=False)
    decoder = _forward_flops_per_token(config, targets_length, inputs_length, decoder=True)
    forward = batch_size * (inputs_length * encoder + targets_length * decoder)
    return 3.0 * forward


class ThroughputMeter:
    """Accumulates step metrics between two writes and turns them into rates.

    Args:
        flops_per_step: from :func:`estimate_train_flops_per_step`.
        peak_flops: peak FLOP/s of all devices together, or None (no MFU).
    """

    def __init__(self, flops_per_step: float, peak_flops: float | None) -> None:
        self._flops_per_step = flops_per_step
        self._peak_flops = peak_flops
        self.reset()

    def reset(self) -> None:
        """Starts a new measurement window now."""
        self._start = time.perf_counter()
        self._steps = 0
        self._tokens = 0.0
        self._sequences = 0.0
        self._sums: dict[str, float] = {}

    def update(self, metrics: Mapping[str, Any]) -> None:
        """Adds one step's scalar metrics (device arrays are fetched here)."""
        self._steps += 1
        self._tokens += float(metrics["num_real_target_tokens"])
        self._sequences += float(metrics["num_sequences"])
        for name in ("loss", "z_loss", "accuracy", "grad_norm"):
            if name in metrics:
                self._sums[name] = self._sums.get(name, 0.0) + float(metrics[name])
        self._last_lr = float(metrics["learning_rate"])

    def summarize(self) -> dict[str, float]:
        """Means and rates over the window; resets the window."""
        seconds = max(time.perf_counter() - self._start, 1e-9)
        steps = max(self._steps, 1)
        out = {f"train/{k}": v / steps for k, v in self._sums.items()}
        out["train/learning_rate"] = self._last_lr
        out["train/seconds_per_step"] = seconds / steps
        out["train/real_target_tokens_per_s"] = self._tokens / seconds
        out["train/sequences_per_s"] = self._sequences / seconds
        if self._peak_flops:
            out["train/mfu"] = self._flops_per_step * steps / seconds / self._peak_flops
        self.reset()
        return out


class MetricsWriter:
    """Writes scalars to ``MODEL_DIR/metrics.jsonl`` and TensorBoard, on process 0 only.

    Every JSONL line is ``{"step": N, "name": value, ...}``; lines are appended and flushed
    as written, so a crash loses at most the line being written.
    """

    def __init__(self, model_dir: str | os.PathLike, *, tensorboard: bool = True) -> None:
        self._enabled = jax.process_index() == 0
        self._jsonl = None
        self._summary = None
        if not self._enabled:
            return
        os.makedirs(model_dir, exist_ok=True)
        self._jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a")
        if tensorboard:
            from clu import metric_writers  # Imported here: it pulls in TensorFlow.

            self._summary = metric_writers.SummaryWriter(os.path.join(model_dir, "tensorboard"))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Appends one JSONL line and one TensorBoard event per scalar."""
        if not self._enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()
        if self._summary is not None:
            self._summary.write_scalars(int(step), clean)
            self._summary.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._summary is not None:
            self._summary.close()


class ProgressBar:
    """A tqdm bar over the train steps on process 0 (a no-op elsewhere or when disabled)."""

    def __init__(self, *, start: int, total: int, enabled: bool = True) -> None:
        self._bar = None
        if enabled and jax.process_index() == 0:
            self._bar = tqdm.tqdm(initial=start, total=total, unit="step", desc="train",
                                  dynamic_ncols=True)

    def update(self, num_steps: int, scalars: Mapping[str, float] | None = None) -> None:
        """Advances by ``num_steps``; shows ``scalars`` when given (a logging step)."""
        if self._bar is None:
            return
        self._bar.update(num_steps)
        if scalars:
            shown = {k.split("/")[-1]: v for k, v in scalars.items()
                     if k.endswith(("loss", "accuracy", "real_target_tokens_per_s"))}
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

