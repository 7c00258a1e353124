"""Adafactor against a NumPy implementation of the published algorithm (t5x conventions).

The reference follows Shazeer & Stern (2018), Algorithm 4 (factored) and 5 (unfactored),
written with row/column *sums* as in the paper (`V = R C / 1ᵀR`), while the library keeps
means; both give the same preconditioner, so a mismatch means a real bug. A parameter with
several column dims is treated as a matrix [rows, prod(columns)], a scanned-layers
parameter as independent matrices per layer.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from flan_jax.training import adafactor, schedules

RTOL = 1e-5  # single Adafactor steps compose few ops; f32 vs f64

# name: (shape, logical axes, expected role: "factored" | "unfactored")
PARAMS = {
    "embedding": ((160, 128), ("vocab", "embed"), "factored"),
    "wi": ((128, 256), ("embed", "mlp"), "factored"),
    "query": ((128, 4, 32), ("embed", "heads", "kv"), "factored"),
    "out": ((4, 32, 128), ("heads", "kv", "embed"), "factored"),
    "scale": ((128,), ("embed",), "unfactored"),
    "relpos": ((4, 32), ("heads", "relpos_buckets"), "unfactored"),
    "narrow": ((64, 256), ("embed", "mlp"), "unfactored"),  # 64 < min_dim_size_to_factor
    "stacked": ((2, 128, 256), ("layers", "embed", "mlp"), "factored"),
}


def _as_matrix(x, axes):
    """[batch..., rows, cols] view of a parameter: ROW dims, then COLUMN dims, per layer."""
    roles = [adafactor.LOGICAL_FACTOR_RULES[a] for a in axes]
    batch = [d for d, r in enumerate(roles) if r is adafactor.FactorDim.BATCH]
    rows = [d for d, r in enumerate(roles) if r is adafactor.FactorDim.ROW]
    cols = [d for d, r in enumerate(roles) if r is adafactor.FactorDim.COLUMN]
    moved = np.transpose(x, batch + rows + cols)
    nb = int(np.prod([x.shape[d] for d in batch]))
    nr = int(np.prod([x.shape[d] for d in rows]))
    return moved.reshape(nb, nr, -1)


class NumpyAdafactor:
    """One parameter's Adafactor, in float64, following the paper's notation."""

    def __init__(self, shape, axes, factored, cfg):
        self.shape, self.axes, self.factored, self.cfg = shape, axes, factored, cfg
        self.batched = bool(axes) and axes[0] == "layers"
        if factored:
            nb, nr, nc = _as_matrix(np.zeros(shape), axes).shape
            self.R, self.C = np.zeros((nb, nr)), np.zeros((nb, nc))
        else:
            self.V = np.zeros(shape)
        self.m = np.zeros(shape)

    def _rms(self, x):
        if self.batched:
            per_layer = np.sqrt(np.mean(x.reshape(x.shape[0], -1) ** 2, axis=1))
            return per_layer.reshape(-1, *[1] * (x.ndim - 1))
        return np.sqrt(np.mean(x**2))

    def step(self, X, G, t, lr):
        cfg = self.cfg
        beta2 = 1.0 - (t - cfg.step_offset + 1.0) ** (-cfg.decay_rate)
        G2 = G**2 + cfg.epsilon1
        if self.factored:
            g2 = _as_matrix(G2, self.axes)
            self.R = beta2 * self.R + (1 - beta2) * g2.sum(axis=2)
            self.C = beta2 * self.C + (1 - beta2) * g2.sum(axis=1)
            V = self.R[:, :, None] * self.C[:, None, :] / self.R.sum(axis=1)[:, None, None]
            U_mat = _as_matrix(G, self.axes) / np.sqrt(V)
            U = self._from_matrix(U_mat)
        else:
            self.V = beta2 * self.V + (1 - beta2) * G2
            U = G / np.sqrt(self.V)
        U = U / np.maximum(1.0, self._rms(U) / cfg.clipping_threshold)
        alpha = lr * np.maximum(cfg.epsilon2, self._rms(X))
        step = alpha * U
        if cfg.beta1 is not None:
            self.m = cfg.beta1 * self.m + (1 - cfg.beta1) * step
            step = self.m
        if cfg.weight_decay_rate is not None:
            step = step + cfg.weight_decay_rate * X
        return X - step

    def _from_matrix(self, mat):
        """Inverse of `_as_matrix`."""
        roles = [adafactor.LOGICAL_FACTOR_RULES[a] for a in self.axes]
        dims = adafactor.FactorDim
        order = [
            d
            for r in (dims.BATCH, dims.ROW, dims.COLUMN)
            for d, role in enumerate(roles)
            if role is r
        ]
        moved = mat.reshape([self.shape[d] for d in order])
        return np.transpose(moved, np.argsort(order))


def _run_both(cfg, schedule, num_steps, start_count=0, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        k: rng.normal(size=shape).astype(np.float32) * 0.05 for k, (shape, _, _) in PARAMS.items()
    }
    axes = {k: P(*names) for k, (_, names, _) in PARAMS.items()}
    tx = adafactor.adafactor(schedule, config=cfg, param_axes=axes)
    state = tx.init(params)
    state = state._replace(count=jnp.asarray(start_count, jnp.int32))
    update = jax.jit(tx.update)
    refs = {
        k: NumpyAdafactor(shape, names, role == "factored", cfg)
        for k, (shape, names, role) in PARAMS.items()
    }
    jax_params = {k: jnp.asarray(v) for k, v in params.items()}
    np_params = {k: v.astype(np.float64) for k, v in params.items()}
    for i in range(num_steps):
        grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        updates, state = update(grads, state, jax_params)
        jax_params = jax.tree.map(lambda p, u: p + u, jax_params, updates)
        t = start_count + i
        lr = float(schedule(t))
        np_params = {
            k: refs[k].step(np_params[k], grads[k].astype(np.float64), t, lr) for k in params
        }
    return jax_params, np_params, state, refs


@pytest.mark.parametrize(
    "cfg, start_count",
    [
        (adafactor.AdafactorConfig(), 0),
        (adafactor.AdafactorConfig(beta1=0.9, weight_decay_rate=1e-3, step_offset=10), 10),
    ],
    ids=["t5x-defaults", "momentum-decay-offset"],
)
def test_adafactor_matches_numpy_reference(cfg, start_count):
    schedule = schedules.rsqrt_decay(scale=0.1, warmup_steps=2)
    jax_params, np_params, state, refs = _run_both(
        cfg, schedule, num_steps=5, start_count=start_count
    )
    for name in PARAMS:
        np.testing.assert_allclose(
            jax_params[name], np_params[name], rtol=RTOL, atol=1e-7, err_msg=name
        )
    # The factored statistics are means where the paper keeps sums.
    stats = state.param_states
    for name, (shape, _, role) in PARAMS.items():
        if role == "factored":
            nb, nr, nc = _as_matrix(np.zeros(shape), PARAMS[name][1]).shape
            np.testing.assert_allclose(
                np.asarray(stats[name].v_row).reshape(nb, nr),
                refs[name].R / nc,
                rtol=RTOL,
                err_msg=name,
            )
            assert stats[name].v.shape == (1,), name
        else:
            np.testing.assert_allclose(stats[name].v, refs[name].V, rtol=RTOL, err_msg=name)
            assert stats[name].v_row.shape == (1,), name
    assert int(state.count) == start_count + 5


def test_heuristic_factoring_without_logical_axes():
    """No axes: t5x's heuristic factors the two largest dims when the smaller is >= 128."""
    params = {"big": jnp.zeros((128, 256)), "small": jnp.zeros((64, 256)), "vec": jnp.zeros((300,))}
    state = adafactor.adafactor(1e-3).init(params).param_states
    assert state["big"].v_row.shape == (128,) and state["big"].v_col.shape == (256,)
    assert state["small"].v.shape == (64, 256)
    assert state["vec"].v.shape == (300,)


