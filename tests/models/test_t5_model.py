"""Self-consistency of the flan_jax T5: packing, scanned layers, remat, hidden states."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import t5
from flan_jax.models.config import T5Config
from flan_jax.models.hf_convert import hf_state_dict_from_params, params_from_hf_state_dict
from flan_jax.testing.models import make_tiny_t5_config


def _scanned_copy(params, config):
    """The same weights in the scanned layout, via the (exact) Hugging Face name table."""
    return params_from_hf_state_dict(
        hf_state_dict_from_params(params, config), config.replace(scan_layers=True)
    )


def test_packed_rows_equal_examples_run_alone():
    config = make_tiny_t5_config(num_encoder_layers=2, num_decoder_layers=2)
    params = t5.init_params(config, jax.random.key(0))
    model = t5.EncoderDecoder(config)
    examples = [([5, 9, 13, 4, 1], [0, 7, 8, 11]), ([6, 22, 31, 17, 40, 1], [0, 19, 3])]
    enc_tokens, dec_tokens = np.zeros((1, 14), np.int32), np.zeros((1, 9), np.int32)
    enc_seg, dec_seg = np.zeros_like(enc_tokens), np.zeros_like(dec_tokens)
    enc_pos, dec_pos = np.zeros_like(enc_tokens), np.zeros_like(dec_tokens)
    enc_start = dec_start = 0
    spans = []
    for segment, (enc, dec) in enumerate(examples, start=1):
        enc_end, dec_end = enc_start + len(enc), dec_start + len(dec)
        enc_tokens[0, enc_start:enc_end], dec_tokens[0, dec_start:dec_end] = enc, dec
        enc_seg[0, enc_start:enc_end], dec_seg[0, dec_start:dec_end] = segment, segment
        enc_pos[0, enc_start:enc_end] = np.arange(len(enc))
        dec_pos[0, dec_start:dec_end] = np.arange(len(dec))
        spans.append((dec_start, dec_end))
        enc_start, dec_start = enc_end, dec_end
    packed = model.apply(
        {"params": params},
        enc_tokens,
        dec_tokens,
        encoder_segment_ids=enc_seg,
        decoder_segment_ids=dec_seg,
        encoder_positions=enc_pos,
        decoder_positions=dec_pos,
    )
    for (enc, dec), (start, end) in zip(examples, spans):
        alone = model.apply({"params": params}, np.array([enc]), np.array([dec]))
        np.testing.assert_allclose(
            np.asarray(packed[0, start:end]), np.asarray(alone[0]), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("remat_policy", ["none", "full", "dots_no_batch"])
def test_scanned_layers_give_the_same_logits_and_gradients(remat_policy):
    config = make_tiny_t5_config(num_encoder_layers=3, num_decoder_layers=2)
    params = t5.init_params(config, jax.random.key(1))
    scanned_config = config.replace(scan_layers=True, remat_policy=remat_policy)
    scanned = _scanned_copy(params, config)
    enc = jnp.array([[4, 8, 15, 16, 23, 1, 0]])
    dec = jnp.array([[0, 42, 7, 9]])

    def loss(p, cfg):
        logits = t5.EncoderDecoder(cfg).apply({"params": p}, enc, dec)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 3]), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params, config)
    (_, scanned_logits), scanned_grads = jax.value_and_grad(loss, has_aux=True)(
        scanned, scanned_config
    )
    np.testing.assert_allclose(np.asarray(scanned_logits), np.asarray(logits), atol=1e-5, rtol=1e-5)
    expected = hf_state_dict_from_params(grads, config)
    for key, value in hf_state_dict_from_params(scanned_grads, scanned_config).items():
        np.testing.assert_allclose(value, expected[key], atol=1e-5, rtol=1e-4, err_msg=key)


@pytest.mark.parametrize("tied", [False, True])
def test_hidden_times_output_kernel_equals_logits(tied):
    config = make_tiny_t5_config(tie_word_embeddings=tied)
    params = t5.init_params(config, jax.random.key(2))
    model = t5.EncoderDecoder(config)
    enc, dec = jnp.array([[3, 9, 27, 1]]), jnp.array([[0, 5, 6]])
    logits = model.apply({"params": params}, enc, dec)
    hidden = model.apply({"params": params}, enc, dec, return_hidden=True)
    assert hidden.shape == (1, 3, config.emb_dim)
    np.testing.assert_allclose(
        np.asarray(hidden @ t5.output_kernel(params)), np.asarray(logits), atol=1e-5, rtol=1e-5
    )


def test_dropout_is_active_only_when_enabled():
    config = make_tiny_t5_config(dropout_rate=0.3)
    params = t5.init_params(config, jax.random.key(3))
    model = t5.EncoderDecoder(config)
    enc, dec = jnp.array([[3, 9, 27, 1]]), jnp.array([[0, 5, 6]])
    plain = model.apply({"params": params}, enc, dec)
    again = model.apply({"params": params}, enc, dec, rngs={"dropout": jax.random.key(1)})
    dropped = model.apply(
        {"params": params}, enc, dec, enable_dropout=True, rngs={"dropout": jax.random.key(1)}
    )
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(again))
    assert not np.allclose(np.asarray(plain), np.asarray(dropped))


def test_bfloat16_activations_keep_float32_params_and_logits():
    config = make_tiny_t5_config(dtype="bfloat16")
    params = t5.init_params(config, jax.random.key(4))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    logits = t5.EncoderDecoder(config).apply(
        {"params": params}, jnp.array([[3, 9, 1]]), jnp.array([[0, 5]])
    )
    reference = t5.EncoderDecoder(config.replace(dtype="float32")).apply(
        {"params": params}, jnp.array([[3, 9, 1]]), jnp.array([[0, 5]])
    )
    assert logits.dtype == jnp.float32
    # bf16 has 8 mantissa bits; this only guards against a broken cast path.
    np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), atol=0.1)


def test_param_logical_axes_follow_t5x_names():
    axes = t5.param_logical_axes(make_tiny_t5_config())
    assert tuple(axes["token_embedder"]["embedding"]) == ("vocab", "embed")
    layer = axes["encoder"]["layers_0"]
    assert tuple(layer["attention"]["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(layer["attention"]["out"]["kernel"]) == ("heads", "kv", "embed")
    assert tuple(layer["mlp"]["wo"]["kernel"]) == ("mlp", "embed")
    assert tuple(axes["decoder"]["logits_dense"]["kernel"]) == ("embed", "vocab")
    assert tuple(axes["decoder"]["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")
    scanned = t5.param_logical_axes(make_tiny_t5_config(scan_layers=True))
    assert tuple(scanned["decoder"]["layers"]["mlp"]["wi_0"]["kernel"]) == (
        "layers",
        "embed",
        "mlp",
    )


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("num_heads", 0, "num_heads must be a positive int"),
        ("feed_forward", "swiglu", "feed_forward must be one of"),
        ("dtype", "float16", "dtype must be one of"),
        ("remat_policy", "some", "remat_policy must be one of"),
    ],
)
def test_config_rejects_bad_fields_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        make_tiny_t5_config(**{field: value})


def test_config_json_round_trip_and_unknown_keys():
    config = make_tiny_t5_config(scan_layers=True)
    assert T5Config.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match=r"x.json: unknown T5Config field\(s\) \['d_model'\]"):
        T5Config.from_dict({"d_model": 3}, source="x.json")
