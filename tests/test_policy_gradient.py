"""Advantages and the REINFORCE loss against hand-computed values and analytic gradients."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.losses import advantages, length_factor, reinforce_loss


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def test_k2_mean_advantage_is_half_difference():
    r = np.array([[0.91, 0.85], [0.70, 0.88]])
    a = np.asarray(advantages(jnp.asarray(r), "mean"))
    np.testing.assert_allclose(a[:, 0], (r[:, 0] - r[:, 1]) / 2, rtol=1e-14)
    np.testing.assert_allclose(a[:, 1], -(r[:, 0] - r[:, 1]) / 2, rtol=1e-14)


def test_methods_against_loops():
    rng = np.random.default_rng(0)
    r = rng.uniform(0, 1, (3, 4))
    k = r.shape[1]
    mean = np.array([[r[b].sum() / k] * k for b in range(3)])
    rloo = np.array([[r[b, i] - sum(r[b, j] for j in range(k) if j != i) / (k - 1) for i in range(k)]
                     for b in range(3)])
    std = np.array([[np.sqrt(sum((x - r[b].mean()) ** 2 for x in r[b]) / (k - 1))] * k for b in range(3)])
    np.testing.assert_allclose(np.asarray(advantages(jnp.asarray(r), "mean")), r - mean, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(advantages(jnp.asarray(r), "rloo")), rloo, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(advantages(jnp.asarray(r), "grpo", eps=1e-6)),
                               (r - mean) / (std + 1e-6), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(advantages(jnp.asarray(r), "none")), r)
    grand = sum(r[b, i] for b in range(3) for i in range(k)) / (3 * k)
    np.testing.assert_allclose(np.asarray(advantages(jnp.asarray(r), "batch")), r - grand,
                               rtol=1e-12)
    # a prompt whose samples tie gets no signal from "mean" but does from "batch"
    tied = np.array([[0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(np.asarray(advantages(jnp.asarray(tied), "batch")),
                               [[-0.25, -0.25], [0.75, -0.25]], rtol=1e-12)
    m = np.array([[True, False], [True, True]])  # masked rows leave the mean and get 0
    np.testing.assert_allclose(np.asarray(advantages(jnp.asarray(tied), "batch", mask_bk=m)),
                               [[-1 / 3, 0.0], [2 / 3, -1 / 3]], rtol=1e-12)
    with pytest.raises(ValueError):
        advantages(jnp.asarray(r), "ppo")


def test_clip_and_variable_k_mask():
    r = np.array([[1.0, 0.0, 0.2, 9.0]])
    mask = np.array([[True, True, True, False]])  # the 9.0 is padding
    a = np.asarray(advantages(jnp.asarray(r), "mean", clip=0.3, mask_bk=jnp.asarray(mask)))
    m = 0.4  # mean of the three real rewards
    np.testing.assert_allclose(a, [[min(1.0 - m, 0.3), max(0.0 - m, -0.3), 0.2 - m, 0.0]], rtol=1e-12)
    lone = np.asarray(advantages(jnp.asarray([[0.7, 0.1]]), "rloo", mask_bk=jnp.asarray([[True, False]])))
    np.testing.assert_array_equal(lone, [[0.0, 0.0]])  # no leave-one-out baseline for a lone sample


def test_length_factor():
    np.testing.assert_allclose(np.asarray(length_factor(jnp.asarray([0.8, 0.9]), jnp.asarray([10, 30]), 5.0)),
                               [(1 + 1 / 15) * 0.8, (1 + 1 / 35) * 0.9], rtol=1e-14)


def _case(seed=1):
    rng = np.random.default_rng(seed)
    lp = -rng.uniform(0.1, 3.0, (3, 5))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], bool)
    adv = np.array([0.5, -0.2, 0.03])
    return lp, mask, adv


def test_reinforce_value_and_gradient():
    lp, mask, adv = _case()
    count = mask.sum()

    def f(x):
        return reinforce_loss(x, jnp.asarray(mask), jnp.asarray(adv))

    (loss, met), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp))
    want = sum(-adv[b] * lp[b, t] for b in range(3) for t in range(5) if mask[b, t]) / count
    np.testing.assert_allclose(float(loss), want, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g), -adv[:, None] * mask / count, rtol=1e-12)
    s, n = met["pg/loss"]
    np.testing.assert_allclose(float(s) / float(n), want, rtol=1e-12)
    # on-policy importance ratio (old = current) gives the same gradient
    g_ratio = jax.grad(lambda x: reinforce_loss(x, jnp.asarray(mask), jnp.asarray(adv),
                                                old_logps_bt=jnp.asarray(lp), clip_ratio=0.2)[0])(jnp.asarray(lp))
    np.testing.assert_allclose(np.asarray(g_ratio), -adv[:, None] * mask / count, rtol=1e-12)


def test_ppo_clip_zeroes_gradient_outside_trust_region():
    lp, mask, adv = _case(2)
    old = lp.copy()
    old[0, 0] -= 0.5  # ratio e^0.5 > 1.2 with A>0 → clipped, no gradient
    old[1, 1] += 0.5  # ratio e^-0.5 < 0.8 with A<0 → clipped, no gradient
    old[1, 2] -= 0.5  # ratio > 1.2 with A<0 → pessimistic branch is the unclipped one: gradient kept
    eps = 0.2
    (loss, met), g = jax.value_and_grad(
        lambda x: reinforce_loss(x, jnp.asarray(mask), jnp.asarray(adv), old_logps_bt=jnp.asarray(old),
                                 clip_ratio=eps), has_aux=True)(jnp.asarray(lp))
    count = mask.sum()
    ratio = np.exp(lp - old)
    want_loss, want_g = 0.0, np.zeros_like(lp)
    for b in range(3):
        for t in range(5):
            if not mask[b, t]:
                continue
            un, cl = -adv[b] * ratio[b, t], -adv[b] * np.clip(ratio[b, t], 1 - eps, 1 + eps)
            want_loss += max(un, cl) / count
            if un >= cl:
                want_g[b, t] = -adv[b] * ratio[b, t] / count
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-12, atol=1e-15)
    assert want_g[0, 0] == 0 and want_g[1, 1] == 0 and want_g[1, 2] != 0
    np.testing.assert_allclose(float(met["pg/clipfrac"][0]), 2.0)


def test_k3_kl_penalty():
    lp, mask, adv = _case(3)
    ref = lp + np.random.default_rng(4).normal(0, 0.3, lp.shape)
    kc = 0.1
    count = mask.sum()
    (loss, met), g = jax.value_and_grad(
        lambda x: reinforce_loss(x, jnp.asarray(mask), jnp.asarray(adv), ref_logps_bt=jnp.asarray(ref),
                                 kl_coef=kc), has_aux=True)(jnp.asarray(lp))
    d = ref - lp
    k3 = (np.exp(d) - d - 1) * mask
    pg = (-adv[:, None] * lp * mask).sum() / count
    np.testing.assert_allclose(float(loss), pg + kc * k3.sum() / count, rtol=1e-12)
    # d/dlp [e^(ref−lp) − (ref−lp) − 1] = 1 − e^(ref−lp)
    np.testing.assert_allclose(np.asarray(g), (-adv[:, None] + kc * (1 - np.exp(d))) * mask / count, rtol=1e-12)
    np.testing.assert_allclose(float(met["pg/kl"][0]), k3.sum(), rtol=1e-12)
    assert np.all(k3 >= 0)
    # off by default: the KL is reported but does not enter the loss
    off = reinforce_loss(jnp.asarray(lp), jnp.asarray(mask), jnp.asarray(adv), ref_logps_bt=jnp.asarray(ref))[0]
    np.testing.assert_allclose(float(off), pg, rtol=1e-12)
