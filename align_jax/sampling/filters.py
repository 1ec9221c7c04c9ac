"""Logit processors: pure functions on float32 logits [..., V] (jittable, vmappable).

A filtered-out token gets logit -inf, so `log_softmax` of the result is the log-probability
under the truncated, renormalised sampling distribution. The composite :func:`process_logits`
applies them in HF `generate`'s order: temperature -> top-k -> top-p -> min-p.
:func:`sample_logits` (the decode hot path) applies the same filters as a mask over ONE
softmax, which serves the nucleus search, the draw and both reported log-probs.

Tie semantics: top-k and top-p cut at a logit THRESHOLD, so tokens tied with the last kept
token are kept too (HF's top-k does the same; HF's top-p breaks ties by sort order). Cutting at
a threshold avoids sorting the vocabulary and scattering back on the decode hot path.

Values (`temperature`, `top_p`, `min_p`) may be Python numbers or traced scalars; a Python
identity value (1.0 / 1.0 / 0.0) skips the filter at trace time, so the top-p search is only
compiled in when it is used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def _is_const(x, value) -> bool:
    return isinstance(x, (int, float)) and float(x) == value


def apply_temperature(logits, temperature):
    """logits / T. T must be > 0 (greedy decoding is a separate switch, see sample_logits)."""
    if _is_const(temperature, 1.0):
        return logits
    return logits / jnp.asarray(temperature, logits.dtype)


def _top_p_threshold(sorted_desc, p):
    """Smallest kept logit of the nucleus, from logits sorted in descending order [..., K].

    A token is kept when the probability mass of the tokens ranked strictly above it is < p;
    the top token always qualifies (mass 0), so at least one token is kept for any p."""
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # exclusive cumsum (mass strictly above each rank); built by shifting so it is monotone
    cum = jnp.cumsum(probs, axis=-1)
    mass_above = jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum[..., :-1]], axis=-1)
    keep = mass_above < p
    keep = keep.at[..., 0].set(True)
    n_keep = jnp.sum(keep, axis=-1, keepdims=True)  # `keep` is a prefix of the ranks
    return jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)


def _top_p_cut(probs, p):
    """(cut, kept mass): the nucleus is {bits(probs) >= cut}, `kept mass` its probability.

    Exact, without sorting the vocabulary (a [B, V] sort dominated the CPU decode step): the
    cut is the largest probability t with mass{prob >= t} >= p, found by a 30-step bisection
    over the bit patterns of the float32 probabilities (for non-negative floats the bits, read
    as int32, are ordered like the values); each step is one masked sum over V, and the sum at
    the final cut is carried along so callers need no extra pass for the kept mass. The top
    token always qualifies, so at least one token is kept."""
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
    lo, hi = jnp.zeros(bits.shape[:-1], jnp.int32), jnp.max(bits, axis=-1)
    mass_lo = jnp.ones(bits.shape[:-1], probs.dtype)  # lo = 0 keeps everything

    def step(_, s):
        # invariant: mass{bits >= lo} = mass_lo >= p (or lo = 0), the answer is in [lo, hi]
        lo, hi, mass_lo = s
        mid = lo + (hi - lo + 1) // 2
        mass = jnp.sum(jnp.where(bits >= mid[..., None], probs, 0.0), axis=-1)
        ok = mass >= p
        return (jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1),
                jnp.where(ok, mass, mass_lo))

    # probs <= 1.0, whose bits are 0x3F800000 < 2**30: 30 halvings pin the exact pattern
    lo, _, mass = jax.lax.fori_loop(0, 30, step, (lo, hi, mass_lo))
    return lo, mass


def categorical_from_probs(key, probs, block: int = 128):
    """One draw per row from unnormalised probabilities [..., V] (zeros are never drawn) by
    two-level inverse-CDF sampling.

    Uses ONE uniform per row instead of V Gumbels (threefry over [B, V] cost half a CPU decode
    step), and only short cumsums: pick a block of `block` tokens by its mass, then a token
    inside it."""
    V = probs.shape[-1]
    nb = -(-V // block)
    if nb * block != V:
        probs = jnp.pad(probs, [(0, 0)] * (probs.ndim - 1) + [(0, nb * block - V)])
    pb = probs.reshape(probs.shape[:-1] + (nb, block))
    bmass = jnp.sum(pb, axis=-1)  # [..., nb]
    bcum = jnp.cumsum(bmass, axis=-1)
    u = jax.random.uniform(key, probs.shape[:-1]) * bcum[..., -1]

    def pick(cum, mass, u):  # index i with cum[i-1] <= u < cum[i], clipped to a nonzero entry
        last = jnp.max(jnp.where(mass > 0, jnp.arange(mass.shape[-1]), 0), axis=-1)
        return jnp.minimum(jnp.sum(cum <= u[..., None], axis=-1), last).astype(jnp.int32)

    b = pick(bcum, bmass, u)
    inner = jnp.take_along_axis(pb, b[..., None, None], axis=-2)[..., 0, :]  # [..., block]
    before = jnp.take_along_axis(bcum - bmass, b[..., None], axis=-1)[..., 0]
    # clamp at 0 so float rounding cannot land on a leading zero-probability token
    w = pick(jnp.cumsum(inner, axis=-1), inner, jnp.maximum(u - before, 0.0))
    return b * block + w


def _truncate(x, *, top_k: int, top_p, min_p):
    """The filters on tempered logits x, as a mask over one softmax.

    Returns (keep [..., V] bool or None for "all", probs = softmax(x), lse = logsumexp(x),
    kept mass [...] or None for 1). One exp pass serves the filters, the draw and both
    log-probs: the processed distribution is probs * keep / mass."""
    m = jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(x - m)
    z = jnp.sum(e, axis=-1, keepdims=True)
    probs, lse = e / z, (m + jnp.log(z))[..., 0]
    keep, mass = None, None
    if 0 < top_k < x.shape[-1]:
        # top-p over the (already sorted) top-k values instead of a search over the vocabulary
        vals = jax.lax.top_k(x, top_k)[0]  # [..., k], descending
        thr = vals[..., -1:]
        if not _is_const(top_p, 1.0):
            thr = jnp.maximum(thr, _top_p_threshold(vals, top_p))
        keep = x >= thr
    elif not _is_const(top_p, 1.0):
        cut, mass = _top_p_cut(probs, top_p)
        keep = jax.lax.bitcast_convert_type(probs, jnp.int32) >= cut[..., None]
    if not _is_const(min_p, 0.0):
        # prob >= min_p * max prob; the ratio to the max is unchanged by renormalising
        above = x >= m + jnp.log(jnp.asarray(min_p, x.dtype))
        keep = above if keep is None else keep & above
        mass = None
    if keep is not None and mass is None:
        mass = jnp.sum(jnp.where(keep, probs, 0.0), axis=-1)
    return keep, probs, lse, mass


def process_logits(logits, *, temperature=1.0, top_k: int = 0, top_p=1.0, min_p=0.0):
    """temperature -> top-k -> top-p -> min-p (HF order), filtered tokens set to -inf.
    `top_k` must be a Python int. With both top-k and top-p on, the nucleus is computed from
    the sorted top-k values instead of a search over the whole vocabulary (same result)."""
    x = apply_temperature(logits, temperature)
    keep = _truncate(x, top_k=top_k, top_p=top_p, min_p=min_p)[0]
    return x if keep is None else jnp.where(keep, x, NEG_INF)


# The single filters, for callers that want one: the same mask code as process_logits.
def top_k_filter(logits, k: int):
    """Keep the k largest logits (ties with the k-th are kept). k <= 0 or k >= V: no-op."""
    return process_logits(logits, top_k=k)


def top_p_filter(logits, p):
    """Nucleus filter: keep the smallest set of top tokens whose mass reaches p (>= 1 token);
    see :func:`_top_p_cut`."""
    return process_logits(logits, top_p=p)


def min_p_filter(logits, min_p):
    """Keep tokens with prob >= min_p * max prob, i.e. logit >= max logit + log(min_p)."""
    return process_logits(logits, min_p=min_p)


def sample_logits(key, logits, *, greedy: bool = False, temperature=1.0, top_k: int = 0,
                  top_p=1.0, min_p=0.0):
    """Draw one token per row from the processed distribution.

    Returns (token [...] int32, logp [...], logp_raw [...]): `logp` is the token's log-prob
    under the processed (tempered + filtered) distribution it was drawn from, `logp_raw` under
    the untempered, unfiltered policy softmax(logits). With `greedy` the token is the argmax
    (filters never remove the argmax) and `logp` is still reported under the processed
    distribution, so teacher-forced re-scoring uses one formula for both modes.

    `greedy` may be a traced bool (the sampler passes it so greedy and sampled runs share one
    compile); `lax.cond` then skips the random draw when it is set."""
    if greedy is True and _is_const(temperature, 0.0):
        temperature = 1.0  # T=0 means greedy; report logp at T=1
    x = apply_temperature(logits, temperature)
    keep, probs, lse, mass = _truncate(x, top_k=top_k, top_p=top_p, min_p=min_p)
    # log-probs as gathered logit - log-normaliser: no [B, V] log_softmax arrays on the hot path
    lse_proc = lse if mass is None else lse + jnp.log(mass)
    argmax = lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32)
    draw = lambda: categorical_from_probs(
        key, probs if keep is None else jnp.where(keep, probs, 0.0))
    if isinstance(greedy, bool):
        tok = argmax() if greedy else draw()
    else:
        tok = jax.lax.cond(greedy, argmax, draw)
    if _is_const(temperature, 1.0):
        lse_raw = lse
    else:  # the sampler's temperature is traced: skip the second normaliser at T = 1
        lse_raw = jax.lax.cond(jnp.asarray(temperature) == 1.0, lambda: lse,
                               lambda: jax.nn.logsumexp(logits, axis=-1))
    pick = lambda v: jnp.take_along_axis(v, tok[..., None], axis=-1)[..., 0]
    return tok, pick(x) - lse_proc, pick(logits) - lse_raw
