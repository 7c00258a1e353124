"""Subprocess entry point: trains the tiny T5 on several meshes of this process's devices.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (JAX reads it at import, so
the test launches this script in a fresh interpreter). Writes one ``<name>.npz`` per run
into ``--out``: the per-step losses and gradient norms and the final parameters.

Usage: python run_sharded_training.py --out DIR NAME=DATA,FSDP,MODEL,RULES[,K[,DROPOUT]] ...
(K: number of microbatches, default 1; DROPOUT: the model's dropout rate, default 0).
"""

import argparse
import dataclasses
import pathlib

import jax
import numpy as np

from flan_jax.testing import training
from flan_jax.training import partitioning


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    base = training.TinyRun(num_steps=args.steps)
    for spec in args.runs:
        name, sizes = spec.split("=")
        data, fsdp, model, rules, *optional = sizes.split(",")
        microbatches, dropout = (optional + ["1", "0"][len(optional) :])[:2]
        mesh = partitioning.MeshConfig(int(data), int(fsdp), int(model))
        num_devices = int(data) * int(fsdp) * int(model)
        run = dataclasses.replace(
            base,
            mesh=mesh,
            rules=rules,
            num_microbatches=int(microbatches),
            model_overrides=(("dropout_rate", float(dropout)),),
        )
        result = training.run_tiny_training(run, devices=jax.devices()[:num_devices])
        np.savez(pathlib.Path(args.out) / f"{name}.npz", **result)


if __name__ == "__main__":
    main()
