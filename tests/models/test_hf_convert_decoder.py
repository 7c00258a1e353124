"""config.json <-> DecoderConfig, and the errors for what flan_jax cannot express."""

from __future__ import annotations

import re

import numpy as np
import pytest

from flan_jax.models import hf_convert_decoder
from flan_jax.models.config import DecoderConfig
from flan_jax.models.hf_convert import ConversionError
from flan_jax.testing.hf_decoders import HF_PARITY_CONFIGS

# The rope fields of Llama 3.1 8B's config.json (Hugging Face meta-llama/Llama-3.1-8B).
LLAMA31 = dict(
    model_type="llama",
    vocab_size=128256,
    hidden_size=4096,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_hidden_layers=32,
    intermediate_size=14336,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    bos_token_id=128000,
    eos_token_id=128001,
    rope_theta=500000.0,
    rope_scaling={
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    tie_word_embeddings=False,
)


def test_llama31_rope_scaling_in_either_format():
    legacy = hf_convert_decoder.config_from_hf(LLAMA31)
    assert (legacy.rope_theta, legacy.rope_scaling_factor) == (500000.0, 8.0)
    assert (legacy.rope_low_freq_factor, legacy.rope_high_freq_factor) == (1.0, 4.0)
    assert (legacy.rope_original_max_length, legacy.start_token_id) == (8192, 128000)
    assert (legacy.num_kv_heads, legacy.head_dim, legacy.family) == (8, 128, "llama")
    # transformers 5 writes rope_parameters (theta inside) instead.
    v5 = {k: v for k, v in LLAMA31.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {**LLAMA31["rope_scaling"], "rope_theta": 500000.0}
    assert hf_convert_decoder.config_from_hf(v5) == legacy


@pytest.mark.parametrize("name", sorted(HF_PARITY_CONFIGS))
def test_config_round_trips(name):
    config = hf_convert_decoder.config_from_hf(HF_PARITY_CONFIGS[name])
    exported = hf_convert_decoder.hf_config_from_config(config, eos_token_id=2)
    assert exported["model_type"] == HF_PARITY_CONFIGS[name]["model_type"]
    assert hf_convert_decoder.config_from_hf(exported) == config


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling.rope_type='yarn'"),
        (
            dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4}),
            "rope_parameters.rope_type='dynamic'",
        ),
        (dict(mlp_bias=False), "attention_bias=True with mlp_bias=False"),
        (dict(hidden_act="gelu"), "hidden_act='gelu'"),
        (dict(bos_token_id=None), "bos_token_id is missing"),
        (dict(num_key_value_heads=3), "num_kv_heads"),
        (dict(model_type="gpt2"), "model_type='gpt2'"),
    ],
)
def test_unsupported_llama_options_name_the_field(change, message):
    hf = {**HF_PARITY_CONFIGS["llama_gqa_tied_biases"], **change}
    with pytest.raises(ConversionError, match="^my/config.json: .*" + re.escape(message)):
        hf_convert_decoder.config_from_hf(hf, source="my/config.json")


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(activation_function="gelu"), "activation_function='gelu'"),
        (dict(_remove_final_layer_norm=True), "_remove_final_layer_norm=True"),
        (dict(layer_norm_elementwise_affine=False), "layer_norm_elementwise_affine=False"),
        (dict(hidden_size=31), "not a multiple of num_attention_heads"),
    ],
)
def test_unsupported_opt_options_name_the_field(change, message):
    hf = {**HF_PARITY_CONFIGS["opt_pre_norm_odd_heads"], **change}
    with pytest.raises(ConversionError, match="^config.json: .*" + re.escape(message)):
        hf_convert_decoder.config_from_hf(hf)


def test_missing_fields_are_named():
    hf = {k: v for k, v in HF_PARITY_CONFIGS["opt_pre_norm_odd_heads"].items() if k != "ffn_dim"}
    with pytest.raises(ConversionError, match=re.escape("missing opt field(s) ['ffn_dim']")):
        hf_convert_decoder.config_from_hf(hf)


def test_missing_bos_can_be_given():
    hf = {**HF_PARITY_CONFIGS["llama_gqa_tied_biases"], "bos_token_id": None}
    assert hf_convert_decoder.config_from_hf(hf, start_token_id=5).start_token_id == 5


def test_post_norm_opt_has_no_final_norm_and_projects():
    config = hf_convert_decoder.config_from_hf(HF_PARITY_CONFIGS["opt_post_norm_projected"])
    assert (config.pre_norm, config.word_embed_proj_dim, config.tie_word_embeddings) == (
        False,
        20,
        True,
    )
    names = [name for name, _, _ in hf_convert_decoder.name_table(config)]
    assert "model.decoder.final_layer_norm.weight" not in names
    assert "model.decoder.project_in.weight" in names and "lm_head.weight" not in names
    same_width = hf_convert_decoder.config_from_hf(HF_PARITY_CONFIGS["opt_pre_norm_odd_heads"])
    assert same_width.word_embed_proj_dim is None


def test_bad_tensors_are_listed():
    config = hf_convert_decoder.config_from_hf(HF_PARITY_CONFIGS["llama_gqa_tied_biases"])
    table = hf_convert_decoder.name_table(config)
    state = {name: np.zeros((1,), np.float32) for name, _, _ in table if "layers.1." not in name}
    state["model.extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ConversionError) as error:
        hf_convert_decoder.params_from_hf_state_dict(state, config, source="dir")
    text = str(error.value)
    assert "unexpected model.extra.weight" in text
    assert "model.embed_tokens.weight has shape (1,), config expects (320, 32)" in text
    assert "missing model.layers.1.self_attn.k_proj.weight (16, 32)" in text or "more" in text


def test_a_tied_lm_head_that_differs_is_refused():
    config = hf_convert_decoder.config_from_hf(HF_PARITY_CONFIGS["llama_gqa_tied_biases"])
    state = {"model.embed_tokens.weight": np.zeros((320, 32), np.float32)}
    state["lm_head.weight"] = np.ones((320, 32), np.float32)
    with pytest.raises(ConversionError, match="lm_head.weight differs"):
        hf_convert_decoder.params_from_hf_state_dict(state, config)


def test_export_refuses_what_transformers_cannot_express():
    prefix_lm = DecoderConfig(vocab_size=64, prefix_lm=True)
    with pytest.raises(ConversionError, match="prefix_lm"):
        hf_convert_decoder.hf_config_from_config(prefix_lm, eos_token_id=1)
    mixed = DecoderConfig(vocab_size=64, norm="layernorm")
    with pytest.raises(ConversionError, match="'norm': 'layernorm'"):
        hf_convert_decoder.hf_config_from_config(mixed, eos_token_id=1)


def test_base_model_names_and_rotary_buffers_are_accepted():
    # facebook/opt-* store OPTModel tensors (no "model." prefix); old Llama files hold
    # rotary inv_freq buffers.
    config = hf_convert_decoder.config_from_hf(HF_PARITY_CONFIGS["opt_pre_norm_odd_heads"])
    from flan_jax.models.decoder import abstract_params
    from flan_jax.models.hf_convert import to_torch

    abstract = abstract_params(config)
    state = {}
    for name, path, layout in hf_convert_decoder.name_table(config):
        leaf = abstract
        for key in path:
            leaf = leaf[key]
        state[name.removeprefix("model.")] = to_torch(np.ones(leaf.shape, np.float32), layout)
    state["decoder.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(3, np.float32)
    params = hf_convert_decoder.params_from_hf_state_dict(state, config)
    assert params["layers_1"]["attention"]["query"]["kernel"].shape == (30, 3, 10)
