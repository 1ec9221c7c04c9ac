"""REINFORCE-style policy gradient: advantages from K samples per prompt, and the token-level loss.

Group semantics: advantages are computed per prompt over its K samples (rows of ``rewards_bk``),
so they never couple prompts (except ``batch``, over the whole host batch) and do not depend on
the mesh. ``reinforce_loss`` is a token-level
masked mean over the whole batch passed in; its metrics are (sum, count) pairs so that micro-batch
and multi-host reductions stay exact. Both are registered (families "advantage" and
"policy_gradient"); formulas in docs/methods.md (RefAlign).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .registry import get_loss, list_losses, register_loss

Array = jax.Array

# ----------------------------------------------------------------------------- advantage estimators
# Family "advantage": fn(rewards_bk, mask_f_bk, eps) -> adv_bk over each prompt's K samples
# (mask_f_bk: float 1 on real samples). ``advantages`` adds the clip and the masking.


def _stats(r: Array, mf: Array):
    n = mf.sum(-1, keepdims=True)
    mean = (r * mf).sum(-1, keepdims=True) / jnp.maximum(n, 1.0)
    return n, r - mean


@register_loss("mean", "advantage", needs_reference=False)
def mean_advantage(r: Array, mf: Array, eps: float = 1e-6) -> Array:
    """R_k − mean_j R_j, the sample itself INCLUDED (RefAlign); K=2 gives ±(R1−R2)/2."""
    return _stats(r, mf)[1]


@register_loss("rloo", "advantage", needs_reference=False)
def rloo_advantage(r: Array, mf: Array, eps: float = 1e-6) -> Array:
    """R_k − mean_{j≠k} R_j (leave-one-out) = n/(n−1)·(R_k − mean); a lone sample has no
    baseline → 0."""
    n, centred = _stats(r, mf)
    return jnp.where(n > 1, centred * n / jnp.maximum(n - 1.0, 1.0), 0.0)


@register_loss("grpo", "advantage", needs_reference=False)
def grpo_advantage(r: Array, mf: Array, eps: float = 1e-6) -> Array:
    """(R_k − mean) / (std + eps), std with Bessel's correction as in TRL's GRPO."""
    n, centred = _stats(r, mf)
    var = (centred**2 * mf).sum(-1, keepdims=True) / jnp.maximum(n - 1.0, 1.0)
    return centred / (jnp.sqrt(var) + eps)


@register_loss("none", "advantage", needs_reference=False)
def raw_advantage(r: Array, mf: Array, eps: float = 1e-6) -> Array:
    """R_k itself (no baseline)."""
    return r


@register_loss("batch", "advantage", needs_reference=False)
def batch_advantage(r: Array, mf: Array, eps: float = 1e-6) -> Array:
    """R_k − mean of ALL real rows passed in (every prompt's samples): unlike ``mean``, a prompt
    whose K samples score alike still gets a signal relative to the other prompts
    (REINFORCE++-style global baseline); unlike ``none``, advantages still sum to zero. The one
    estimator that couples prompts: it reads the whole batch it is given."""
    return r - (r * mf).sum() / jnp.maximum(mf.sum(), 1.0)


ADVANTAGE_METHODS = tuple(list_losses("advantage"))  # the built-ins, for help texts


def advantages(
    rewards_bk: Array,
    method: str = "mean",
    clip: float | None = None,
    eps: float = 1e-6,
    mask_bk: Array | None = None,
) -> Array:
    """Per-sample advantages [num_prompts, K] (gradient stopped) from the registered estimator
    ``method`` (family "advantage": mean | rloo | grpo | none | any registered later).
    ``clip`` clips the result to [−clip, clip] (RefAlign's ε). ``mask_bk`` (optional) marks real
    samples for a variable K; masked entries get advantage 0 and are excluded from the statistics.
    """
    estimator = get_loss(method, "advantage")
    r = jax.lax.stop_gradient(rewards_bk)
    m = jnp.ones(r.shape, bool) if mask_bk is None else mask_bk.astype(bool)
    a = estimator(r, m.astype(r.dtype), eps)
    if clip is not None:
        a = jnp.clip(a, -clip, clip)
    return jnp.where(m, a, 0.0)


def length_factor(scores: Array, lengths: Array, C: float) -> Array:  # noqa: N803 (the paper's name)
    """RefAlign's optional length factor: (1 + 1/(C + |y|)) · S. C is an open knob."""
    return (1.0 + 1.0 / (C + lengths.astype(scores.dtype))) * scores


@register_loss("reinforce", "policy_gradient", needs_reference=False)
def reinforce_loss(
    logps_bt: Array,
    mask_bt: Array,
    adv_b: Array,
    old_logps_bt: Array | None = None,
    clip_ratio: float | None = None,
    ref_logps_bt: Array | None = None,
    kl_coef: float = 0.0,
) -> tuple[Array, dict[str, tuple[Array, Array]]]:
    """Token-level masked mean of −A·log π (a per-sample advantage ``adv_b`` [B] is broadcast
    to every response token; [B, T] gives each token its own).

    * ``old_logps_bt`` given: importance ratio ρ = exp(logp − old) replaces log π (its gradient at
      ρ=1 is the REINFORCE gradient); with ``clip_ratio`` ε the PPO pessimistic objective
      max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) is used, for several updates on one batch of samples.
    * ``kl_coef`` > 0 with ``ref_logps_bt``: adds kl_coef × masked mean of the k3 estimator
      exp(ref − logp) − (ref − logp) − 1 ≥ 0 (KL to the initial policy). Off by default.
    Returns (loss, metrics) with metrics as (sum, count) pairs.
    """
    m = mask_bt.astype(bool)
    mf = m.astype(logps_bt.dtype)
    count = mf.sum()
    denom = jnp.maximum(count, 1.0)
    a = jax.lax.stop_gradient(adv_b).astype(logps_bt.dtype)
    a = a if a.ndim == 2 else a[:, None]  # [B] per sample, or [B, T] per token
    zero = jnp.zeros((), logps_bt.dtype)
    metrics: dict[str, tuple[Array, Array]] = {}
    if old_logps_bt is None:
        per_tok = -a * logps_bt
    else:
        log_ratio = jnp.where(m, logps_bt - jax.lax.stop_gradient(old_logps_bt), 0.0)
        ratio = jnp.exp(log_ratio)
        per_tok = -a * ratio
        if clip_ratio is not None:
            clipped = -a * jnp.clip(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
            metrics["pg/clipfrac"] = (jnp.where(m, clipped > per_tok, False).sum().astype(mf.dtype), count)
            per_tok = jnp.maximum(per_tok, clipped)
        metrics["pg/ratio"] = (jax.lax.stop_gradient(jnp.where(m, ratio, zero).sum()), count)
    pg_sum = jnp.where(m, per_tok, zero).sum()
    loss = pg_sum / denom
    metrics["pg/loss"] = (jax.lax.stop_gradient(pg_sum), count)
    if ref_logps_bt is not None:
        d = jnp.where(m, jax.lax.stop_gradient(ref_logps_bt) - logps_bt, 0.0)
        kl_sum = jnp.where(m, jnp.exp(d) - d - 1.0, zero).sum()
        if kl_coef:
            loss = loss + kl_coef * kl_sum / denom
        metrics["pg/kl"] = (jax.lax.stop_gradient(kl_sum), count)
    adv = jax.lax.stop_gradient(adv_b)
    if adv.ndim == 2:  # per token: averaged over response tokens
        adv, n_adv = jnp.where(m, adv, 0.0), count
    else:
        n_adv = jnp.asarray(adv.size, adv.dtype)
    metrics["pg/advantage"] = (adv.sum(), n_adv)
    metrics["pg/abs_advantage"] = (jnp.abs(adv).sum(), n_adv)
    return loss, metrics
