"""Subprocess entry point: the fused losses with the vocabulary sharded, against one device.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (JAX reads it at import, so
the test launches this script in a fresh interpreter). For every mesh named on the command
line it writes ``<name>.npz`` into ``--out`` holding, per loss case, the per-token outputs and
the gradients w.r.t. hidden and kernel of the sharded computation (``<case>/sharded/...``)
and of the unsharded one on a single device (``<case>/reference/...``), plus the result
shapes of every all-gather in the compiled loss+grad HLO, with and without vocabulary
sharding (``hlo/<case>/sharded``, ``hlo/<case>/unsharded``), and whether the tiny T5's train
step on the mesh (and on a data-only mesh) compiles the loss per vocabulary shard.

Usage: python run_sharded_fused_loss.py --out DIR NAME=DATA,FSDP,MODEL ...
"""

import argparse
import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from flan_jax.kernels import fused_loss
from flan_jax.testing import kernels as ref
from flan_jax.testing import training
from flan_jax.training import partitioning

# VOCAB is no other dimension of the problem, so an all-gathered kernel is recognisable in
# the HLO by a dimension of that size.
EMBED = 24
VOCAB = 512
BATCH, LENGTH, TOP_K = 4, 5, 6
CHUNK_SIZE = 48  # divides neither 512 nor the 256/128 columns of one shard: ragged chunks
HLO_CASES = ("cross_entropy", "sparse_kl_residual")
_ALL_GATHER = re.compile(r"=\s*(.*?)\s+all-gather(?:-start)?\(")
_SHAPE = re.compile(r"\w+\[([\d,]*)\]")


