"""Mesh sizing, the logical-rules presets (exact PartitionSpecs) and batch placement."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from flan_jax.errors import ConfigError
from flan_jax.models import t5
from flan_jax.testing import training
from flan_jax.testing.models import make_tiny_t5_config
from flan_jax.training import adafactor, partitioning, train_state

R1 = partitioning.get_logical_axis_rules("1d")
R2 = partitioning.get_logical_axis_rules("2d")


def test_mesh_config_resolves_the_remaining_devices():
    assert partitioning.MeshConfig().resolve(8) == (8, 1, 1)
    assert partitioning.MeshConfig(data=-1, fsdp=2, model=2).resolve(8) == (2, 2, 2)
    assert partitioning.MeshConfig(data=4, fsdp=1, model=-1).resolve(8) == (4, 1, 2)
    with pytest.raises(ValueError, match="needs 6 devices, but 8"):
        partitioning.MeshConfig(data=3, fsdp=1, model=2).resolve(8)
    with pytest.raises(ValueError, match="not divisible"):
        partitioning.MeshConfig(data=-1, model=3).resolve(8)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        partitioning.MeshConfig(data=-1, model=-1)
    with pytest.raises(ValueError, match=r"MeshConfig.fsdp must be a positive int"):
        partitioning.MeshConfig(fsdp=0)


def test_make_mesh_axes():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices()[:1])
    assert mesh.axis_names == ("data", "fsdp", "model")
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "model": 1}


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"did you mean \['1d'\]"):
        partitioning.get_logical_axis_rules("1D")
    with pytest.raises(ValueError, match="mesh axes are"):
        partitioning.get_logical_axis_rules([("batch", "replica")])
    assert partitioning.get_logical_axis_rules([["batch", ["data"]]]) == (("batch", ("data",)),)


# Golden parameter specs of the T5 model under both presets.
GOLDEN = {
    "['token_embedder']['embedding']": (P("model", None), P("model", "fsdp")),
    "['decoder']['logits_dense']['kernel']": (P(None, "model"), P("fsdp", "model")),
    "['encoder']['layers_0']['mlp']['wi_0']['kernel']": (P(None, "model"), P("fsdp", "model")),
    "['encoder']['layers_0']['mlp']['wo']['kernel']": (P("model", None), P("model", "fsdp")),
    "['encoder']['layers_0']['attention']['query']['kernel']": (
        P(None, "model", None),
        P("fsdp", "model", None),
    ),
    "['encoder']['layers_0']['attention']['out']['kernel']": (
        P("model", None, None),
        P("model", None, "fsdp"),
    ),
    "['encoder']['relpos_bias']['rel_embedding']": (P("model", None), P("model", None)),
    "['encoder']['encoder_norm']['scale']": (P(None), P("fsdp")),
}


@pytest.mark.parametrize("preset, column", [("1d", 0), ("2d", 1)])
def test_t5_parameter_specs_are_golden(preset, column):
    config = make_tiny_t5_config()
    axes = t5.param_logical_axes(config)
    specs = nn.logical_to_mesh(axes, partitioning.get_logical_axis_rules(preset))
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(specs)[0]}
    for name, expected in GOLDEN.items():
        assert flat[name] == expected[column], name


def test_activation_and_batch_specs():
    # In activations the batch takes (data, fsdp), so embed falls back to unsharded.
    batch_axes = ("data", "fsdp")
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), R2) == P(batch_axes, None, None)
    assert nn.logical_to_mesh_axes(("batch", "length", "mlp"), R1) == P(batch_axes, None, "model")
    batch = training.make_random_batch(0, 4, 6, 5, 32)
    batch_axes = partitioning.get_batch_logical_axes(batch)
    assert batch_axes["decoder_target_tokens"] == P("batch", "length")
    assert partitioning.get_batch_mesh_axes(R1) == ("data", "fsdp")


def test_vocab_mesh_axes():
    assert partitioning.get_vocab_mesh_axes(R1) == ("model",)
    assert partitioning.get_vocab_mesh_axes(R2) == ("model",)
    replicated_vocab = tuple(r for r in R1 if r[0] != "vocab")
    assert partitioning.get_vocab_mesh_axes(replicated_vocab) == ()


def test_adafactor_state_specs_on_the_mesh():
    """Factored statistics shard like the dims they keep (here with the 2-D rules)."""
    config = make_tiny_t5_config(emb_dim=128, mlp_dim=256, num_heads=4, head_dim=32)
    axes = t5.param_logical_axes(config)
    opt = adafactor.make_adafactor(1e-3, param_axes=axes)
    state_axes = train_state.get_train_state_logical_axes(t5.abstract_params(config), axes, opt)
    stats = nn.logical_to_mesh(state_axes.opt_state.param_states, R2)
    wi = stats["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert (wi.v_row, wi.v_col, wi.v) == (P("fsdp"), P("model"), P(None))
    query = stats["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert (query.v_row, query.v_col) == (P("fsdp"), P("model", None))
    norm = stats["encoder"]["encoder_norm"]["scale"]
    assert (norm.v_row, norm.v) == (P(None), P("fsdp"))


def test_global_batch_on_one_process():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices()[:1])
    batch = training.make_random_batch(0, 4, 6, 5, 32)
    assert partitioning.get_local_batch_rows(mesh, 4, R1) == slice(0, 4)
    global_batch = partitioning.make_global_batch(batch, mesh, R1)
    for name, value in batch.items():
        np.testing.assert_array_equal(np.asarray(global_batch[name]), value)
        assert global_batch[name].sharding.spec == P(("data", "fsdp"), None)


def test_initialize_distributed_arguments():
    partitioning.initialize_distributed(None)  # single process: nothing to do
    with pytest.raises(ValueError, match="also needs num_processes and process_id"):
        partitioning.initialize_distributed("localhost:1234")
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\)"):
        partitioning.initialize_distributed("localhost:1234", 2, 5)


def test_optax_optimizer_state_follows_param_axes():
    """Adam's moments shard like the params; its count is replicated."""
    params = {
        "w": jax.ShapeDtypeStruct((8, 16), np.float32),
        "b": jax.ShapeDtypeStruct((16,), np.float32),
    }
    axes = {"w": P("embed", "mlp"), "b": P("mlp")}
    schedule = optax.constant_schedule(1e-3)
    opt = train_state.make_optax_optimizer(optax.adamw(schedule), schedule, axes)
    state_axes = opt.state_logical_axes(params)
    adam = state_axes[0]
    assert adam.mu == axes and adam.nu == axes and adam.count == P()
    real = jax.eval_shape(opt.tx.init, params)
    assert jax.tree.structure(real) == jax.tree.structure(
        state_axes, is_leaf=lambda x: isinstance(x, P)
    )


