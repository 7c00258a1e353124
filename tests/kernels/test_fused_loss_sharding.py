"""The fused losses with the vocabulary sharded over `model` equal the unsharded ones.

On 8 fake CPU devices (a subprocess, because the device count is fixed when JAX is
imported), for meshes with model = 2 and 4 and one that also shards the kernel's embed
dimension over fsdp: per-token outputs and gradients w.r.t. hidden and kernel equal those of
the unsharded computation, the kernel gradient stays split over `model`, and the compiled
loss+grad HLO has no all-gather producing the full vocabulary, while the unsharded
(dynamic_slice) path on the same mesh and inputs has one, so the check can fail.
"""

import pathlib

import numpy as np
import pytest

from flan_jax.testing import training

SCRIPT = pathlib.Path(__file__).with_name("run_sharded_fused_loss.py")
MESHES = {"data4_model2": "4,1,2", "data2_model4": "2,1,4", "data2_fsdp2_model2": "2,2,2"}
CASES = (
    "cross_entropy",
    "sparse_kl_drop",
    "sparse_kl_renormalize",
    "sparse_kl_residual",
    "dense_kl",
    "token_logprobs",
    "argmax_ties",
)
HLO_CASES = ("cross_entropy", "sparse_kl_residual")
VOCAB = 512  # as in the script; no other dimension of the problem has this size
TOL = {"rtol": 1e-5, "atol": 1e-5}
pytestmark = pytest.mark.slow  # one 8-device subprocess, about 2 minutes on 2 cores


@pytest.fixture(scope="module")
def mesh_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded_fused_loss")
    specs = [f"{name}={sizes}" for name, sizes in MESHES.items()]
    process = training.start_python_script(
        str(SCRIPT), ["--out", str(out), *specs], num_cpu_devices=8
    )
    training.wait_for_scripts([process], timeout=540)
    return {name: dict(np.load(out / f"{name}.npz")) for name in MESHES}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_outputs_and_gradients_match_unsharded(mesh_results, mesh, case):
    results = mesh_results[mesh]
    keys = [k.split("/")[-1] for k in results if k.startswith(f"{case}/reference/")]
    assert {"loss", "d_hidden", "d_kernel"} <= set(keys)
    for key in keys:
        sharded, reference = results[f"{case}/sharded/{key}"], results[f"{case}/reference/{key}"]
        assert sharded.shape == reference.shape, key
        if key == "correct":
            np.testing.assert_array_equal(sharded, reference)
        else:
            np.testing.assert_allclose(sharded, reference, **TOL, err_msg=key)
    assert str(results[f"{case}/d_kernel_vocab_axes"]) == "model"


@pytest.mark.parametrize("mesh", MESHES)
def test_argmax_picks_the_first_of_ties_across_shards(mesh_results, mesh):
    results = mesh_results[mesh]
    assert int(results["argmax_ties/cross_shard_ties"]) > 0  # the data does tie across shards
    # The targets are numpy's argmax (first index on ties) of the integer-valued logits.
    assert results["argmax_ties/sharded/correct"].all()
    # The other case's targets are half argmax, half random: both outcomes occur.
    assert 0 < results["cross_entropy/sharded/correct"].mean() < 1


@pytest.mark.parametrize("case", HLO_CASES)
@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_loss_never_all_gathers_the_kernel(mesh_results, mesh, case):
    def gathers_full_vocab(kind):
        shapes = [
            tuple(int(d) for d in s.split(",") if d)
            for s in mesh_results[mesh][f"hlo/{case}/{kind}"]
        ]
        return [s for s in shapes if VOCAB in s]

    assert gathers_full_vocab("sharded") == []
    assert gathers_full_vocab("unsharded"), "the check must see the old path's all-gather"


def test_indivisible_vocabulary_is_a_clear_error(mesh_results):
    message = str(mesh_results["data2_model4"]["indivisible_vocab_error"])
    assert "vocabulary (511) must split evenly over the 4 shards" in message
    assert "pad the output layer to a multiple of 4" in message


@pytest.mark.parametrize("mesh", MESHES)
def test_train_step_computes_the_loss_per_vocab_shard(mesh_results, mesh):
    """The train step passes its mesh and rules on, so the loss takes the sharded path."""
    assert bool(mesh_results[mesh]["train_step_shard_map"])
    assert not bool(mesh_results[mesh]["data_only_train_step_shard_map"])
