"""Gradient accumulation over k microbatches equals one step on the whole batch."""

import dataclasses

import jax
import pytest

from flan_jax.testing import training
from flan_jax.training import losses

BASE = training.TinyRun(num_steps=2, batch_size=8)


@pytest.mark.parametrize(
    "loss",
    [
        losses.LossConfig(normalization="sum"),
        losses.LossConfig(normalization="average_per_sequence"),
    ],
    ids=["sum", "average_per_sequence"],
)
def test_microbatches_equal_one_batch(loss):
    devices = jax.devices()[:1]
    whole = training.run_tiny_training(dataclasses.replace(BASE, loss=loss), devices)
    accumulated = training.run_tiny_training(
        dataclasses.replace(BASE, loss=loss, num_microbatches=4), devices
    )
    training.assert_results_match(accumulated, whole, rtol=1e-5)