def test_process_batch_fraction_on_one_process():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices()[:1])
    assert partitioning.get_process_batch_fraction(mesh, R1) == (1, 1)


@dataclasses.dataclass(frozen=True)
class _FakeTpuDevice:
    """A device as multi-slice TPUs report it: a global id and the slice it sits in."""

    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "fake"  # not "tpu": the per-slice layout is then a plain reshape
    device_kind: str = "fake"


def _fake_slices(num_slices: int, per_slice: int) -> list[_FakeTpuDevice]:
    # Listed slice 1 first, as nothing promises jax.devices() is slice-ordered.
    return [
        _FakeTpuDevice(id=s * per_slice + i, slice_index=s)
        for s in reversed(range(num_slices))
        for i in range(per_slice)
    ]


def test_multislice_mesh_puts_only_data_across_slices():
    devices = _fake_slices(num_slices=2, per_slice=8)
    config = partitioning.MeshConfig(data=-1, fsdp=4, model=2, num_slices=2)
    array = partitioning.make_multislice_device_array(config, devices)
    assert array.shape == (2, 4, 2) and config.resolve(16) == (2, 4, 2)
    slice_of = np.vectorize(lambda d: d.slice_index)(array)
    # Data entry s is slice s; each [fsdp, model] block is one slice's 8 devices in order.
    np.testing.assert_array_equal(slice_of, np.arange(2)[:, None, None] * np.ones((2, 4, 2)))
    ids = np.vectorize(lambda d: d.id)(array)
    np.testing.assert_array_equal(ids, np.arange(16).reshape(2, 4, 2))


def test_multislice_mesh_with_data_parallelism_inside_slices():
    devices = _fake_slices(num_slices=3, per_slice=4)
    config = partitioning.MeshConfig(data=2, fsdp=-1, num_slices=3)
    array = partitioning.make_multislice_device_array(config, devices)
    assert array.shape == (6, 2, 1)
    slice_of = np.vectorize(lambda d: d.slice_index)(array)[:, 0, 0]
    np.testing.assert_array_equal(slice_of, [0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    "config, devices, message",
    [
        (
            partitioning.MeshConfig(num_slices=2),
            _fake_slices(num_slices=4, per_slice=2),
            r"devices span 4 slice\(s\).*MeshConfig.num_slices=4",
        ),
        (
            partitioning.MeshConfig(fsdp=3, num_slices=2),
            _fake_slices(num_slices=2, per_slice=4),
            "4 devices per slice are not divisible by the fixed axes' product 3",
        ),
        (
            partitioning.MeshConfig(num_slices=2),
            _fake_slices(num_slices=2, per_slice=4)[:7],
            r"unequal device counts \{0: 3, 1: 4\}",
        ),
    ],
)
def test_multislice_mesh_errors_name_the_fix(config, devices, message):
    with pytest.raises(ValueError, match=message):  # ConfigError is a ValueError
        partitioning.make_multislice_device_array(config, devices)


def test_multislice_needs_devices_with_a_slice_index():
    config = partitioning.MeshConfig(num_slices=2)
    with pytest.raises(ConfigError, match=r"has none.*MeshConfig.num_slices=1"):
        partitioning.make_mesh(config, jax.devices())
    with pytest.raises(ConfigError, match="num_slices must be a positive int"):
        partitioning.MeshConfig(num_slices=0)


def test_one_slice_mesh_refuses_devices_of_several_slices():
    with pytest.raises(ConfigError, match="span 2 TPU slices.*num_slices=2"):
        partitioning.make_mesh(partitioning.MeshConfig(), _fake_slices(2, 2))


def test_one_slice_mesh_is_unchanged():
    devices = jax.devices()  # CPU devices: no slice_index, the jax.make_mesh path as before
    mesh = partitioning.make_mesh(partitioning.MeshConfig(), devices)
    auto = (jax.sharding.AxisType.Auto,) * 3
    expected = jax.make_mesh((len(devices), 1, 1), partitioning.MESH_AXES, axis_types=auto)
    assert mesh == expected
