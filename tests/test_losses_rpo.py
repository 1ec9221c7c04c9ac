"""RPO (arXiv 2402.10958) against independent numpy loops, plus group/mesh invariants."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from align_jax.losses import RPOConfig, RPOInputs, get_loss
from align_jax.losses import rpo_loss as _rpo_loss

# One XLA compile per (shapes, config) is much cheaper on CPU than op-by-op eager dispatch.
rpo_loss = jax.jit(_rpo_loss, static_argnums=1)


def _logsig(x):
    return -np.log1p(np.exp(-x))


def _np_matrix_loss(c, l, e_row, e_col, rows, cols, beta, tau, weights=True):
    """Mean over valid rows of the mean over valid columns of −log σ(β ω_ij M_ij), written as loops."""
    e_row = e_row / np.linalg.norm(e_row, axis=1, keepdims=True)
    e_col = e_col / np.linalg.norm(e_col, axis=1, keepdims=True)
    row_losses = []
    for i in rows:
        logits = [-(1.0 - e_row[i] @ e_col[j]) / tau for j in cols]
        z = np.exp(np.array(logits) - max(logits))
        w = z / z.sum() if weights else np.ones(len(cols))
        row_losses.append(np.mean([-_logsig(beta * w[k] * (c[i] - l[j])) for k, j in enumerate(cols)]))
    return float(np.mean(row_losses))


def _data(n=8, e=5, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(0.0, 3.0, n)
    l = rng.normal(0.0, 3.0, n)
    emb = rng.normal(size=(n, e))
    return c, l, emb


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def test_paired_matches_loops_and_groups():
    c, l, emb = _data()
    beta, tau = 0.7, 0.5
    inp = RPOInputs(jnp.asarray(c), jnp.asarray(l), jnp.asarray(emb))
    whole, _ = rpo_loss(inp, RPOConfig(beta=beta, tau=tau))
    want = _np_matrix_loss(c, l, emb, emb, range(8), range(8), beta, tau)
    np.testing.assert_allclose(float(whole), want, rtol=1e-12)
    # G=4: two independent 4×4 matrices, averaged
    g4, _ = rpo_loss(inp, RPOConfig(beta=beta, tau=tau, group_size=4))
    want4 = np.mean([_np_matrix_loss(c[s], l[s], emb[s], emb[s], range(4), range(4), beta, tau)
                     for s in (slice(0, 4), slice(4, 8))])
    np.testing.assert_allclose(float(g4), want4, rtol=1e-12)
    assert abs(float(g4) - float(whole)) > 1e-4  # the group size really matters
    # registry entry = the same function with the variant fixed
    reg = jax.jit(get_loss("rpo_paired"), static_argnums=1)(inp, RPOConfig(variant="diagonal", beta=beta, tau=tau))
    np.testing.assert_allclose(float(reg[0]), want, rtol=1e-12)


def test_paired_gradient_matches_finite_difference_and_no_embedding_grad():
    c, l, emb = _data(6, 4, seed=1)
    cfg = RPOConfig(beta=0.5, tau=0.3, group_size=3)

    @jax.jit
    def f(c_, l_, e_):
        return _rpo_loss(RPOInputs(c_, l_, e_), cfg)[0]

    gc, gl, ge = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(jnp.asarray(c), jnp.asarray(l), jnp.asarray(emb))
    assert np.all(np.asarray(ge) == 0.0)  # embeddings carry no gradient (stop_gradient inside)
    h = 1e-6
    for k in range(6):
        d = np.zeros(6)
        d[k] = h
        fd = (float(f(jnp.asarray(c + d), jnp.asarray(l), jnp.asarray(emb)))
              - float(f(jnp.asarray(c - d), jnp.asarray(l), jnp.asarray(emb)))) / (2 * h)
        np.testing.assert_allclose(float(gc[k]), fd, rtol=1e-6, atol=1e-9)
    assert np.all(np.asarray(gc) < 0) and np.all(np.asarray(gl) > 0)  # push chosen up, rejected down


def test_unpaired_masks_and_empty_groups():
    rng = np.random.default_rng(2)
    n = 8
    r = rng.normal(0.0, 2.0, n)
    emb = rng.normal(size=(n, 3))
    label = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)  # group 2 (items 4..7) has ONE rejected item
    valid = np.array([1, 1, 1, 0, 1, 1, 1, 1], bool)  # item 3 is padding
    beta, tau = 0.4, 0.5
    inp = RPOInputs(jnp.asarray(r), jnp.asarray(r), jnp.asarray(emb),
                    chosen_valid=jnp.asarray(valid & label), rejected_valid=jnp.asarray(valid & ~label))
    got, met = rpo_loss(inp, RPOConfig(variant="unpaired", beta=beta, tau=tau, group_size=4))
    g1 = _np_matrix_loss(r, r, emb, emb, [0, 2], [1], beta, tau)
    g2 = _np_matrix_loss(r, r, emb, emb, [5, 6, 7], [4], beta, tau)
    np.testing.assert_allclose(float(got), (g1 + g2) / 2, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(met["rpo/row_valid"]), [1, 0, 1, 0, 0, 1, 1, 1])
    # a group with no rejected item is empty: it is excluded, not averaged in as a zero
    label2 = label.copy()
    label2[4] = True
    inp2 = inp._replace(chosen_valid=jnp.asarray(valid & label2), rejected_valid=jnp.asarray(valid & ~label2))
    got2, _ = rpo_loss(inp2, RPOConfig(variant="unpaired", beta=beta, tau=tau, group_size=4))
    np.testing.assert_allclose(float(got2), g1, rtol=1e-12)
    # no valid pair anywhere → 0, finite gradient
    none = inp._replace(rejected_valid=jnp.zeros(n, bool))
    val, grad = jax.jit(jax.value_and_grad(lambda x: _rpo_loss(none._replace(chosen_logratios=x), RPOConfig())[0]))(
        jnp.asarray(r))
    assert float(val) == 0.0 and np.all(np.isfinite(np.asarray(grad)))


def test_padding_row_does_not_change_paired_value():
    c, l, emb = _data(5, 4, seed=3)
    cfg = RPOConfig(beta=0.6, tau=0.5)
    base, _ = rpo_loss(RPOInputs(jnp.asarray(c), jnp.asarray(l), jnp.asarray(emb)), cfg)
    cp = np.append(c, 1e3)  # garbage in the padded slot
    lp = np.append(l, -1e3)
    ep = np.vstack([emb, np.zeros((1, 4))])  # even a zero embedding
    valid = jnp.asarray([True] * 5 + [False])
    padded, _ = rpo_loss(RPOInputs(jnp.asarray(cp), jnp.asarray(lp), jnp.asarray(ep), chosen_valid=valid), cfg)
    np.testing.assert_allclose(float(padded), float(base), rtol=1e-12)


def test_diagonal_variant_matches_loops():
    c, l, emb = _data(4, 3, seed=4)
    beta, wd = 0.5, 0.8
    got, _ = jax.jit(get_loss("rpo_diagonal"), static_argnums=1)(
        RPOInputs(jnp.asarray(c), jnp.asarray(l), jnp.asarray(emb)), RPOConfig(beta=beta, diag_weight=wd))
    rows = []
    for i in range(4):
        off = np.mean([-_logsig(beta * (c[i] - l[j])) for j in range(4) if j != i])
        rows.append(wd * -_logsig(beta * (c[i] - l[i])) + (1 - wd) * off)
    np.testing.assert_allclose(float(got), np.mean(rows), rtol=1e-12)


def test_mesh_sharded_equals_single_device():
    assert len(jax.devices()) == 8, "conftest sets 8 simulated CPU devices"
    rng = np.random.default_rng(5)
    n, e = 32, 8
    c = rng.normal(0, 3, n).astype(np.float32)
    l = rng.normal(0, 3, n).astype(np.float32)
    emb = rng.normal(size=(n, e)).astype(np.float32)
    valid = np.ones(n, bool)
    valid[[3, 17]] = False
    cfg = RPOConfig(beta=0.5, tau=0.5, group_size=8)  # 4 groups, each spanning 2 devices
    with jax.enable_x64(False):
        args = tuple(map(jnp.asarray, (c, l, emb, valid)))

        def f(c_, l_, e_, v_):
            return _rpo_loss(RPOInputs(c_, l_, e_, chosen_valid=v_), cfg)[0]

        single = float(jax.jit(f)(*args))
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sharded = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in args]
        on_mesh = jax.jit(f)(*sharded)
        assert len(sharded[0].sharding.device_set) == 8
        np.testing.assert_allclose(float(on_mesh), single, rtol=1e-6)
        # and the same value the float64 loops give for the 4 groups
        want = np.mean([_np_matrix_loss(c[s].astype(np.float64), l[s].astype(np.float64), emb[s], emb[s],
                                        [i for i in range(8) if valid[s][i]], [i for i in range(8) if valid[s][i]],
                                        0.5, 0.5)
                        for s in (slice(0, 8), slice(8, 16), slice(16, 24), slice(24, 32))])
        np.testing.assert_allclose(single, want, rtol=1e-5)