def test_state_logical_axes_follow_reduced_dims():
    params = {k: jax.ShapeDtypeStruct(shape, jnp.float32) for k, (shape, _, _) in PARAMS.items()}
    axes = {k: P(*names) for k, (_, names, _) in PARAMS.items()}
    cfg = adafactor.AdafactorConfig(beta1=0.9)
    state_axes = adafactor.adafactor_state_logical_axes(params, config=cfg, param_axes=axes)
    stats = state_axes.param_states
    assert stats["query"] == adafactor.AdafactorParamState(
        v_row=P("embed"), v_col=P("heads", "kv"), v=P(None), m=P("embed", "heads", "kv")
    )
    assert stats["stacked"].v_row == P("layers", "embed")
    assert stats["stacked"].v_col == P("layers", "mlp")
    assert stats["relpos"].v == P("heads", "relpos_buckets")
    assert state_axes.count == P()
    # The axes tree has exactly the structure (and ranks) of the real state.
    real = jax.eval_shape(adafactor.adafactor(1e-3, config=cfg, param_axes=axes).init, params)
    for spec, leaf in zip(jax.tree.leaves(state_axes), jax.tree.leaves(real)):
        assert len(spec) == leaf.ndim


def test_unknown_logical_axis_is_a_clear_error():
    params = {"w": jnp.zeros((128, 128))}
    with pytest.raises(ValueError, match=r"\['w'\].*'mystery'.*factor_rules"):
        adafactor.adafactor(1e-3, param_axes={"w": P("embed", "mystery")}).init(params)


def test_schedules_match_formulas_and_optax():
    steps = np.array([0, 1, 5, 9, 10, 11, 50, 99, 100, 150])
    rsqrt = schedules.rsqrt_decay(scale=1.0, warmup_steps=10)
    np.testing.assert_allclose(
        [rsqrt(s) for s in steps], 1 / np.sqrt(np.maximum(steps, 10)), rtol=1e-6
    )
    np.testing.assert_allclose([schedules.constant(3e-4)(s) for s in steps], 3e-4, rtol=1e-6)
    cosine = schedules.cosine_decay(
        peak_value=0.5, total_steps=100, warmup_steps=10, end_value=0.05
    )
    ref_cosine = optax.warmup_cosine_decay_schedule(0.0, 0.5, 10, 100, end_value=0.05)
    np.testing.assert_allclose(
        [cosine(s) for s in steps], [ref_cosine(s) for s in steps], rtol=1e-5, atol=1e-7
    )
    linear = schedules.linear_decay(
        peak_value=0.5, total_steps=100, warmup_steps=10, end_value=0.05
    )
    ref_linear = optax.join_schedules(
        [optax.linear_schedule(0.0, 0.5, 10), optax.linear_schedule(0.5, 0.05, 90)], [10]
    )
    np.testing.assert_allclose(
        [linear(s) for s in steps], [ref_linear(s) for s in steps], rtol=1e-5, atol=1e-7
    )
    with pytest.raises(ValueError, match="total_steps .* must be >= warmup_steps"):
        schedules.linear_decay(1.0, total_steps=5, warmup_steps=10)
