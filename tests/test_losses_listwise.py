"""Listwise objectives against independent numpy loops, K=2 ↔ DPO, and masking invariants."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import ListLogps, ListwiseConfig, PairLogps, PrefConfig, get_loss, listwise_loss
from align_jax.losses import preference_loss

loss_jit = jax.jit(listwise_loss, static_argnums=1)  # one compile per (shape, config)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _lists(seed=0, b=3, k=4):
    rng = np.random.default_rng(seed)
    lp = -rng.uniform(2.0, 12.0, (b, k))
    ref = lp + rng.normal(0.0, 2.0, (b, k))
    lens = rng.integers(2, 12, (b, k)).astype(np.float64)
    psi = rng.permutation(np.arange(b * k)).reshape(b, k) % 5 + rng.uniform(0, 0.5, (b, k))  # distinct
    mask = np.ones((b, k), bool)
    mask[1, 2] = False  # variable K: list 1 has 3 responses, list 2 has 2
    mask[2, [0, 3]] = False
    return lp, ref, lens, mask, psi


def _inp(lp, ref, lens, mask, psi):
    return ListLogps(jnp.asarray(lp), None if ref is None else jnp.asarray(ref), jnp.asarray(lens),
                     jnp.asarray(mask), jnp.asarray(psi))


def _valid_sorted(b, mask, psi):
    idx = [i for i in range(mask.shape[1]) if mask[b, i]]
    return sorted(idx, key=lambda i: -psi[b, i])


def _logsig(x):
    return -np.log1p(np.exp(-x))


def _np_pl(lp, ref, mask, psi, beta):
    out = []
    for b in range(lp.shape[0]):
        s = [beta * (lp[b, i] - ref[b, i]) for i in _valid_sorted(b, mask, psi)]
        out.append(-sum(s[k] - np.log(np.sum(np.exp(s[k:]))) for k in range(len(s))))
    return np.array(out)


def _np_lipo(lp, ref, mask, psi, beta):
    out = []
    for b in range(lp.shape[0]):
        v = [i for i in range(lp.shape[1]) if mask[b, i]]
        s = {i: beta * (lp[b, i] - ref[b, i]) for i in v}
        rank = {i: 1 + sum(s[j] > s[i] for j in v) for i in v}
        tot = 0.0
        for i in v:
            for j in v:
                if psi[b, i] > psi[b, j]:
                    d = abs((2 ** psi[b, i] - 1) - (2 ** psi[b, j] - 1)) * abs(
                        1 / np.log(1 + rank[i]) - 1 / np.log(1 + rank[j]))
                    tot -= d * _logsig(s[i] - s[j])
        out.append(tot)
    return np.array(out)


def _np_pro(lp, lens, mask, psi, w_sft):
    out = []
    for b in range(lp.shape[0]):
        order = _valid_sorted(b, mask, psi)
        r = [lp[b, i] / lens[b, i] for i in order]
        p = [psi[b, i] for i in order]
        tot = 0.0
        for k in range(len(order) - 1):
            gaps = [p[k] - p[i] for i in range(k + 1, len(order))]
            pos = max(gaps)
            terms = [r[k] * pos] + [r[i] * g for i, g in zip(range(k + 1, len(order)), gaps)]
            tot -= r[k] * pos - np.log(np.sum(np.exp(terms)))
        out.append(tot + w_sft * -r[0])
    return np.array(out)


def _np_opo(lp, ref, mask, psi, beta, tau, sinkhorn):
    out = []
    for b in range(lp.shape[0]):
        v = [i for i in range(lp.shape[1]) if mask[b, i]]
        n = len(v)
        s = np.array([beta * (lp[b, i] - ref[b, i]) for i in v])
        g = np.array([2 ** psi[b, i] - 1 for i in v])
        a = np.array([sum(abs(s[j] - s[k]) for k in range(n)) for j in range(n)])
        pm = np.zeros((n, n))
        for r in range(1, n + 1):
            z = ((n + 1 - 2 * r) * s - a) / tau
            e = np.exp(z - z.max())
            pm[r - 1] = e / e.sum()
        for _ in range(sinkhorn):
            pm = pm / pm.sum(0, keepdims=True)
            pm = pm / pm.sum(1, keepdims=True)
        disc = np.array([1 / np.log2(1 + r) for r in range(1, n + 1)])
        dcg = float((pm @ g) @ disc)
        idcg = float(np.sort(g)[::-1] @ disc)
        out.append(-dcg / idcg)
    return np.array(out)


def test_plackett_luce_k2_equals_dpo_sigmoid():
    rng = np.random.default_rng(1)
    lp = -rng.uniform(2, 10, (5, 2))
    ref = lp + rng.normal(0, 3, (5, 2))
    psi = np.tile([0.0, 1.0], (5, 1))  # item 1 preferred: the order must come from ψ, not position
    beta = 0.4
    pl, _ = loss_jit(_inp(lp, ref, np.ones_like(lp), np.ones((5, 2), bool), psi), ListwiseConfig(beta=beta))
    dpo, _ = jax.jit(preference_loss, static_argnums=1)(PairLogps(*map(jnp.asarray, (lp[:, 1], lp[:, 0], ref[:, 1], ref[:, 0]))),
                             PrefConfig(beta=beta))
    np.testing.assert_allclose(np.asarray(pl), np.asarray(dpo), rtol=1e-12)


@pytest.mark.parametrize("name", ["plackett_luce", "lipo_lambda", "pro", "opo", "opo_sinkhorn"])
def test_matches_numpy_loops(name):
    lp, ref, lens, mask, psi = _lists()
    beta = 0.3
    if name == "plackett_luce":
        cfg, want = ListwiseConfig(name, beta=beta), _np_pl(lp, ref, mask, psi, beta)
    elif name == "lipo_lambda":
        cfg, want = ListwiseConfig(name, beta=beta), _np_lipo(lp, ref, mask, psi, beta)
    elif name == "pro":
        cfg, want = ListwiseConfig(name, pro_sft_weight=0.2), _np_pro(lp, lens, mask, psi, 0.2)
    elif name == "opo":
        cfg, want = ListwiseConfig(name, beta=beta, neuralsort_tau=0.7), _np_opo(lp, ref, mask, psi, beta, 0.7, 0)
    else:
        cfg = ListwiseConfig("opo", beta=beta, neuralsort_tau=0.7, sinkhorn_iters=5)
        want = _np_opo(lp, ref, mask, psi, beta, 0.7, 5)
    got, _ = loss_jit(_inp(lp, None if name == "pro" else ref, lens, mask, psi), cfg)
    assert np.all(np.abs(want) > 1e-3)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)
    # the registry returns the same function
    assert get_loss(cfg.loss) is not None


@pytest.mark.parametrize("name", ["plackett_luce", "lipo_lambda", "pro", "opo"])
def test_masked_padding_column_changes_nothing(name):
    lp, ref, lens, mask, psi = _lists(seed=2)
    cfg = ListwiseConfig(name, beta=0.5, sinkhorn_iters=3 if name == "opo" else 0)
    base, _ = loss_jit(_inp(lp, ref, lens, mask, psi), cfg)
    pad = lambda x, v: np.concatenate([x, np.full((x.shape[0], 1), v, x.dtype)], axis=1)  # noqa: E731
    # garbage in the padded slot: a huge score and log-prob would dominate if it leaked in
    padded_inp = _inp(pad(lp, 50.0), pad(ref, -50.0), pad(lens, 0.0), pad(mask, False), pad(psi, 100.0))

    @jax.jit
    @jax.value_and_grad
    def total(x):
        return listwise_loss(padded_inp._replace(logps=x), cfg)[0].sum()

    got, _ = loss_jit(padded_inp, cfg)
    np.testing.assert_allclose(np.asarray(got), np.asarray(base), rtol=1e-12, atol=1e-14)
    _, g = total(padded_inp.logps)
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g)[:, -1] == 0.0)


def test_opo_perfect_order_at_low_temperature_is_minus_one():
    psi = np.array([[3.0, 1.0, 2.0, 0.0]])
    lp = -10.0 + 2.0 * psi  # policy order agrees with ψ
    got, _ = loss_jit(_inp(lp, np.full_like(lp, -10.0), np.ones_like(lp), np.ones_like(lp, bool), psi),
                      ListwiseConfig("opo", beta=1.0, neuralsort_tau=0.01))
    np.testing.assert_allclose(np.asarray(got), [-1.0], atol=1e-9)


def test_unknown_listwise_name():
    with pytest.raises(ValueError, match="valid names"):
        listwise_loss(_inp(*_lists()), ListwiseConfig("nope"))
