"""Packing leaks nothing: a packed segment's loss and gradients ignore its neighbour.

One row packs segment A and segment B by hand. The loss of A's tokens and its gradient
with respect to every parameter must not change when B's tokens change, and must equal
the loss and gradient of A alone in an unpacked row.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import t5
from flan_jax.testing import training
from flan_jax.testing.models import make_tiny_t5_config
from flan_jax.training import losses

ENC_LEN, DEC_LEN = 16, 10
LOSS = losses.LossConfig(z_loss=1e-4, label_smoothing=0.1)


@pytest.fixture(scope="module")
def model_and_params():
    config = make_tiny_t5_config()
    return t5.T5Model(config), t5.init_params(config, jax.random.key(3))


def _segment_loss_and_grads(model, params, batch, segment):
    weights = jnp.asarray(batch["decoder_loss_weights"])
    if segment is not None:
        weights = weights * (batch["decoder_segment_ids"] == segment)

    def loss_fn(p):
        hidden = model.hidden_states(p, batch)
        stats = losses.compute_loss(
            hidden, t5.output_kernel(p), batch, LOSS, weights=weights, factor=jnp.ones(())
        )
        return stats.loss

    return jax.jit(jax.value_and_grad(loss_fn))(params)


def _flat(loss, grads):
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    return {"loss": np.asarray(loss), **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}}


def test_other_segment_does_not_leak(model_and_params):
    model, params = model_and_params
    a = {"inputs": [5, 17, 9, 33, 1], "targets": [44, 12, 7, 1]}
    b1 = {"inputs": [8, 60, 21, 1], "targets": [90, 3, 1]}
    b2 = {"inputs": [99, 14, 71, 120, 6, 1], "targets": [15, 15, 80, 1]}  # other tokens, lengths
    packed1 = training.pack_examples([a, b1], ENC_LEN, DEC_LEN)
    packed2 = training.pack_examples([a, b2], ENC_LEN, DEC_LEN)
    alone = training.pack_examples([a], ENC_LEN, DEC_LEN)
    alone = {k: v for k, v in alone.items() if "segment" not in k and "positions" not in k}

    first = _flat(*_segment_loss_and_grads(model, params, packed1, segment=1))
    second = _flat(*_segment_loss_and_grads(model, params, packed2, segment=1))
    unpacked = _flat(*_segment_loss_and_grads(model, params, alone, segment=None))
    assert float(first["loss"]) > 0
    training.assert_results_match(second, first, rtol=1e-5)
    training.assert_results_match(first, unpacked, rtol=1e-5)
    # Sanity: segment B's own loss does change with its tokens.
    b_first = _segment_loss_and_grads(model, params, packed1, segment=2)[0]
    b_second = _segment_loss_and_grads(model, params, packed2, segment=2)[0]
    assert abs(float(b_first) - float(b_second)) > 1e-3
