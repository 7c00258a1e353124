"""Training metrics: throughput, MFU, and writers (TensorBoard, JSONL, console progress).

The train step returns per-step scalars (loss, accuracy, learning rate, grad norm, real
target tokens, sequences). :class:`ThroughputMeter` turns them and the wall clock into
rates, and the model's ``train_flops_per_step``
(:class:`flan_jax.models.interface.Model`) gives the FLOP count an MFU needs:

    MFU = (FLOPs of one step / seconds per step) / (peak FLOP/s of all devices)

The FLOP count is of the matmuls the model executes on the *padded* batch (padding costs
as much as real tokens), so MFU measures hardware use while ``real_target_tokens_per_s``
measures useful work; packing raises the second without changing the first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import jax
import tqdm

from flan_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """Where and how often metrics are written.

    Attributes:
        log_period: write train metrics every ``log_period`` steps.
        peak_flops_per_device: peak FLOP/s of one device for the MFU estimate (for example
            197e12 for a TPU v4 chip in bf16, 989e12 for an H100 in bf16); ``None`` leaves
            MFU out.
        tensorboard: also write TensorBoard event files under ``MODEL_DIR/train``.
        progress_bar: show progress on process 0 (a tqdm bar on a terminal, a plain line
            per metrics write, at most one every 10 s, in a log).
    """

    log_period: int = 10
    peak_flops_per_device: float | None = None
    tensorboard: bool = True
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.log_period < 1:
            raise ConfigError(f"MetricsConfig.log_period must be >= 1; got {self.log_period}")
        if self.peak_flops_per_device is not None and self.peak_flops_per_device <= 0:
            raise ConfigError(
                "MetricsConfig.peak_flops_per_device must be > 0 or None; "
                f"got {self.peak_flops_per_device}"
            )


class ThroughputMeter:
    """Accumulates step metrics between two writes and turns them into rates.

    Args:
        flops_per_step: the model's ``train_flops_per_step``.
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
        assert self._jsonl is not None  # opened in __init__ whenever enabled
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


# The scalars the progress output shows, in order, with their short labels.
_PROGRESS_SCALARS = (
    ("train/loss", "loss"),
    ("train/z_loss", "z_loss"),
    ("train/accuracy", "acc"),
    ("train/real_target_tokens_per_s", "tok/s"),
)


def _format_progress_scalars(scalars: Mapping[str, float]) -> dict[str, str]:
    """``{"loss": "1.234", "acc": "0.56", "tok/s": "12,345"}`` for the scalars present."""
    shown = {}
    for name, label in _PROGRESS_SCALARS:
        if name in scalars:
            value = float(scalars[name])
            shown[label] = f"{value:,.0f}" if label == "tok/s" else f"{value:.4g}"
    return shown


def _format_duration(seconds: float) -> str:
    """``"45s"``, ``"2m10s"`` or ``"1h02m"``."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressBar:
    """Train-step progress on process 0: a tqdm bar on a terminal, plain lines in a log.

    A bar redraws itself with carriage returns, which turns a redirected log into megabytes
    of updates. So when `stream` is not a terminal, a metrics update (``update(scalars)``)
    prints one plain line instead, at most one per ``min_seconds_between_lines``, and
    ``close()`` prints the final step's line:

        train step 1200/4000 (30%)  loss 1.234  acc 0.56  tok/s 12,345  eta 2m10s

    Args:
        start: the step training resumes from (0 for a new run).
        total: the last step.
        enabled: False makes every call a no-op (so does a process index other than 0).
        stream: where progress goes; None is ``sys.stderr`` (tqdm's default).
        min_seconds_between_lines: the least time between two plain lines.
    """

    def __init__(
        self,
        *,
        start: int,
        total: int,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_seconds_between_lines: float = 10.0,
    ) -> None:
        self._enabled = enabled and jax.process_index() == 0
        self._stream = stream if stream is not None else sys.stderr
        self._bar = None
        self._start, self._step, self._total = start, start, total
        self._min_seconds = min_seconds_between_lines
        self._start_time = self._last_line_time = time.monotonic()
        self._last_line_step = start
        self._scalars: dict[str, str] = {}
        if self._enabled and self._stream.isatty():
            self._bar = tqdm.tqdm(
                initial=start,
                total=total,
                unit="step",
                desc="train",
                dynamic_ncols=True,
                file=self._stream,
            )

    def update(self, num_steps: int, scalars: Mapping[str, float] | None = None) -> None:
        """Advances by ``num_steps``; ``scalars`` (the latest train metrics) when written."""
        if not self._enabled:
            return
        self._step += num_steps
        if scalars:
            self._scalars = _format_progress_scalars(scalars)
        if self._bar is not None:
            self._bar.update(num_steps)
            if scalars:
                self._bar.set_postfix(self._scalars, refresh=False)
        elif scalars and time.monotonic() - self._last_line_time >= self._min_seconds:
            self._write_line()

    def close(self) -> None:
        """Closes the bar, or prints the final line if the last step has none yet."""
        if self._bar is not None:
            self._bar.close()
        elif self._enabled and self._step > self._last_line_step:
            self._write_line()

    def _write_line(self) -> None:
        now = time.monotonic()
        done = self._step - self._start
        eta = (self._total - self._step) * (now - self._start_time) / max(done, 1)
        percent = 100 * self._step // max(self._total, 1)
        parts = [f"train step {self._step}/{self._total} ({percent}%)"]
        parts += [f"{label} {value}" for label, value in self._scalars.items()]
        if self._step < self._total:
            parts.append(f"eta {_format_duration(eta)}")
        else:
            parts.append(f"took {_format_duration(now - self._start_time)}")
        self._stream.write("  ".join(parts) + "\n")
        self._stream.flush()
        self._last_line_time, self._last_line_step = now, self._step
