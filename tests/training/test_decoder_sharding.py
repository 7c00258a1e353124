"""The decoder-only model trains the same sharded (data, fsdp, model on 8 fake CPU devices)
as on one device: 3 steps of `fit()` with dropout, prefix-LM, grouped-query heads."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from flan_jax.testing import training
from flan_jax.testing.models import write_test_sentencepiece

SCRIPT = str(pathlib.Path(__file__).with_name("run_sharded_decoder_training.py"))
# name: (mesh "DATA,FSDP,MODEL,RULES", devices); fit() builds its mesh over every device.
RUNS = {"single": ("1,1,1,1d", 1), "data2_fsdp2_model2": ("2,2,2,2d", 8)}


@pytest.mark.slow
def test_sharded_decoder_training_matches_single_device(tmp_path):
    vocab = write_test_sentencepiece(tmp_path)
    processes = [
        training.start_python_script(
            SCRIPT,
            ["--out", str(tmp_path), "--vocab", str(vocab), f"{name}={spec}"],
            num_cpu_devices=devices,
        )
        for name, (spec, devices) in RUNS.items()
    ]
    training.wait_for_scripts(processes, timeout=540)
    single, sharded = (dict(np.load(tmp_path / f"{name}.npz")) for name in RUNS)
    assert np.isfinite(single["loss"]) and single.keys() == sharded.keys()
    assert "param/layers_1/attention/key/kernel" in single
    np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-5)
    for key in single:
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-4, atol=1e-5, err_msg=key)
