"""Device meshes, logical-axis rules and the shardings of parameters and batches.

flan_jax shards everything by *logical* axis names, as t5x does: the model annotates each
parameter with names such as ``("embed", "mlp")`` and each activation with names such as
``("batch", "length", "embed")``; one rules table maps those names onto the three axes of
the device mesh, ``("data", "fsdp", "model")``. Changing the parallelism of a run therefore
means changing the mesh sizes and the rules preset in gin, never the model.

A worked example on 8 devices with ``MeshConfig(data=2, fsdp=2, model=2)`` and the ``"2d"``
rules: an MLP input kernel annotated ``("embed", "mlp")`` gets
``PartitionSpec("fsdp", "model")`` (embed is split over the fsdp axis, mlp over the model
axis, replicated over data); a batch ``[batch, length]`` gets
``PartitionSpec(("data", "fsdp"), None)``, i.e. 4 batch shards, each replicated over the 2
model devices.

Multi-slice (several TPU slices joined over the data-center network, DCN):
``MeshConfig(num_slices=2, fsdp=4)`` on 2 slices of 16 chips builds the mesh with
``jax.experimental.mesh_utils.create_hybrid_device_mesh``: the ``data`` axis has
``2 * 4`` entries, slice-major (entries ``0..3`` are slice 0's devices, ``4..7`` slice
1's), while every ``fsdp`` and ``model`` group lies inside one slice. Only the gradient
all-reduce of data parallelism crosses the slow DCN links; the parameter all-gathers of
fsdp and the activations of tensor parallelism stay on the fast inter-chip links (ICI).

Multi-host: every process reads only its own rows of the global batch (see
:func:`get_local_batch_rows`) and :func:`make_global_batch` assembles the global
``jax.Array`` with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flan_jax.errors import ConfigError

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "model")

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_BATCH_MESH_AXES = ("data", "fsdp")

_RULES_1D: LogicalRules = (
    ("batch", _BATCH_MESH_AXES),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("joined_kv", "model"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("abspos", None),
    ("embed_proj", None),
    ("layers", None),
    ("stack", None),
)

# FSDP / 2-D parameter partitioning: parameters are additionally split along `embed` over
# the fsdp axis. The `("embed", None)` fallback that follows matters for activations
# `[batch, length, embed]`: there the batch already occupies fsdp, so embed stays whole.
_RULES_2D: LogicalRules = (
    ("batch", _BATCH_MESH_AXES),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("joined_kv", "model"),
    ("embed", "fsdp"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("abspos", None),
    ("embed_proj", None),
    ("layers", None),
    ("stack", None),
)

LOGICAL_AXIS_RULES: Mapping[str, LogicalRules] = {
    "1d": _RULES_1D,
    "2d": _RULES_2D,
    "fsdp": _RULES_2D,
}
"""Presets of logical-axis rules, as data.

Each preset is an ordered tuple of ``(logical_name, mesh_axes)`` pairs, read by flax's
``logical_to_mesh_axes``: for each array dimension the first rule whose mesh axes are
still unused by the other dimensions of the same array wins; a dimension no rule claims
is replicated.

- ``"1d"``: t5x's 1-D parameter partitioning. Batches split over ``data`` and ``fsdp``;
  ``vocab``, ``mlp``, ``heads``, ``kv_heads`` (grouped-query key/value heads) and
  ``joined_kv`` split over ``model``; ``embed``, ``kv``, ``length``, the relative-position
  buckets, the learned absolute positions (``abspos``) and OPT's narrower embedding width
  (``embed_proj``) replicated.
- ``"2d"`` (alias ``"fsdp"``): as ``"1d"``, and parameters' ``embed`` dimension split over
  ``fsdp`` (ZeRO-3-like: each fsdp shard holds a slice of every weight and of its Adafactor
  statistics).
