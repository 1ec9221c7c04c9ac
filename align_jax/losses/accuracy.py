"""Ranking accuracies with ties counted ONE way everywhere: as the expected accuracy of a fair
coin between the tied items. A pair whose two rewards tie counts 0.5; a list whose top score is
shared by m items counts (tied items that are among the best) / m — 1/K when every score ties.

So a policy still equal to its reference (every implicit reward exactly 0) scores 0.5 pairwise
and 1/K top-1, held-out and at training step 1 alike. "Tie" means within ``TIE_TOL`` in reward
units (β·log-ratio): the cached reference and the training forward run the same weights through
differently shaped batches, and their float rounding (~1e-6 here) must not decide the metric.
(TRL's DPOTrainer counts a tie as wrong: ``chosen_rewards > rejected_rewards``.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TIE_TOL = 1e-4  # |reward difference| at or below this is a tie (reward units, β included)


def pair_accuracy(chosen, rejected, tol: float = TIE_TOL):
    """1 where chosen > rejected, 0.5 on a tie, 0 otherwise (elementwise, chosen's dtype)."""
    d = jax.lax.stop_gradient(jnp.asarray(chosen) - jnp.asarray(rejected))
    dtype = jnp.result_type(d.dtype, jnp.float32)
    return jnp.where(d > tol, 1.0, jnp.where(d < -tol, 0.0, 0.5)).astype(dtype)


def top1_accuracy(pred_bk, truth_bk, mask_bk, tol: float = TIE_TOL):
    """[B]: share of the policy's top-scored items (``pred`` within ``tol`` of its best valid
    score) that are among the best by ``truth`` — a fair coin among tied top items."""
    pred = jax.lax.stop_gradient(pred_bk)
    neg = jnp.finfo(jnp.result_type(pred.dtype, jnp.float32)).min / 4
    p = jnp.where(mask_bk, pred, neg)
    t = jnp.where(mask_bk, truth_bk, neg)
    top = mask_bk & (p >= p.max(-1, keepdims=True) - tol)
    best = mask_bk & (t >= t.max(-1, keepdims=True))
    return ((top & best).sum(-1) / jnp.maximum(top.sum(-1), 1)).astype(p.dtype)
