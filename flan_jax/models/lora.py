"""LoRA (Hu et al., 2021): low-rank adapters on chosen kernels of any flax model.

:class:`LoraModel` wraps any :class:`flan_jax.models.interface.Model` whose hidden states
come from flax linen modules (the T5 encoder-decoder, the decoder-only models). A targeted
kernel ``W`` gets two trainable factors and a frozen scale, and its projection becomes

    y = x W + scale * dropout(x) A B,     A: [in, rank], B: [rank, out], scale = alpha / rank

applied in *activation space*: a flax method interceptor adds the low-rank path to the
output of every module call whose parameters hold an adapter, so ``W + scale A B`` is never
formed in the forward or backward pass, the base kernel is not differentiated, and the
dropout on the adapter input is per token and feature, as in the paper and PEFT.

Parameters. The adapters live in the base model's own parameter tree, next to the kernel
they adapt (``.../attention/query/{kernel, lora_a, lora_b, lora_scale}``), so a scanned
stack slices them per layer like its kernels, they shard by the same logical rules, and a
checkpoint of a LoRA run is self-describing (:func:`merge_lora` needs nothing else):

    lora_a      [*stack, *in, rank]   uniform(+-1/sqrt(prod(in))), as PEFT's Kaiming init
    lora_b      [*stack, rank, *out]  zeros, so the adapted model starts as the base
    lora_scale  [*stack]              alpha / rank, frozen (not a trainable parameter)

Which kernel dims are the input ``in`` and which the output ``out`` comes from its
logical axis names (:func:`split_kernel_axes`): a leading ``layers`` axis (scanned layers)
is a stacking axis; a 2-D kernel is ``[in, out]``; a kernel with more dims whose *last*
axis is ``embed`` writes into the residual stream and reads all its other dims (attention
``out`` ``[heads, kv, embed]``: in = heads x kv); any other reads its first dim (``query``
``[embed, heads, kv]``: in = embed, out = heads x kv). The module that owns the kernel
must contract its first argument's trailing ``in`` dims with the kernel's leading ones
(``nn.Dense``, ``EinsumDense`` projections); a module that does not is reported by path.

Targets (``LoraConfig.targets``), one or more of:

* a regular expression searched in the kernel's ``/``-joined parameter path, e.g.
  ``"attention/(query|value)/"`` or ``"decoder/.*/mlp/wi"``
  (``"encoder/layers_0/attention/query/kernel"``; scanned: ``".../layers/attention/..."``,
  so a scanned stack is adapted in every layer or in none);
* ``"IN->OUT"``: kernels whose input axes include the comma-separated logical axes IN and
  whose output axes include OUT, ``*`` for any: ``"embed->heads"`` (queries; also keys and
  values where they use ``heads``), ``"heads->embed"`` (attention outputs),
  ``"embed->mlp"``, ``"mlp->embed"``, ``"*->embed"``.

Only parameters named ``kernel`` are candidates (embedding tables are not adapted). A
targeted output projection (``logits_dense``) is merged into the kernel for the fused loss
(:meth:`LoraModel.output_kernel`), so its adapter sees no dropout.

Merging and export: :func:`merge_lora` folds the adapters into the kernels and returns the
base model's parameter tree; :func:`export_merged_checkpoint` writes a LoRA run's step as a
normal checkpoint directory, which ``flan-jax infer``/``score``/``eval``/``convert --to-hf``
read like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from flan_jax.errors import ConfigError
from flan_jax.models.interface import Batch, DecodeState, InitialParams, Model, Params

Array = jax.Array

LORA_A = "lora_a"
LORA_B = "lora_b"
LORA_SCALE = "lora_scale"
ADAPTER_LEAVES = (LORA_A, LORA_B, LORA_SCALE)
TRAINABLE_LEAVES = (LORA_A, LORA_B)
_STACKING_AXES = ("layers",)
_AXES_TARGET = re.compile(r"^\s*([\w*,\s]+?)\s*->\s*([\w*,\s]+?)\s*$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """What LoRA adapts and how (see the module docstring for the target syntax).

    Attributes:
        rank: the adapters' inner dimension r.
        alpha: the adapter output is scaled by ``alpha / rank``.
        dropout_rate: dropout on the adapter input during training.
        targets: path regular expressions or ``"IN->OUT"`` logical-axes patterns; each
            must select at least one kernel.
    """

    rank: int
    alpha: float
    dropout_rate: float = 0.0
    targets: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            raise ConfigError(
                f"LoraConfig.targets must be a list of patterns, got the string "
                f"{self.targets!r}; write [{self.targets!r}]"
            )
        object.__setattr__(self, "targets", tuple(self.targets))  # gin passes lists
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoraConfig.rank must be a positive int; got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"LoraConfig.alpha must be > 0; got {self.alpha!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"LoraConfig.dropout_rate must be in [0, 1); got {self.dropout_rate}")
        if not self.targets:
            raise ConfigError("LoraConfig.targets is empty; name at least one kernel pattern")
        for pattern in self.targets:
            _compile_target(pattern)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _compile_target(pattern: str) -> Any:
    """A predicate ``(path, in_axes, out_axes) -> bool`` for one target pattern."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(f"LoraConfig.targets: {pattern!r} is not a non-empty string")
    axes_match = _AXES_TARGET.match(pattern) if "->" in pattern else None
    if "->" in pattern and axes_match is None:
        raise ConfigError(
            f"LoraConfig.targets: {pattern!r} is not 'IN->OUT' with comma-separated logical "
            "axis names or * on each side (e.g. 'embed->heads')"
        )
    if axes_match:
        wanted_in, wanted_out = (
            {name.strip() for name in side.split(",")} - {"*"} for side in axes_match.groups()
        )
        return lambda path, in_axes, out_axes: (
            wanted_in <= set(in_axes) and wanted_out <= set(out_axes)
        )
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ConfigError(
            f"LoraConfig.targets: {pattern!r} is not a valid regular expression ({error})"
        ) from None
    return lambda path, in_axes, out_axes: regex.search(path) is not None