"""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the ``("data", "fsdp", "model")`` device mesh.

    ``data``, ``fsdp`` and ``model`` are the sizes inside one slice (all devices when
    ``num_slices == 1``); the mesh's ``data`` axis is ``num_slices * data`` long.

    Attributes:
        data: Data-parallel size; ``-1`` means "all devices the other axes leave".
        fsdp: Size of the axis that, under the ``"2d"`` rules, also shards parameters.
            ``-1`` allowed (at most one axis may be ``-1``).
        model: Tensor-parallel size (vocab, mlp, heads split). ``-1`` allowed.
        num_slices: TPU slices the run spans (a multi-slice queued resource's node count);
            data parallelism crosses the slices over DCN, fsdp and model stay inside one.
    """

    data: int = -1
    fsdp: int = 1
    model: int = 1
    num_slices: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.num_slices, int) or self.num_slices < 1:
            raise ConfigError(
                "MeshConfig.num_slices must be a positive int (the TPU slices of the run); "
                f"got {self.num_slices!r}"
            )
        sizes = self._slice_sizes()
        for name, size in sizes.items():
            if not isinstance(size, int) or (size < 1 and size != -1):
                raise ConfigError(
                    f"MeshConfig.{name} must be a positive int or -1 (all remaining devices); "
                    f"got {size!r}"
                )
        if list(sizes.values()).count(-1) > 1:
            raise ConfigError(
                f"MeshConfig: at most one axis may be -1 (the remaining devices); got {sizes}"
            )

    def _slice_sizes(self) -> dict[str, int]:
        """The per-slice axis sizes as configured (``-1`` unresolved)."""
        return {"data": self.data, "fsdp": self.fsdp, "model": self.model}

    def resolve_slice(self, num_devices: int) -> tuple[int, int, int]:
        """The concrete per-slice ``(data, fsdp, model)`` sizes for ``num_devices`` devices.

        Raises:
            ValueError: if the devices do not split evenly over the slices, or the sizes
                do not multiply to one slice's devices.
        """
        if num_devices % self.num_slices:
            raise ValueError(
                f"MeshConfig.num_slices={self.num_slices} does not divide the {num_devices} "
                "devices; set num_slices to the node count of the queued resource"
            )
        per_slice = num_devices // self.num_slices
        where = " per slice" if self.num_slices > 1 else ""
        sizes = list(self._slice_sizes().values())
        known = int(np.prod([s for s in sizes if s != -1]))
        if -1 in sizes:
            if per_slice % known:
                raise ValueError(
                    f"MeshConfig {dataclasses.asdict(self)}: {per_slice} devices{where} are "
                    f"not divisible by the fixed axes' product {known}"
                )
            sizes[sizes.index(-1)] = per_slice // known
        if int(np.prod(sizes)) != per_slice:
            raise ValueError(
                f"MeshConfig {dataclasses.asdict(self)} needs {int(np.prod(sizes))} "
                f"devices{where}, but {per_slice} are available; set one axis to -1 to "
                "absorb the rest"
            )
        return sizes[0], sizes[1], sizes[2]

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Returns the concrete mesh ``(data, fsdp, model)`` sizes for ``num_devices`` devices.

        The data axis spans the slices: ``num_slices`` times the per-slice data size.

        Raises:
            ValueError: if the sizes do not multiply to ``num_devices``.
        """
        data, fsdp, model = self.resolve_slice(num_devices)
        return data * self.num_slices, fsdp, model


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ``("data", "fsdp", "model")`` mesh over ``devices`` (default: all).

    On one slice, devices are laid out by ``jax.make_mesh``, which keeps each process's
    devices contiguous along the leading axes, so every process holds whole rows of a
    batch. On several (``config.num_slices > 1``) see :func:`make_multislice_device_array`.
    """
    devices = list(jax.devices() if devices is None else devices)
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if config.num_slices == 1:
        _check_single_slice(devices)
        shape = config.resolve(len(devices))
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    device_array = make_multislice_device_array(config, devices)
    return Mesh(device_array, MESH_AXES, axis_types=auto)


def make_multislice_device_array(config: MeshConfig, devices: Sequence[Any]) -> np.ndarray:
    """The ``[data, fsdp, model]`` array of devices of a multi-slice mesh.

    ``create_hybrid_device_mesh`` lays each slice out for its ICI torus with the per-slice
    sizes and stacks the slices along ``data`` (DCN shape ``(num_slices, 1, 1)``), ordered
    by ``slice_index``: ``array[s * data + i]`` is in slice ``s``.

    Raises:
        ConfigError: if the devices carry no ``slice_index`` (CPU and GPU devices do not),
            or their slices do not match ``config.num_slices`` or have unequal sizes.
    """
    slices = _count_devices_per_slice(devices)
    if slices is None:
        raise ConfigError(
            f"MeshConfig.num_slices={config.num_slices} needs devices with a slice_index "
            f"(multi-slice TPUs); {devices[0]!r} has none. Set "
            "--gin.partitioning.MeshConfig.num_slices=1 on one slice, GPUs or CPUs"
        )
    counts = dict(sorted(slices.items()))
    if len(slices) != config.num_slices:
        raise ConfigError(
            f"MeshConfig.num_slices={config.num_slices}, but the devices span "
            f"{len(slices)} slice(s) ({counts}: slice_index -> devices); set "
            f"--gin.partitioning.MeshConfig.num_slices={len(slices)}"
        )
    if len(set(counts.values())) != 1:
        raise ConfigError(
            f"the slices have unequal device counts {counts} (slice_index -> devices); a "
            "multi-slice mesh needs every slice whole: pass all devices (jax.devices())"
        )
    ici_shape = config.resolve_slice(len(devices))
    dcn_shape = (config.num_slices, 1, 1)
    return mesh_utils.create_hybrid_device_mesh(
        ici_shape, dcn_shape, devices, allow_split_physical_axes=True
    )