def _make_problem(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (BATCH, LENGTH)
    hidden = (rng.normal(size=shape + (EMBED,)) * 0.5).astype(np.float32)
    kernel = (rng.normal(size=(EMBED, VOCAB)) * 0.5).astype(np.float32)
    targets = rng.integers(0, VOCAB, size=shape)
    argmax = (hidden @ kernel).argmax(-1)
    targets = np.where(rng.random(shape) < 0.5, argmax, targets).astype(np.int32)
    teacher_ids, teacher_logprobs = ref.random_top_k(rng, shape, VOCAB, TOP_K, pad_fraction=0.3)
    return {
        "hidden": hidden,
        "kernel": kernel,
        "targets": targets,
        "teacher_ids": teacher_ids,
        "teacher_logprobs": teacher_logprobs,
        "teacher_logits": rng.normal(size=shape + (VOCAB,)).astype(np.float32),
        "mix": rng.normal(size=shape).astype(np.float32),  # mixes per-token losses
        # Small integers make every logit an exact integer whatever the summation order, and
        # the kernel's second half repeats its first, so each largest logit ties across shards.
        "int_hidden": rng.integers(-2, 3, size=shape + (EMBED,)).astype(np.float32),
        "int_kernel": np.tile(rng.integers(-2, 3, size=(EMBED, VOCAB // 2)), 2).astype(np.float32),
    }


def _loss_cases(p: dict[str, np.ndarray]):
    """name -> (fn(hidden, kernel, vocab_sharding) -> dict of per-token outputs, int data?)."""
    chunked = {"chunk_size": CHUNK_SIZE}

    def cross_entropy(h, w, vs, targets=p["targets"]):
        out = fused_loss.cross_entropy_from_hidden(
            h, w, targets, z_loss=1e-2, label_smoothing=0.1, vocab_sharding=vs, **chunked
        )
        return {"loss": out.loss, "z_loss": out.z_loss, "correct": out.correct}

    def sparse_kl(h, w, vs, missing_mass, temperature):
        return {
            "loss": fused_loss.sparse_kl_from_hidden(
                h,
                w,
                p["teacher_ids"],
                p["teacher_logprobs"],
                missing_mass=missing_mass,
                temperature=temperature,
                vocab_sharding=vs,
                **chunked,
            )
        }

    def dense_kl(h, w, vs):
        return {
            "loss": fused_loss.dense_kl_from_hidden(
                h, w, p["teacher_logits"], temperature=0.7, vocab_sharding=vs, **chunked
            )
        }

    def token_logprobs(h, w, vs):
        out = fused_loss.token_logprobs_from_hidden(
            h, w, p["teacher_ids"], temperature=0.7, vocab_sharding=vs, **chunked
        )
        return {"loss": out.sum(-1)}

    int_targets = (p["int_hidden"] @ p["int_kernel"]).argmax(-1).astype(np.int32)
    return {
        "cross_entropy": (cross_entropy, False),
        "sparse_kl_drop": (
            functools.partial(sparse_kl, missing_mass="drop", temperature=1.0),
            False,
        ),
        "sparse_kl_renormalize": (
            functools.partial(sparse_kl, missing_mass="renormalize", temperature=0.7),
            False,
        ),
        "sparse_kl_residual": (
            functools.partial(sparse_kl, missing_mass="residual", temperature=0.7),
            False,
        ),
        "dense_kl": (dense_kl, False),
        "token_logprobs": (token_logprobs, False),
        "argmax_ties": (functools.partial(cross_entropy, targets=int_targets), True),
    }


def _loss_and_grads(case_fn, mix):
    """jit(value_and_grad) of sum(mix * loss) w.r.t. (hidden, kernel), with the outputs."""

    def total(h, w, vs):
        out = case_fn(h, w, vs)
        return jnp.sum(out["loss"] * mix), out

    grad_fn = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)
    return jax.jit(grad_fn, static_argnums=2)


def _all_gather_shapes(hlo_text: str) -> list[str]:
    """The result shapes (e.g. ``"24,512"``) of every all-gather in compiled HLO text."""
    return [
        dims for match in _ALL_GATHER.finditer(hlo_text) for dims in _SHAPE.findall(match.group(1))
    ]


def _count_cross_shard_ties(hidden: np.ndarray, kernel: np.ndarray, num_shards: int) -> int:
    """Tokens whose largest logit occurs in more than one vocabulary shard."""
    logits = (hidden @ kernel).reshape(-1, num_shards, VOCAB // num_shards)
    is_max = logits == logits.max(axis=(1, 2), keepdims=True)
    return int(np.sum(is_max.any(axis=2).sum(axis=1) > 1))


def _run_mesh(sizes: tuple[int, int, int], problem, cases) -> dict[str, np.ndarray]:
    data, fsdp, model = sizes
    mesh = partitioning.make_mesh(
        partitioning.MeshConfig(data, fsdp, model), jax.devices()[: data * fsdp * model]
    )
    vocab_sharding = fused_loss.VocabSharding(mesh=mesh, axes=("model",))
    # As the train step lays them out: tokens split over the batch axes, the kernel's
    # vocabulary over model (and its embed over fsdp, as the "2d" rules do).
    hidden_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    kernel_sharding = NamedSharding(mesh, PartitionSpec("fsdp" if fsdp > 1 else None, "model"))
    results = {}
    for name, (case_fn, int_data) in cases.items():
        h, w = (
            (problem["int_hidden"], problem["int_kernel"])
            if int_data
            else (problem["hidden"], problem["kernel"])
        )
        grad_fn = _loss_and_grads(case_fn, problem["mix"])
        args = jax.device_put(h, hidden_sharding), jax.device_put(w, kernel_sharding)
        (_, out), (d_hidden, d_kernel) = grad_fn(*args, vocab_sharding)
        (_, ref_out), (ref_hidden, ref_kernel) = grad_fn(jnp.asarray(h), jnp.asarray(w), None)
        for kind, outputs, grads in (
            ("sharded", out, (d_hidden, d_kernel)),
            ("reference", ref_out, (ref_hidden, ref_kernel)),
        ):
            for key, value in outputs.items():
                results[f"{name}/{kind}/{key}"] = np.asarray(value)
            results[f"{name}/{kind}/d_hidden"], results[f"{name}/{kind}/d_kernel"] = map(
                np.asarray, grads
            )
        # The mesh axes the kernel gradient's vocabulary dimension comes back split over.
        spec = tuple(d_kernel.sharding.spec) + (None, None)
        results[f"{name}/d_kernel_vocab_axes"] = np.asarray(str(spec[1]))
        if int_data:
            results[f"{name}/cross_shard_ties"] = np.asarray(_count_cross_shard_ties(h, w, model))
        if name in HLO_CASES:
            for kind, vs in (("sharded", vocab_sharding), ("unsharded", None)):
                hlo = grad_fn.lower(*args, vs).compile().as_text()
                results[f"hlo/{name}/{kind}"] = np.asarray(_all_gather_shapes(hlo), dtype=str)
    return results


def _train_step_runs_per_vocab_shard(sizes: tuple[int, int, int]) -> bool:
    """Whether the tiny T5's compiled train step on this mesh holds the loss's shard_map."""
    run = training.TinyRun(mesh=partitioning.MeshConfig(*sizes), rules="2d")
    trainer = training.make_tiny_trainer(run, jax.devices()[: int(np.prod(sizes))])
    batch = trainer.global_batch(run.make_batch(0))
    with trainer.step.context():
        hlo = trainer.step.jitted.lower(trainer.state, batch).compile().as_text()
    return "shard_map" in hlo


def _indivisible_vocab_error(model: int) -> str:
    """The error message of a vocabulary that does not split over ``model`` shards."""
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, model), jax.devices()[:model])
    vocab_sharding = fused_loss.VocabSharding(mesh=mesh, axes=("model",))
    try:
        fused_loss.cross_entropy_from_hidden(
            jnp.ones((2, EMBED)),
            jnp.ones((EMBED, VOCAB - 1)),
            jnp.zeros((2,), jnp.int32),
            vocab_sharding=vocab_sharding,
        )
    except ValueError as error:
        return str(error)
    return ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("meshes", nargs="+")
    args = parser.parse_args()
    problem = _make_problem()
    cases = _loss_cases(problem)
    for spec in args.meshes:
        name, sizes = spec.split("=")
        data, fsdp, model = (int(s) for s in sizes.split(","))
        results = _run_mesh((data, fsdp, model), problem, cases)
        results["indivisible_vocab_error"] = np.asarray(_indivisible_vocab_error(model))
        results["train_step_shard_map"] = np.asarray(
            _train_step_runs_per_vocab_shard((data, fsdp, model))
        )
        # The same check on a mesh without a model axis, where the loss must not shard_map.
        results["data_only_train_step_shard_map"] = np.asarray(
            _train_step_runs_per_vocab_shard((data * fsdp * model, 1, 1))
        )
        np.savez(pathlib.Path(args.out) / f"{name}.npz", **results)


if __name__ == "__main__":
    main()