def split_kernel_axes(axes: tuple[Any, ...]) -> tuple[int, int]:
    """``(stacking dims, input dims)`` of a kernel with these logical axes.

    The remaining trailing dims are the outputs. Examples: ``("embed", "mlp")`` -> (0, 1);
    ``("embed", "heads", "kv")`` -> (0, 1); ``("heads", "kv", "embed")`` -> (0, 2);
    ``("layers", "embed", "heads", "kv")`` -> (1, 1).
    """
    stack = 1 if axes and axes[0] in _STACKING_AXES else 0
    rest = axes[stack:]
    if len(rest) < 2:
        raise ValueError(f"a kernel needs an input and an output dim; its axes are {axes}")
    num_in = len(rest) - 1 if len(rest) > 2 and rest[-1] == "embed" else 1
    return stack, num_in


@dataclasses.dataclass(frozen=True)
class AdaptedKernel:
    """One targeted kernel.

    Attributes:
        path: keys from the params' root to the module holding the kernel.
        shape, axes: the kernel's shape and logical axes.
        num_stack, num_in: leading stacking dims and input dims (the rest are outputs).
    """

    path: tuple[str, ...]
    shape: tuple[int, ...]
    axes: tuple[Any, ...]
    num_stack: int
    num_in: int

    @property
    def name(self) -> str:
        return "/".join(self.path + ("kernel",))

    def adapter_shapes(self, rank: int) -> dict[str, tuple[int, ...]]:
        stack = self.shape[: self.num_stack]
        inputs = self.shape[self.num_stack : self.num_stack + self.num_in]
        outputs = self.shape[self.num_stack + self.num_in :]
        return {
            LORA_A: stack + inputs + (rank,),
            LORA_B: stack + (rank,) + outputs,
            LORA_SCALE: stack,
        }

    def adapter_axes(self) -> dict[str, PartitionSpec]:
        stack = self.axes[: self.num_stack]
        inputs = self.axes[self.num_stack : self.num_stack + self.num_in]
        outputs = self.axes[self.num_stack + self.num_in :]
        return {
            LORA_A: PartitionSpec(*stack, *inputs, None),
            LORA_B: PartitionSpec(*stack, None, *outputs),
            LORA_SCALE: PartitionSpec(*stack),
        }


