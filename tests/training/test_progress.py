"""Progress output: plain bounded lines in a log, a tqdm bar on a terminal."""

import io
import re

import pytest

from flan_jax.training import metrics


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _scalars(step: int) -> dict[str, float]:
    return {
        "train/loss": 10.0 / step,
        "train/z_loss": 1e-4,
        "train/accuracy": step / 1e4,
        "train/real_target_tokens_per_s": 12345.6,
        "train/learning_rate": 1e-3,
    }


def _run(stream, *, start=0, total=1000, log_period=10, **kwargs) -> str:
    # The trainer's calling pattern: one call per stretch of steps up to the next logging
    # step, with the scalars logged there (the last stretch may end between logging steps).
    progress = metrics.ProgressBar(start=start, total=total, stream=stream, **kwargs)
    step = start
    while step < total:
        target = min(total, (step // log_period + 1) * log_period)
        progress.update(target - step, _scalars(target) if target % log_period == 0 else None)
        step = target
    progress.close()
    return stream.getvalue()


def test_log_gets_one_plain_line_per_metrics_write_at_most():
    output = _run(io.StringIO(), total=1005, min_seconds_between_lines=0.0)
    assert "\r" not in output
    lines = output.splitlines()
    assert len(lines) == 100 + 1  # steps 10, 20, ..., 1000, and the final step 1005
    assert re.fullmatch(
        r"train step 10/1005 \(0%\)  loss 1  z_loss 0\.0001  acc 0\.001  "
        r"tok/s 12,346  eta \d+s",
        lines[0],
    ), lines[0]
    assert lines[-2].startswith("train step 1000/1005 (99%)  loss 0.01  ")
    assert re.fullmatch(r"train step 1005/1005 \(100%\)  loss 0\.01 .* took \d+s", lines[-1])


def test_log_lines_are_throttled_in_time():
    # A fast run prints only its final line when no interval has passed.
    output = _run(io.StringIO(), start=200, total=1000, min_seconds_between_lines=3600.0)
    assert output.splitlines() == [
        "train step 1000/1000 (100%)  loss 0.01  z_loss 0.0001  acc 0.1  tok/s 12,346  took 0s"
    ]


def test_terminal_gets_a_tqdm_bar_with_the_metrics():
    output = _run(_Terminal(), total=50)
    assert "\r" in output and "50/50" in output
    assert "loss=0.2" in output and "tok/s=12,346" in output


@pytest.mark.parametrize("stream", [io.StringIO(), _Terminal()])
def test_disabled_progress_writes_nothing(stream):
    assert _run(stream, total=20, enabled=False) == ""