def _count_devices_per_slice(devices: Sequence[Any]) -> dict[int, int] | None:
    """``slice_index -> device count``; None when the devices have no ``slice_index``."""
    if not all(hasattr(d, "slice_index") for d in devices):
        return None
    return dict(collections.Counter(int(d.slice_index) for d in devices))


def _check_single_slice(devices: Sequence[Any]) -> None:
    """Refuses a one-slice mesh over several slices: fsdp would cross the slow DCN."""
    slices = _count_devices_per_slice(devices)
    if slices is not None and len(slices) > 1:
        raise ConfigError(
            f"the devices span {len(slices)} TPU slices, but MeshConfig.num_slices=1; set "
            f"--gin.partitioning.MeshConfig.num_slices={len(slices)} so that only data "
            "parallelism crosses the slices"
        )


def get_logical_axis_rules(rules: str | Sequence[tuple[Any, Any]]) -> LogicalRules:
    """Returns the rules of a preset name, or validates and returns explicit rules.

    Raises:
        ValueError: for an unknown preset (naming the closest ones) or a malformed rule.
    """
    if isinstance(rules, str):
        if rules not in LOGICAL_AXIS_RULES:
            close = difflib.get_close_matches(rules.lower(), list(LOGICAL_AXIS_RULES), n=3)
            raise ValueError(
                f"unknown logical axis rules preset {rules!r}; known presets: "
                f"{sorted(LOGICAL_AXIS_RULES)}" + (f" (did you mean {close}?)" if close else "")
            )
        return LOGICAL_AXIS_RULES[rules]
    checked = []
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"a logical axis rule must be (logical_name, mesh_axes); got {rule!r}")
        targets = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
        unknown = [t for t in targets if t is not None and t not in MESH_AXES]
        if unknown:
            raise ValueError(
                f"logical axis rule {rule!r} names mesh axes {unknown}; mesh axes are {MESH_AXES}"
            )
        checked.append((rule[0], tuple(rule[1]) if isinstance(rule[1], list) else rule[1]))
    return tuple(checked)


def get_param_logical_axes(abstract_variables: Mapping[str, Any]) -> Any:
    """Returns the tree of logical ``PartitionSpec`` of the ``"params"`` collection.

    Args:
        abstract_variables: the (boxed) variables of a flax module, typically
            ``jax.eval_shape(model.init, ...)``; parameters not created with
            ``nn.with_logical_partitioning`` get ``PartitionSpec()`` (replicated).
    """
    return nn.get_partition_spec(abstract_variables)["params"]


def logical_to_shardings(logical_axes: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Maps a tree of logical ``PartitionSpec`` to a tree of ``NamedSharding`` on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_axes, mesh, rules)


def get_batch_logical_axes(batch: Mapping[str, Any]) -> dict[str, PartitionSpec]:
    """Logical axes of a feature batch: ``("batch", "length", ...)`` for every feature."""
    specs = {}
    for name, x in batch.items():
        names = ("batch", "length") + (None,) * max(np.ndim(x) - 2, 0)
        specs[name] = PartitionSpec(*names[: np.ndim(x)])
    return specs


def get_batch_shardings(
    batch: Mapping[str, Any], mesh: Mesh, rules: LogicalRules
) -> dict[str, NamedSharding]:
    """Shardings of a batch dict (arrays or ``ShapeDtypeStruct``), split along the batch dim."""
    return logical_to_shardings(get_batch_logical_axes(batch), mesh, rules)


def get_local_batch_rows(mesh: Mesh, global_batch_size: int, rules: LogicalRules) -> slice:
    """The rows of the global batch that this process's devices hold.

    A data pipeline running on several hosts reads exactly these rows (its per-process
    shard) and hands them to :func:`make_global_batch`.

    Raises:
        ValueError: if the global batch does not split evenly, or if this process's rows
            are not one contiguous block (a mesh built without :func:`make_mesh`).
    """
    sharding = get_batch_shardings({"x": np.empty((global_batch_size, 1))}, mesh, rules)["x"]
    batch_shards = get_batch_shard_count(mesh, rules)
    if global_batch_size % batch_shards:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {batch_shards} "
            f"batch shards of mesh {dict(mesh.shape)}"
        )
    rows = sorted(_addressable_row_ranges(sharding, global_batch_size))
    start, stop = rows[0][0], rows[-1][1]
    if any(a[1] != b[0] for a, b in zip(rows, rows[1:])):
        raise ValueError(
            f"process {jax.process_index()} holds non-contiguous batch rows {rows}; build the "
            "mesh with flan_jax.training.partitioning.make_mesh"
        )
    return slice(start, stop)