def _key_name(key: Any) -> str:
    return str(getattr(key, "key", getattr(key, "name", key)))


@functools.lru_cache(maxsize=32)
def select_kernels(base: Model, lora: LoraConfig) -> tuple[AdaptedKernel, ...]:
    """The kernels of ``base`` that ``lora.targets`` select, in parameter order.

    Raises:
        ConfigError: naming every pattern that selects no kernel, and the kernels there are.
    """
    shapes = jax.tree_util.tree_flatten_with_path(base.abstract_params())[0]
    axes_tree = base.param_logical_axes()
    kernels = []
    for path, leaf in shapes:
        names = tuple(_key_name(k) for k in path)
        if names[-1] != "kernel":
            continue
        axes = _lookup(axes_tree, names)
        axes = tuple(axes) if axes is not None else (None,) * len(leaf.shape)
        num_stack, num_in = split_kernel_axes(axes)
        kernels.append(AdaptedKernel(names[:-1], tuple(leaf.shape), axes, num_stack, num_in))
    predicates = {pattern: _compile_target(pattern) for pattern in lora.targets}
    selected, used = [], set()
    for kernel in kernels:
        in_axes = kernel.axes[kernel.num_stack : kernel.num_stack + kernel.num_in]
        out_axes = kernel.axes[kernel.num_stack + kernel.num_in :]
        hits = [p for p, matches in predicates.items() if matches(kernel.name, in_axes, out_axes)]
        used.update(hits)
        if hits:
            selected.append(kernel)
    unused = [pattern for pattern in lora.targets if pattern not in used]
    if unused:
        # One line per kind of kernel: layers_0, layers_1, ... read as layers_*.
        kinds = {re.sub(r"layers_\d+", "layers_*", k.name): k.axes for k in kernels}
        listing = "; ".join(f"{name} {axes}" for name, axes in kinds.items())
        raise ConfigError(
            f"LoraConfig.targets: {', '.join(repr(p) for p in unused)} "
            f"select{'s' if len(unused) == 1 else ''} no kernel of the model. Its kernels "
            f"(path, logical axes): {listing}"
        )
    return tuple(selected)


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _with_module(tree: Params, path: tuple[str, ...], update: Mapping[str, Any]) -> Params:
    """A copy of ``tree`` whose dict at ``path`` has ``update``'s entries added."""
    if not path:
        return {**tree, **update}
    return {**tree, path[0]: _with_module(tree[path[0]], path[1:], update)}


def add_adapters(
    base_params: Params, kernels: tuple[AdaptedKernel, ...], lora: LoraConfig, rng: Array
) -> Params:
    """The base parameters with fresh adapters next to each selected kernel."""
    params = base_params
    for index, kernel in enumerate(kernels):
        shapes = kernel.adapter_shapes(lora.rank)
        fan_in = math.prod(shapes[LORA_A][kernel.num_stack : -1])
        bound = fan_in**-0.5
        a = jax.random.uniform(
            jax.random.fold_in(rng, index), shapes[LORA_A], jnp.float32, -bound, bound
        )
        adapters = {
            LORA_A: a,
            LORA_B: jnp.zeros(shapes[LORA_B], jnp.float32),
            LORA_SCALE: jnp.full(shapes[LORA_SCALE], lora.scale, jnp.float32),
        }
        params = _with_module(params, kernel.path, adapters)
    return params


def remove_adapters(tree: Any) -> Any:
    """``tree`` (params, their shapes, axes or shardings) without the adapter leaves."""
    if not isinstance(tree, Mapping):
        return tree
    return {k: remove_adapters(v) for k, v in tree.items() if k not in ADAPTER_LEAVES}


def _low_rank_product(module: Mapping[str, Array]) -> Array:
    """``scale * A @ B`` in the kernel's shape, float32."""
    a, b, scale = module[LORA_A], module[LORA_B], module[LORA_SCALE]
    stack = scale.shape
    rank = a.shape[-1]
    a2 = a.reshape(stack + (-1, rank)).astype(jnp.float32)
    b2 = b.reshape(stack + (rank, -1)).astype(jnp.float32)
    product = jnp.einsum("...ir,...ro->...io", a2, b2, precision=jax.lax.Precision.HIGHEST)
    product = product * scale.astype(jnp.float32)[..., None, None]
    return product.reshape(module["kernel"].shape)


