"""Subprocess entry point: one process of a multi-process (jax.distributed) tiny training run.

Each process is started with its own ``XLA_FLAGS=--xla_force_host_platform_device_count``
and joins the others through ``jax.distributed`` with gloo CPU collectives; every process
feeds only its own batch rows. Process 0 writes ``result.npz`` into ``--out`` (the same
format as run_sharded_training.py).

Usage: python run_multiprocess_training.py --coordinator HOST:PORT --num_processes N
       --process_id I --out DIR --mesh DATA,FSDP,MODEL,RULES --steps S
"""

import argparse
import pathlib

from flan_jax.training import partitioning


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mesh", required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    # Before anything else touches the JAX backend.
    partitioning.initialize_distributed(args.coordinator, args.num_processes, args.process_id)

    import jax
    import numpy as np

    from flan_jax.testing import training

    data, fsdp, model, rules = args.mesh.split(",")
    run = training.TinyRun(
        mesh=partitioning.MeshConfig(int(data), int(fsdp), int(model)),
        rules=rules,
        num_steps=args.steps,
    )
    if jax.process_count() != args.num_processes:
        raise RuntimeError(f"expected {args.num_processes} processes, got {jax.process_count()}")
    result = training.run_tiny_training(run)
    if jax.process_index() == 0:
        np.savez(pathlib.Path(args.out) / "result.npz", **result)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
