"""The losses on decoder-only rows: every normalisation against a hand computation.

Decoder-only rows put inputs and targets in one stream with loss weights on the targets
only, and token id 0 can be a real token, so weights must come from
``decoder_loss_weights`` and sequences from segment ids, never from ``token != 0``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.data import packing
from flan_jax.training import losses

VOCAB, EMBED = 11, 8


def _rows():
    # Token 0 is real in inputs and targets; example 3 has no inputs.
    examples = [
        {"inputs": [0, 5, 1], "targets": [0, 7, 1]},
        {"inputs": [4, 1], "targets": [9, 1]},
        {"inputs": [], "targets": [3, 0, 2, 1]},
    ]
    examples = [{k: np.array(v, np.int32) for k, v in e.items()} for e in examples]
    return examples, packing.FeatureLengths(4, 4)


def _hidden_and_kernel(shape):
    k1, k2 = jax.random.split(jax.random.key(0))
    return jax.random.normal(k1, (*shape, EMBED)), jax.random.normal(k2, (EMBED, VOCAB))


def _hand_nll(hidden, kernel, targets):
    logits = np.asarray(hidden, np.float64) @ np.asarray(kernel, np.float64)
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]


def _hand_losses(examples, nll_of, loss_on_inputs):
    """Per example, the NLLs of its weighted tokens, from the examples alone."""
    out = []
    for i, example in enumerate(examples):
        n_in, n_tgt = len(example["inputs"]), len(example["targets"])
        first = 0 if loss_on_inputs else n_in
        out.append(nll_of(i)[first : n_in + n_tgt])
    return out


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("loss_on_inputs", [False, True])
@pytest.mark.parametrize("normalization", ["sum", "num_real_target_tokens", "average_per_sequence"])
def test_loss_of_decoder_only_rows_equals_a_hand_computation(pack, loss_on_inputs, normalization):
    examples, lengths = _rows()
    layout = {"feature_format": packing.DecoderOnlyFormat(), "loss_on_inputs": loss_on_inputs}
    make = packing.pack_examples if pack else packing.pad_examples
    batch = make(examples, lengths, **layout)
    assert len(batch["decoder_target_tokens"]) == (2 if pack else 3)
    hidden, kernel = _hidden_and_kernel(batch["decoder_target_tokens"].shape)
    nll = _hand_nll(hidden, kernel, batch["decoder_target_tokens"])

    def nll_of(i):
        # Example i's positions, found by its tokens (independent of the row layout).
        tokens = np.concatenate([examples[i]["inputs"], examples[i]["targets"]])
        for r, row in enumerate(batch["decoder_segment_ids"]):
            for segment in set(row[row > 0].tolist()):
                mask = row == segment
                if np.array_equal(batch["decoder_target_tokens"][r][mask], tokens):
                    return nll[r][mask]
        raise AssertionError(f"example {i} not found")

    per_example = _hand_losses(examples, nll_of, loss_on_inputs)
    if normalization == "sum":
        want = sum(x.sum() for x in per_example)
    elif normalization == "num_real_target_tokens":
        want = sum(x.sum() for x in per_example) / sum(len(x) for x in per_example)
    else:
        want = np.mean([x.mean() for x in per_example])
    config = losses.LossConfig(z_loss=0.0, normalization=normalization)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    stats = losses.compute_loss(hidden, kernel, batch, config)
    np.testing.assert_allclose(float(stats.loss), want, rtol=1e-5)
    assert float(stats.num_real_target_tokens) == sum(len(x) for x in per_example)
    assert float(losses.count_sequences(batch)) == len(examples)


def test_input_positions_get_exactly_zero_gradient():
    examples, lengths = _rows()
    batch = packing.pack_examples(examples, lengths, feature_format=packing.DecoderOnlyFormat())
    hidden, kernel = _hidden_and_kernel(batch["decoder_target_tokens"].shape)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    config = losses.LossConfig(normalization="sum")  # z-loss on, as in training

    grad = jax.grad(lambda h: losses.compute_loss(h, kernel, batch, config).loss)(hidden)
    weighted = np.asarray(batch["decoder_loss_weights"]) > 0
    # Inputs and padding: exactly zero. Targets: not.
    assert not np.asarray(grad)[~weighted].any()
    assert (np.abs(np.asarray(grad)[weighted]).sum(-1) > 0).all()