def merge_lora(params: Params) -> Params:
    """The base model's parameters: every adapter folded into its kernel, then dropped.

    ``kernel + lora_scale * lora_a @ lora_b`` (in float32, cast back to the kernel's
    dtype); trees without adapters come back unchanged.
    """
    if not isinstance(params, Mapping):
        return params
    merged = {k: merge_lora(v) for k, v in params.items() if k not in ADAPTER_LEAVES}
    if LORA_A in params:
        kernel = params["kernel"]
        merged["kernel"] = (kernel.astype(jnp.float32) + _low_rank_product(params)).astype(
            kernel.dtype
        )
    return merged


def has_adapters(params: Any) -> bool:
    """Whether a parameter tree holds LoRA adapters."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return any(path and _key_name(path[-1]) == LORA_A for path, _ in leaves)


def _adapter_delta(module: nn.Module, x: Array, out: Array, dropout_rate: float) -> Array:
    """``scale * dropout(x) A B`` for one call of an adapted module."""
    a: Array = module.get_variable("params", LORA_A)
    b: Array = module.get_variable("params", LORA_B)
    scale: Array = module.get_variable("params", LORA_SCALE)
    num_in = a.ndim - 1
    if x.shape[x.ndim - num_in :] != a.shape[:-1]:
        raise ValueError(
            f"LoRA on {'/'.join(module.path)}: the module's input {x.shape} does not end "
            f"with the kernel's input dims {a.shape[:-1]}; this module cannot be adapted "
            "in activation space (remove it from LoraConfig.targets)"
        )
    if dropout_rate > 0:
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - dropout_rate, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout_rate), jnp.zeros_like(x))
    dtype = out.dtype
    down = jnp.tensordot(x.astype(dtype), a.astype(dtype), axes=num_in)  # [..., rank]
    delta = jnp.tensordot(down, b.astype(dtype), axes=1)  # [..., *out]
    if delta.shape != out.shape:
        raise ValueError(
            f"LoRA on {'/'.join(module.path)}: the adapter gives {delta.shape}, the module "
            f"{out.shape}; its kernel's dims are not [inputs..., outputs...] as assumed"
        )
    return delta * scale.astype(dtype)


@contextlib.contextmanager
def applied_adapters(*, dropout_rate: float = 0.0) -> Iterator[None]:
    """Within the block, every flax module call whose params hold an adapter adds its output.

    Args:
        dropout_rate: dropout on the adapters' inputs (training; needs a "dropout" rng in
            the ``apply``).
    """

    def intercept(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or not module.has_variable("params", LORA_A):
            return out
        return out + _adapter_delta(module, args[0], out, dropout_rate)

    with nn.intercept_methods(intercept):
        yield


@dataclasses.dataclass(frozen=True)
class LoraModel:
    """A :class:`Model` with LoRA adapters on the kernels ``lora.targets`` select.

    Implements :class:`flan_jax.models.interface.AdaptedModel`: the trainer updates the
    adapters only; ``config`` is the base's architecture (so an initial checkpoint of the
    base model is accepted). A LoRA run's checkpoints hold the base parameters and the
    adapters; :func:`export_merged_checkpoint` turns one into a base-model checkpoint.

    Attributes:
        base: the model to adapt.
        lora: rank, alpha, dropout and targets.
    """

    base: Model
    lora: LoraConfig

    def __post_init__(self) -> None:
        self.kernels  # noqa: B018  # Bad targets fail here, when the model is built.

    @property
    def kernels(self) -> tuple[AdaptedKernel, ...]:
        """The adapted kernels."""
        return select_kernels(self.base, self.lora)  # type: ignore[arg-type]  # frozen dataclass

    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    @property
    def feature_format(self) -> Any:
        return self.base.feature_format

    def replace_config(self, **changes: Any) -> LoraModel:
        from flan_jax.models.interface import replace_config

        return dataclasses.replace(self, base=replace_config(self.base, **changes))

    def init_params(self, rng: Array) -> Params:
        base_rng, adapter_rng = jax.random.split(rng)
        return add_adapters(self.base.init_params(base_rng), self.kernels, self.lora, adapter_rng)

    def abstract_params(self) -> Params:
        return jax.eval_shape(self.init_params, jax.random.key(0))

    def param_logical_axes(self) -> Params:
        axes = self.base.param_logical_axes()
        for kernel in self.kernels:
            axes = _with_module(axes, kernel.path, kernel.adapter_axes())
        return axes

    def trainable_mask(self) -> Params:
        def trainable(path: Any, _: Any) -> bool:
            return _key_name(path[-1]) in TRAINABLE_LEAVES

        return jax.tree_util.tree_map_with_path(trainable, self.abstract_params())

    def initial_params_from_base(self, load_base: InitialParams, *, seed: int) -> InitialParams:
        def load(abstract_params: Any, shardings: Any) -> Params:
            base = load_base(remove_adapters(abstract_params), remove_adapters(shardings))
            rng = jax.random.split(jax.random.key(seed))[1]
            with_adapters = jax.jit(
                lambda p: add_adapters(p, self.kernels, self.lora, rng), out_shardings=shardings
            )
            return with_adapters(base)

        return load

    def hidden_states(
        self, params: Params, batch: Batch, *, dropout_rng: Array | None = None
    ) -> Array:
        rate = self.lora.dropout_rate if dropout_rng is not None else 0.0
        with applied_adapters(dropout_rate=rate):
            return self.base.hidden_states(params, batch, dropout_rng=dropout_rng)

    def output_kernel(self, params: Params) -> Array:
        # Only the output kernel's own merge survives jit's dead-code elimination.
        return self.base.output_kernel(merge_lora(params))

    def train_flops_per_step(self, *, batch_size: int, feature_lengths: Mapping[str, int]) -> float:
        # The base model's count: the adapters add about 2 r (in + out) per token and
        # kernel, and skip the base kernels' weight gradients (not subtracted).
        return self.base.train_flops_per_step(
            batch_size=batch_size, feature_lengths=feature_lengths
        )

    def make_scoring_batch(self, inputs: Array, targets: Array) -> Batch:
        return self.base.make_scoring_batch(inputs, targets)

    def init_decode_state(
        self, params: Params, inputs: Array, *, max_decode_len: int
    ) -> DecodeState:
        with applied_adapters():
            return self.base.init_decode_state(params, inputs, max_decode_len=max_decode_len)

    def decode_step(
        self, params: Params, state: DecodeState, tokens: Array
    ) -> tuple[Array, DecodeState]:
        with applied_adapters():
            return self.base.decode_step(params, state, tokens)

    def reorder_decode_state(self, state: DecodeState, indices: Array) -> DecodeState:
        return self.base.reorder_decode_state(state, indices)


def export_merged_checkpoint(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, step: int | None = None
) -> Path:
    """Writes a LoRA run's step as a normal checkpoint of the base model (adapters merged).

    Args:
        run_dir: the LoRA run's ``MODEL_DIR``.
        out_dir: the new checkpoint directory (``flan-jax infer``, ``convert --to-hf``).
        step: the step to export; the latest when None.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: if the step holds no adapters.
        flan_jax.checkpoints.CheckpointError: for a missing or unreadable step.
    """
    from flan_jax import checkpoints

    metadata = checkpoints.read_model_metadata(run_dir)
    step = checkpoints.find_step(run_dir, step)
    params = checkpoints.restore_params(run_dir, step=step, target=None)
    if not has_adapters(params):
        raise ConfigError(f"{run_dir} step {step} holds no LoRA adapters: nothing to merge")
    merged = jax.device_get(jax.jit(merge_lora)(params))
    return checkpoints.save_model_checkpoint(
        out_dir,
        params=merged,
        config=metadata.config,
        vocab_path=metadata.vocab_path,
        extra_ids=metadata.extra_ids,
        step=step,
    )
