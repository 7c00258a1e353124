"""`targets_loss_mask`: a per-token 0/1 mask on the targets' loss weights, both formats.

Hand-written rows (the packing module's worked example with a mask added), absent mask
== all-ones mask == the rows before the feature existed, and the loss of a real tiny
decoder on packed rows equal to the loss on unpacked rows with the same mask.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.data import packing
from flan_jax.models import decoder
from flan_jax.testing.models import make_tiny_decoder_config
from flan_jax.training import losses

MASK = packing.TARGETS_LOSS_MASK


def _examples(masks=None):
    # The module docstring's examples A, B, C.
    examples = [
        {"inputs": [11, 12, 1], "targets": [21, 1]},
        {"inputs": [13, 14, 15, 1], "targets": [22, 23, 1]},
        {"inputs": [16, 1], "targets": [24, 25, 26, 1]},
    ]
    for example, mask in zip(examples, masks or [None] * 3):
        if mask is not None:
            example[MASK] = mask
    return [{k: np.asarray(v, np.int32) for k, v in e.items()} for e in examples]


def test_decoder_only_packed_rows_by_hand():
    fmt = packing.DecoderOnlyFormat(start_token_id=2, prefix_lm=True)
    batch = packing.pack_examples(
        _examples([None, [0, 1, 1], None]), packing.FeatureLengths(8, 6), feature_format=fmt
    )
    np.testing.assert_array_equal(
        batch["decoder_target_tokens"][0], [13, 14, 15, 1, 22, 23, 1, 16, 1, 24, 25, 26, 1, 0]
    )
    np.testing.assert_array_equal(
        batch["decoder_loss_weights"],
        [[0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1] + [0] * 9],
    )


def test_decoder_only_mask_on_empty_inputs_with_loss_on_inputs():
    # The synthesizer's layout: no inputs, the mask says which target tokens count; with
    # loss_on_inputs the (absent) inputs add nothing and the mask still applies.
    example = {"inputs": np.zeros([0], np.int32), "targets": np.array([0, 7, 8, 9, 1], np.int32)}
    example[MASK] = np.array([0, 0, 1, 1, 1], np.int32)
    for loss_on_inputs in (False, True):
        batch = packing.pad_examples(
            [example],
            packing.FeatureLengths(2, 6),
            feature_format=packing.DecoderOnlyFormat(),
            loss_on_inputs=loss_on_inputs,
        )
        np.testing.assert_array_equal(batch["decoder_loss_weights"], [[0, 0, 1, 1, 1, 0, 0, 0]])


@pytest.mark.parametrize("pack", [True, False])
def test_encoder_decoder_rows_by_hand(pack):
    make = packing.pack_examples if pack else packing.pad_examples
    batch = make(_examples([[1, 0], None, [0, 1, 1, 1]]), packing.FeatureLengths(8, 6))
    if pack:  # the docstring's rows: C alone, then B and A
        want = [[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]]
    else:
        want = [[1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0]]
    np.testing.assert_array_equal(batch["decoder_loss_weights"], want)


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize(
    "fmt,loss_on_inputs",
    [
        (packing.EncoderDecoderFormat(), False),
        (packing.DecoderOnlyFormat(start_token_id=2, prefix_lm=True), False),
        (packing.DecoderOnlyFormat(), True),
    ],
)
def test_absent_mask_and_all_ones_mask_give_the_same_rows(pack, fmt, loss_on_inputs):
    make = packing.pack_examples if pack else packing.pad_examples
    layout = {"feature_format": fmt, "loss_on_inputs": loss_on_inputs}
    lengths = packing.FeatureLengths(8, 6)
    plain = make(_examples(), lengths, **layout)
    ones = make(_examples([[1, 1], [1, 1, 1], None]), lengths, **layout)
    assert plain.keys() == ones.keys()
    for name in plain:
        np.testing.assert_array_equal(ones[name], plain[name], err_msg=name)
        assert ones[name].dtype == plain[name].dtype


def test_mask_is_trimmed_with_its_targets():
    example = {"inputs": [5, 1], "targets": [7, 8, 9, 1], MASK: [1, 0, 1, 1]}
    trimmed = packing.trim_example(example, packing.FeatureLengths(2, 3))
    np.testing.assert_array_equal(trimmed[MASK], [1, 0, 1])
    # seqio trims the targets to the feature length but not the mask (not an output feature).
    seqio_trimmed = {"inputs": [5, 1], "targets": [7, 8], MASK: [1, 0, 1, 1]}
    trimmed = packing.trim_example(seqio_trimmed, packing.FeatureLengths(2, 3))
    np.testing.assert_array_equal(trimmed[MASK], [1, 0])


@pytest.mark.parametrize("mask", [[1, 1], [1, 2, 1], [[1, 1, 1]]])
def test_bad_mask_is_a_clear_error(mask):
    example = {"inputs": [5, 1], "targets": [7, 8, 1], MASK: mask}
    with pytest.raises(ValueError, match="targets_loss_mask must hold 0/1 for each target"):
        packing.trim_example(example, packing.FeatureLengths(4, 4))


def test_packed_loss_equals_unpacked_loss_with_a_mask():
    config = make_tiny_decoder_config("llama_gqa_scaled_rope")
    model = decoder.DecoderModel(config)
    params = model.init_params(jax.random.key(0))
    rng = np.random.default_rng(0)
    examples = []
    for n in range(6):
        targets = rng.integers(4, config.vocab_size, size=int(rng.integers(3, 9)))
        example = {"inputs": rng.integers(4, config.vocab_size, size=n % 3), "targets": targets}
        example[MASK] = (rng.random(len(targets)) < 0.6).astype(np.int32)
        examples.append(example)
    lengths = packing.FeatureLengths(2, 10)
    loss_config = losses.LossConfig(z_loss=1e-4, normalization="sum")

    def loss_of(batch):
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        hidden = model.hidden_states(params, batch)
        stats = losses.compute_loss(hidden, model.output_kernel(params), batch, loss_config)
        return float(stats.loss), float(stats.num_real_target_tokens)

    layout = {"feature_format": model.feature_format}
    packed = packing.pack_examples(examples, lengths, **layout)
    unpacked = packing.pad_examples(examples, lengths, **layout)
    assert len(packed["decoder_target_tokens"]) < len(examples)
    packed_loss, packed_tokens = loss_of(packed)
    unpacked_loss, unpacked_tokens = loss_of(unpacked)
    assert packed_tokens == unpacked_tokens == sum(int(e[MASK].sum()) for e in examples)
    np.testing.assert_allclose(packed_loss, unpacked_loss, rtol=1e-5)
    # The mask matters: without it the loss covers more tokens.
    unmasked = [{k: v for k, v in e.items() if k != MASK} for e in examples]
    assert loss_of(packing.pack_examples(unmasked, lengths, **layout))[1] > packed_tokens
