"""LoRA on the tiny T5: target selection, zero-B identity, merged == adapted, decoding.

The merged reference is independent of the activation-space path under test: the base
model run on ``W + scale A B`` computed by :func:`lora.merge_lora` (a weight-space einsum),
and for one kernel by NumPy.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flan_jax.data import packing
from flan_jax.errors import ConfigError
from flan_jax.models import decoder, decoding, lora, t5
from flan_jax.models.interface import AdaptedModel, Model, get_trainable_mask
from flan_jax.testing.models import (
    DECODER_TEST_CONFIGS,
    make_tiny_decoder_config,
    make_tiny_t5_config,
)
from flan_jax.testing.training import make_random_batch

TOL = 1e-5  # f32, a few composed matmuls


def _base(scan: bool = False, **overrides) -> t5.T5Model:
    return t5.T5Model(
        make_tiny_t5_config(
            num_encoder_layers=2, num_decoder_layers=2, scan_layers=scan, **overrides
        )
    )


def _lora(base: Model, targets, *, rank=2, alpha=4.0, dropout_rate=0.0) -> lora.LoraModel:
    return lora.LoraModel(
        base, lora.LoraConfig(rank=rank, alpha=alpha, dropout_rate=dropout_rate, targets=targets)
    )


def _randomize_b(params, seed=1, scale=0.2):
    """Random B factors, so the adapters change the outputs."""

    def draw(path, leaf):
        if path[-1].key != lora.LORA_B:
            return leaf
        key = jax.random.fold_in(jax.random.key(seed), hash(jax.tree_util.keystr(path)) % 2**31)
        return jax.random.normal(key, leaf.shape) * scale

    return jax.tree_util.tree_map_with_path(draw, params)


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: Model, params, batch, dropout_rng=None):
    hidden = model.hidden_states(params, batch, dropout_rng=dropout_rng)
    return hidden @ model.output_kernel(params)


BATCH = make_random_batch(0, 3, 7, 6, 128)
ALL_ATTENTION_AND_MLP = ("attention/(query|key|value|out)/", "mlp/", "logits_dense")


# ------------------------------------------------------------------------------------------
# Target selection
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "axes, expected",
    [
        (("embed", "mlp"), (0, 1)),
        (("mlp", "embed"), (0, 1)),
        (("embed", "heads", "kv"), (0, 1)),
        (("heads", "kv", "embed"), (0, 2)),
        (("layers", "embed", "heads", "kv"), (1, 1)),
        (("layers", "heads", "kv", "embed"), (1, 2)),
        (("embed", "vocab"), (0, 1)),
        (("embed_proj", "embed"), (0, 1)),
    ],
)
def test_kernel_dims_split_into_inputs_and_outputs_by_logical_axes(axes, expected):
    assert lora.split_kernel_axes(axes) == expected


def test_path_targets_select_exactly_the_expected_kernels():
    model = _lora(_base(), ("attention/query", "decoder/layers_1/mlp/wo"))
    assert [k.name for k in model.kernels] == [
        "decoder/layers_0/encoder_decoder_attention/query/kernel",
        "decoder/layers_0/self_attention/query/kernel",
        "decoder/layers_1/encoder_decoder_attention/query/kernel",
        "decoder/layers_1/mlp/wo/kernel",
        "decoder/layers_1/self_attention/query/kernel",
        "encoder/layers_0/attention/query/kernel",
        "encoder/layers_1/attention/query/kernel",
    ]


def test_targets_select_the_stacked_kernels_of_a_scanned_model():
    model = _lora(_base(scan=True), ("self_attention/(query|value)", "embed->mlp"))
    selected = {k.name: (k.shape, k.num_stack, k.num_in) for k in model.kernels}
    assert selected == {
        "decoder/layers/mlp/wi_0/kernel": ((2, 32, 64), 1, 1),
        "decoder/layers/mlp/wi_1/kernel": ((2, 32, 64), 1, 1),
        "decoder/layers/self_attention/query/kernel": ((2, 32, 4, 8), 1, 1),
        "decoder/layers/self_attention/value/kernel": ((2, 32, 4, 8), 1, 1),
        "encoder/layers/mlp/wi_0/kernel": ((2, 32, 64), 1, 1),
        "encoder/layers/mlp/wi_1/kernel": ((2, 32, 64), 1, 1),
    }
    params = model.abstract_params()
    query = params["decoder"]["layers"]["self_attention"]["query"]
    assert query[lora.LORA_A].shape == (2, 32, 2)  # [layers, embed, rank]
    assert query[lora.LORA_B].shape == (2, 2, 4, 8)  # [layers, rank, heads, kv]
    assert query[lora.LORA_SCALE].shape == (2,)
    axes = model.param_logical_axes()["decoder"]["layers"]["self_attention"]["query"]
    assert axes[lora.LORA_A] == P("layers", "embed", None)
    assert axes[lora.LORA_B] == P("layers", None, "heads", "kv")
    assert axes[lora.LORA_SCALE] == P("layers")


def test_logical_axes_targets():
    model = _lora(_base(), ("heads->embed", "embed->heads,kv"))
    names = {k.name.split("/", 2)[-1] for k in model.kernels}
    assert names == {
        "attention/out/kernel",
        "attention/query/kernel",
        "attention/key/kernel",
        "attention/value/kernel",
        "self_attention/out/kernel",
        "self_attention/query/kernel",
        "self_attention/key/kernel",
        "self_attention/value/kernel",
        "encoder_decoder_attention/out/kernel",
        "encoder_decoder_attention/query/kernel",
        "encoder_decoder_attention/key/kernel",
        "encoder_decoder_attention/value/kernel",
    }
    assert len(model.kernels) == 4 * 2 + 8 * 2  # encoder 4 per layer, decoder 8 per layer
    out_kernel = next(k for k in model.kernels if k.name.endswith("attention/out/kernel"))
    assert model.init_params(jax.random.key(0))["encoder"]["layers_0"]["attention"]["out"][
        lora.LORA_A
    ].shape == (4, 8, 2)  # [heads, kv, rank]: the out projection reads heads x kv
    assert out_kernel.num_in == 2


def test_targets_that_select_nothing_are_one_error_naming_them():
    with pytest.raises(ConfigError) as raised:
        _lora(_base(), ("attention/query", "attn/q_proj", "embed->nothing"))
    message = str(raised.value)
    assert "'attn/q_proj', 'embed->nothing' select no kernel" in message
    assert "encoder/layers_*/attention/query/kernel ('embed', 'heads', 'kv')" in message
    assert "'attention/query'" not in message.split(" select")[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(targets=("attention/(query",)), "not a valid regular expression"),
        (dict(targets=("embed->",)), "is not 'IN->OUT'"),
        (dict(targets=()), "targets is empty"),
        (dict(targets="attention/query"), "must be a list of patterns"),
        (dict(rank=0), "rank must be a positive int"),
        (dict(alpha=0.0), "alpha must be > 0"),
        (dict(dropout_rate=1.0), "dropout_rate must be in [0, 1)"),
    ],
)
def test_bad_lora_config_fields_are_named(overrides, message):
    fields: dict = dict(rank=2, alpha=4.0, targets=("query",))
    fields.update(overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        lora.LoraConfig(**fields)


def test_lora_model_is_an_adapted_model_with_only_the_factors_trainable():
    model = _lora(_base(), ("attention/query",))
    assert isinstance(model, Model) and isinstance(model, AdaptedModel)
    assert not isinstance(model.base, AdaptedModel) and get_trainable_mask(model.base) is None
    mask = get_trainable_mask(model)
    flat = {
        jax.tree_util.keystr(path): value
        for path, value in jax.tree_util.tree_flatten_with_path(mask)[0]
    }
    trainable = sorted(name for name, value in flat.items() if value)
    assert len(trainable) == 2 * len(model.kernels)
    assert all(name.endswith(("['lora_a']", "['lora_b']")) for name in trainable)
    assert jax.tree.structure(mask) == jax.tree.structure(model.abstract_params())
    # Axes cover every parameter with the right rank.
    shapes = jax.tree.leaves(model.abstract_params())
    axes = jax.tree.leaves(model.param_logical_axes(), is_leaf=lambda x: isinstance(x, P))
    assert [len(s.shape) for s in shapes] == [len(a) for a in axes]


# ------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_zero_b_outputs_equal_the_base_model_exactly(scan):
    base = _base(scan=scan, dropout_rate=0.2)
    model = _lora(base, ALL_ATTENTION_AND_MLP, dropout_rate=0.3)
    params = model.init_params(jax.random.key(0))
    base_params = lora.remove_adapters(params)
    assert np.abs(np.asarray(jax.tree.leaves(params)[0])).sum() > 0
    np.testing.assert_array_equal(_logits(model, params, BATCH), _logits(base, base_params, BATCH))
    # With dropout (the base's and the adapters'): the base's masks do not move.
    rng = jax.random.key(7)
    np.testing.assert_array_equal(
        _logits(model, params, BATCH, rng), _logits(base, base_params, BATCH, rng)
    )


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_adapters_plus_base_equal_the_merged_weights(scan):
    # The scanned stack is also rematerialised: adapters inside nn.scan of nn.remat.
    base = _base(scan=scan, remat_policy="full" if scan else "none")
    model = _lora(base, ALL_ATTENTION_AND_MLP)
    params = _randomize_b(model.init_params(jax.random.key(0)))
    merged = lora.merge_lora(params)
    assert jax.tree.structure(merged) == jax.tree.structure(base.abstract_params())
    adapted = _logits(model, params, BATCH)
    reference = _logits(base, merged, BATCH)
    assert np.abs(adapted - _logits(base, lora.remove_adapters(params), BATCH)).max() > 0.1
    np.testing.assert_allclose(adapted, reference, rtol=TOL, atol=TOL)


def test_merge_lora_folds_scale_a_b_into_the_kernel():
    model = _lora(_base(), ("heads->embed",), rank=3, alpha=6.0)
    params = _randomize_b(model.init_params(jax.random.key(0)))
    module = params["encoder"]["layers_0"]["attention"]["out"]
    a, b = np.asarray(module[lora.LORA_A], np.float64), np.asarray(module[lora.LORA_B], np.float64)
    expected = np.asarray(module["kernel"], np.float64) + 2.0 * np.einsum("hkr,rd->hkd", a, b)
    merged = lora.merge_lora(params)["encoder"]["layers_0"]["attention"]["out"]
    assert set(merged) == {"kernel"}
    np.testing.assert_allclose(merged["kernel"], expected, rtol=TOL, atol=TOL)


def test_adapter_dropout_applies_per_call_and_only_when_training():
    model = _lora(_base(), ("attention/query",), dropout_rate=0.5)
    params = _randomize_b(model.init_params(jax.random.key(0)))
    plain = _logits(model, params, BATCH)
    first = _logits(model, params, BATCH, jax.random.key(1))
    again = _logits(model, params, BATCH, jax.random.key(1))
    other = _logits(model, params, BATCH, jax.random.key(2))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - plain).max() > 1e-3 and np.abs(first - other).max() > 1e-3
    no_dropout = _lora(_base(), ("attention/query",), dropout_rate=0.0)
    np.testing.assert_array_equal(_logits(no_dropout, params, BATCH, jax.random.key(1)), plain)


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_decoding_goes_through_the_adapters(scan):
    base = t5.T5Model(make_tiny_t5_config(scan_layers=scan))
    model = _lora(base, ALL_ATTENTION_AND_MLP)
    params = _randomize_b(model.init_params(jax.random.key(0)))
    inputs = jnp.asarray(BATCH["encoder_input_tokens"])
    adapted = decoding.greedy_decode(model, params, inputs, max_decode_len=6)
    merged = decoding.greedy_decode(base, lora.merge_lora(params), inputs, max_decode_len=6)
    np.testing.assert_array_equal(adapted.tokens, merged.tokens)
    scored = decoding.score_targets(
        model, params, inputs, jnp.asarray(BATCH["decoder_target_tokens"])
    )
    expected = decoding.score_targets(
        base, lora.merge_lora(params), inputs, jnp.asarray(BATCH["decoder_target_tokens"])
    )
    np.testing.assert_allclose(scored, expected, rtol=TOL, atol=1e-4)


# ------------------------------------------------------------------------------------------
# The decoder-only model (the same adapters through its own kernels)
# ------------------------------------------------------------------------------------------
DECODER_TARGETS = ("attention/(query|key|value|out)/", "mlp/")


def _decoder_case(name: str):
    base = decoder.DecoderModel(make_tiny_decoder_config(name))
    examples = [
        {"inputs": np.array([5, 6, 7, 1]), "targets": np.array([8, 9, 1])},
        {"inputs": np.array([10, 1]), "targets": np.array([11, 12, 13, 1])},
    ]
    batch = packing.pack_examples(
        examples, packing.FeatureLengths(6, 6), feature_format=base.feature_format
    )
    return base, {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("name", sorted(DECODER_TEST_CONFIGS))
def test_decoder_lora_zero_b_equals_the_base_and_merged_equals_adapted(name):
    base, batch = _decoder_case(name)
    model = _lora(base, DECODER_TARGETS)
    params = model.init_params(jax.random.key(0))
    base_params = lora.remove_adapters(params)
    # Equal up to float rounding: XLA may fuse "+ bias + 0-delta" in another order.
    np.testing.assert_allclose(
        _logits(model, params, batch), _logits(base, base_params, batch), rtol=0, atol=1e-6
    )
    params = _randomize_b(params)
    adapted = _logits(model, params, batch)
    assert np.abs(adapted - _logits(base, base_params, batch)).max() > 0.1
    np.testing.assert_allclose(
        adapted, _logits(base, lora.merge_lora(params), batch), rtol=TOL, atol=TOL
    )


def test_decoder_lora_decoding_goes_through_the_adapters():
    base, _ = _decoder_case("llama_gqa_scaled_rope")
    model = _lora(base, DECODER_TARGETS)
    params = _randomize_b(model.init_params(jax.random.key(0)))
    prompts = jnp.asarray([[5, 6, 7, 1], [10, 1, 0, 0]])
    adapted = decoding.greedy_decode(model, params, prompts, max_decode_len=5)
    merged = decoding.greedy_decode(base, lora.merge_lora(params), prompts, max_decode_len=5)
    np.testing.assert_array_equal(adapted.tokens, merged.tokens)