def _addressable_row_ranges(sharding: NamedSharding, num_rows: int) -> set[tuple[int, int]]:
    """The distinct ``(start, stop)`` row ranges of a ``[num_rows, 1]`` array on this process."""
    ranges: set[tuple[int, int]] = set()
    for index in sharding.addressable_devices_indices_map((num_rows, 1)).values():
        assert index is not None  # a sharding gives each of its addressable devices an index
        start, stop, _ = index[0].indices(num_rows)
        ranges.add((start, stop))
    return ranges


def _get_dim_mesh_axes(logical_axes: tuple[str, ...], dim: int, rules: LogicalRules):
    """The mesh axes dimension ``dim`` of an array with ``logical_axes`` is split over."""
    mesh_axes = nn.logical_to_mesh_axes(logical_axes, rules)
    assert mesh_axes is not None  # None only for array_dim_names=None
    spec = mesh_axes[dim]
    return (spec,) if isinstance(spec, str) else tuple(spec or ())


def get_batch_mesh_axes(rules: LogicalRules) -> tuple[str, ...]:
    """The mesh axes the ``"batch"`` logical axis is split over (e.g. ``("data", "fsdp")``)."""
    return _get_dim_mesh_axes(("batch",), 0, rules)


def get_vocab_mesh_axes(rules: LogicalRules) -> tuple[str, ...]:
    """The mesh axes the vocabulary of the ``[embed, vocab]`` output kernel is split over.

    ``("model",)`` under the ``"1d"`` and ``"2d"`` presets; ``()`` when ``vocab`` is replicated.
    """
    return _get_dim_mesh_axes(("embed", "vocab"), 1, rules)


def get_batch_shard_count(mesh: Mesh, rules: LogicalRules) -> int:
    """How many batch shards ``mesh`` has under ``rules`` (product of the batch mesh axes)."""
    return int(np.prod([mesh.shape[a] for a in get_batch_mesh_axes(rules)]))


def get_process_batch_fraction(mesh: Mesh, rules: LogicalRules) -> tuple[int, int]:
    """``(local, total)``: this process holds ``local`` of the ``total`` batch shards.

    The global batch has ``total / local`` times the rows of this process's part. With
    data parallelism across processes that is ``process_count``; when only the model axis
    spans processes, every process holds the whole batch (``local == total``).
    """
    total = get_batch_shard_count(mesh, rules)
    sharding = get_batch_shardings({"x": np.empty((total, 1))}, mesh, rules)["x"]
    local = len(_addressable_row_ranges(sharding, total))
    return local, total


def make_global_batch(
    local_batch: Mapping[str, np.ndarray], mesh: Mesh, rules: LogicalRules
) -> dict[str, jax.Array]:
    """Assembles global, batch-sharded arrays from this process's rows.

    On one process this is a sharded ``device_put``; on several, each process passes the
    rows :func:`get_local_batch_rows` names (with data parallelism across processes the
    global batch has ``process_count`` times as many rows; see
    :func:`get_process_batch_fraction`).

    Args:
        local_batch: feature name -> ``[local_batch, length]`` numpy array.
        mesh: the device mesh.
        rules: logical axis rules (the batch dimension follows the ``"batch"`` rule).

    Returns:
        feature name -> global ``jax.Array`` sharded along the batch dimension.
    """
    shardings = get_batch_shardings(local_batch, mesh, rules)
    local_shards, total_shards = get_process_batch_fraction(mesh, rules)
    out = {}
    for name, local in local_batch.items():
        local = np.asarray(local)
        global_rows = local.shape[0] * total_shards // local_shards
        global_shape = (global_rows,) + local.shape[1:]
        out[name] = jax.make_array_from_process_local_data(shardings[name], local, global_shape)
    return out


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str | None = "gloo",
) -> None:
    """Starts multi-process JAX when a coordinator is configured; a no-op otherwise.

    Must run before anything touches the JAX backend (creating arrays, listing devices).

    Args:
        coordinator_address: ``"host:port"`` of process 0; ``None`` for a single process.
        num_processes: total number of processes.
        process_id: this process's index in ``[0, num_processes)``.
        cpu_collectives: cross-process collectives for the CPU backend (``"gloo"`` or
            ``"mpi"``); without one, CPU processes cannot exchange gradients.

    Raises:
        ValueError: if a coordinator is given without the process count and id.
    """
    if coordinator_address is None:
        return
    if num_processes is None or process_id is None:
        raise ValueError(
            f"initialize_distributed: coordinator_address={coordinator_address!r} also needs "
            f"num_processes and process_id; got {num_processes!r} and {process_id!r}"
        )
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"initialize_distributed: process_id must be in [0, {num_processes}); got {process_id}"
        )
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    logging.info(
        "jax.distributed initialised: process %d of %d, %d local devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
    )
