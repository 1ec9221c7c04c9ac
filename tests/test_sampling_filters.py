"""Logit filters vs HF transformers' logits warpers, and empirical draw frequencies vs the
intended truncated distribution (chi-square)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats
from transformers.generation import logits_process as hf_lp

from align_jax.sampling import filters as F

V = 12
# fixed, tie-free logits (spread so several tokens carry real mass)
LOGITS = np.array([2.1, 0.3, 1.7, -0.4, 0.9, 1.2, -1.5, 0.05, 2.6, -0.8, 0.6, 1.45], np.float32)


def _hf_process(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """HF generate's warper chain (same order as ours) applied with torch."""
    x = torch.tensor(np.asarray(logits))
    ids = torch.zeros((x.shape[0], 1), dtype=torch.long)
    if temperature != 1.0:
        x = hf_lp.TemperatureLogitsWarper(temperature)(ids, x)
    if top_k:
        x = hf_lp.TopKLogitsWarper(top_k)(ids, x)
    if top_p < 1.0:
        x = hf_lp.TopPLogitsWarper(top_p)(ids, x)
    if min_p > 0.0:
        x = hf_lp.MinPLogitsWarper(min_p)(ids, x)
    return x.numpy()


CASES = [
    dict(temperature=0.7),
    dict(top_k=4),
    dict(top_p=0.8),
    dict(min_p=0.2),
    dict(temperature=1.3, top_k=6, top_p=0.9, min_p=0.05),
    dict(temperature=0.9, top_p=0.5, min_p=0.3),
]


def _traced(kw):
    return {k: (jnp.float32(v) if k != "top_k" else v) for k, v in kw.items()}


@pytest.fixture(scope="module")
def hf_case_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(16, 50)).astype(np.float32)

    @jax.jit  # one compile for every case: Python-float and traced knob values
    def run(x):
        return ([F.process_logits(x, **kw) for kw in CASES],
                [F.process_logits(x, **_traced(kw)) for kw in CASES])

    consts, traced = run(logits)
    return logits, [np.asarray(o) for o in consts], [np.asarray(o) for o in traced]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_process_logits_matches_hf_warpers(hf_case_logits, i):
    logits, consts, traced = hf_case_logits
    ours, hf = consts[i], _hf_process(logits, **CASES[i])
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(hf))  # same kept set
    kept = ~np.isinf(hf)
    np.testing.assert_allclose(ours[kept], hf[kept], rtol=1e-6)
    # traced values (as the sampler passes them) give the same result as Python floats
    np.testing.assert_array_equal(traced[i], ours)


def _intended(kw):
    """Hand-written truncated distribution for LOGITS (numpy oracle)."""
    x = LOGITS.astype(np.float64) / kw.get("temperature", 1.0)
    keep = np.ones(V, bool)
    if kw.get("top_k"):
        keep &= x >= np.sort(x)[::-1][kw["top_k"] - 1]
    if kw.get("top_p", 1.0) < 1.0:
        p = np.where(keep, np.exp(x - x.max()), 0.0)
        p /= p.sum()
        order = np.argsort(-p)
        above = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
        nucleus = np.zeros(V, bool)
        nucleus[order[above < kw["top_p"]]] = True
        keep &= nucleus
    if kw.get("min_p", 0.0) > 0:
        p = np.where(keep, np.exp(x - x.max()), 0.0)
        keep &= p >= kw["min_p"] * p.max()
    p = np.where(keep, np.exp(x - x.max()), 0.0)
    return p / p.sum()


N_DRAWS = 20_000


@pytest.fixture(scope="module")
def draws():
    keys = jax.random.split(jax.random.key(1234), N_DRAWS)
    logits = jnp.asarray(LOGITS)

    @jax.jit  # all cases in one compile, each vectorised over the keys
    def run(keys):
        return [jax.vmap(lambda k, kw=kw: F.sample_logits(k, logits, **_traced(kw)))(keys)
                for kw in CASES]

    return [tuple(map(np.asarray, d)) for d in run(keys)]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_empirical_frequencies_chi_square(draws, i):
    tok, logp, logp_raw = draws[i]
    expected = _intended(CASES[i])
    counts = np.bincount(tok, minlength=V)
    assert counts[expected == 0].sum() == 0, "a filtered-out token was drawn"
    kept = expected > 0
    assert kept.sum() >= 2  # the case must actually test a distribution
    _, pval = stats.chisquare(counts[kept], N_DRAWS * expected[kept])
    assert pval > 1e-3, (counts, expected)
    # reported log-probs are those of the truncated distribution / of the raw softmax
    np.testing.assert_allclose(logp, np.log(expected[tok]), atol=1e-5)
    raw = LOGITS.astype(np.float64) - np.log(np.exp(LOGITS.astype(np.float64)).sum())
    np.testing.assert_allclose(logp_raw, raw[tok], atol=1e-5)


def test_tiny_top_p_keeps_exactly_argmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 30)).astype(np.float32)

    @jax.jit
    def run(x):
        return (F.top_p_filter(x, 1e-6), F.process_logits(x, top_k=5, top_p=1e-6),
                F.sample_logits(jax.random.key(0), x, top_p=jnp.float32(1e-6)))

    out, out_k, (tok, logp, _) = jax.tree.map(np.asarray, run(logits))
    for o in (out, out_k):  # full-sort path and top-k fast path
        assert (np.isfinite(o).sum(axis=1) == 1).all()
        np.testing.assert_array_equal(np.argmax(o, axis=1), np.argmax(logits, axis=1))
    np.testing.assert_array_equal(tok, np.argmax(logits, axis=1))  # draws are deterministic
    np.testing.assert_allclose(logp, 0.0, atol=1e-6)


def test_identity_settings_are_noops_and_greedy_is_argmax():
    @jax.jit
    def run(x):
        return ([F.top_k_filter(x, 0), F.top_k_filter(x, V), F.top_p_filter(x, 1.0),
                 F.min_p_filter(x, 0.0), F.min_p_filter(x, jnp.float32(0.0)),
                 F.top_p_filter(x, jnp.float32(1.0))],
                F.sample_logits(None, x, greedy=True, temperature=0.0))

    outs, (tok, logp, logp_raw) = run(LOGITS)
    for o in outs:
        np.testing.assert_array_equal(np.asarray(o), LOGITS)
    assert int(tok) == int(np.argmax(LOGITS))
    np.testing.assert_allclose(float(logp), float(logp_raw), atol=1e-6)  # T=0 reports at T=1
