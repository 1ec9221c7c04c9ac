"""Listwise objectives over K ranked responses per prompt (variable K by masking).

    loss_fn(inp: ListLogps, cfg: ListwiseConfig) -> (losses_b [B], metrics: dict[str, array [B]])

Each prompt b has up to K responses; ``mask`` marks the real ones, ``scores`` (ψ: labels or reward-
model scores, higher = better) give the target order. The policy's item score is s = β·r with
r = lp_θ − lp_ref (ref None → reference-free, r = lp). Every loss is per list, so there is no
coupling across the batch; the batch loss is ``losses_b.mean()`` (lists with < 2 items give 0).

* ``plackett_luce`` – −Σ_k log[exp(s_(k)) / Σ_{j≥k} exp(s_(j))] in ψ order (masked suffix
  logsumexp). With K=2 it is exactly DPO's −log σ(β·h).
* ``lipo_lambda`` – −Σ_{ψ_i>ψ_j} Δ_ij log σ(s_i − s_j), Δ_ij = |G_i−G_j|·|1/D(τ_i) − 1/D(τ_j)|,
  G = 2^ψ − 1, D(τ) = ln(1+τ) (the base only rescales Δ), τ = 1-based rank under the current s,
  Δ under stop_gradient.
* ``pro`` – PRO: no reference, r = avg_lp = lp/|y|; −Σ_{k<K} log[exp(r_k/T_kk) / Σ_{i≥k} exp(r_i/T_ki)]
  with 1/T_ki = ψ_k − ψ_i and 1/T_kk = max_{i>k}(ψ_k − ψ_i), plus ``pro_sft_weight``·(−avg_lp of the
  best response). β is not used by PRO.
* ``opo`` – OPO: −NeuralNDCG: NeuralSort relaxation of the s order (temperature
  ``neuralsort_tau``, optional Sinkhorn scaling), gains 2^ψ − 1, discount 1/log2(1 + rank),
  normalised by the ideal DCG. ψ should be ≥ 0 (e.g. graded labels) so gains are non-negative.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from .accuracy import top1_accuracy
from .registry import get_loss, register_loss

Array = jax.Array


class ListLogps(NamedTuple):
    logps: Array  # [B, K] policy sums over response tokens
    ref_logps: Array | None  # [B, K] or None (reference-free)
    lengths: Array | None  # [B, K] response token counts (PRO)
    mask: Array  # [B, K] bool, real responses
    scores: Array  # [B, K] ψ, higher = better (data: never differentiated)


@dataclasses.dataclass(frozen=True)
class ListwiseConfig:
    family: ClassVar[str] = "listwise"  # registry family of the names in `loss`
    loss: str = "plackett_luce"  # registered listwise loss: plackett_luce (pl) | lipo_lambda (lipo) | pro | opo
    beta: float = 0.1  # item score s = β·(log π_θ − log π_ref)
    pro_sft_weight: float = 0.05  # β_sft [open]: PRO's NLL weight on the best response
    neuralsort_tau: float = 1.0  # NeuralSort temperature (smaller = closer to hard sort)
    sinkhorn_iters: int = 0  # 0 = plain NeuralSort rows; NeuralNDCG uses Sinkhorn (e.g. 50)
    ndcg_k: int | None = None  # truncate NDCG@k (None = full list)

    @property
    def loss_names(self) -> tuple[str, ...]:
        return (self.loss,)


def _neg(dtype) -> float:
    # Finite "minus infinity": exp underflows to 0 but no inf − inf → NaN in values or gradients.
    return float(jnp.finfo(dtype).min) / 4


def _policy_scores(inp: ListLogps, cfg: ListwiseConfig) -> Array:
    r = inp.logps if inp.ref_logps is None else inp.logps - inp.ref_logps
    return cfg.beta * r


def _order(scores_bk: Array, mask_bk: Array) -> Array:
    """Indices sorting each list by ψ descending, masked items last (stable for ties)."""
    key = jnp.where(mask_bk, -jax.lax.stop_gradient(scores_bk), jnp.inf)
    return jnp.argsort(key, axis=-1, stable=True)


def _take(x: Array, idx: Array) -> Array:
    return jnp.take_along_axis(x, idx, axis=-1)


def _suffix_lse(x_bk: Array, ok_bk: Array) -> Array:
    """logsumexp over j ≥ k of the valid entries, [B, K] (O(K²), K is small)."""
    k = x_bk.shape[-1]
    upper = jnp.triu(jnp.ones((k, k), bool))  # [k, j]: j ≥ k
    a = jnp.where(upper[None] & ok_bk[:, None, :], x_bk[:, None, :], _neg(x_bk.dtype))
    return jax.nn.logsumexp(a, axis=-1)


def _metrics(s_bk: Array, inp: ListLogps, losses_b: Array) -> dict[str, Array]:
    s = jax.lax.stop_gradient(s_bk)
    neg = _neg(s.dtype)
    best_psi = jnp.argmax(jnp.where(inp.mask, inp.scores, neg), axis=-1)
    return {
        "loss": jax.lax.stop_gradient(losses_b),
        "rewards/best": jnp.take_along_axis(s, best_psi[:, None], -1)[:, 0],
        # ties among the policy's top items: a fair coin (1/K while policy == reference)
        "rewards/top1_accuracy": top1_accuracy(s, inp.scores, inp.mask),
    }


@register_loss("plackett_luce", "listwise", aliases=("pl",))
def plackett_luce_loss(inp: ListLogps, cfg: ListwiseConfig) -> tuple[Array, dict[str, Array]]:
    s = _policy_scores(inp, cfg)
    idx = _order(inp.scores, inp.mask)
    s_o, ok_o = _take(s, idx), _take(inp.mask, idx)
    terms = jnp.where(ok_o, s_o - _suffix_lse(s_o, ok_o), 0.0)
    losses = -terms.sum(-1)
    return losses, _metrics(s, inp, losses)


def _ranks(s_bk: Array, mask_bk: Array) -> Array:
    """1-based rank of each item under s (descending) among the valid items; ties by index."""
    s = jax.lax.stop_gradient(s_bk)
    k = s.shape[-1]
    before = (s[:, None, :] > s[:, :, None]) | (
        (s[:, None, :] == s[:, :, None]) & (jnp.arange(k)[None, :] < jnp.arange(k)[:, None])[None]
    )  # [b, i, j]: item j ranks before item i
    return 1 + (before & mask_bk[:, None, :]).sum(-1)


@register_loss("lipo_lambda", "listwise", aliases=("lipo",))
def lipo_lambda_loss(inp: ListLogps, cfg: ListwiseConfig) -> tuple[Array, dict[str, Array]]:
    s = _policy_scores(inp, cfg)
    psi = jax.lax.stop_gradient(inp.scores).astype(s.dtype)
    gain = 2.0**psi - 1.0
    inv_d = 1.0 / jnp.log1p(_ranks(s, inp.mask).astype(s.dtype))
    delta = jnp.abs(gain[:, :, None] - gain[:, None, :]) * jnp.abs(inv_d[:, :, None] - inv_d[:, None, :])
    pair = inp.mask[:, :, None] & inp.mask[:, None, :] & (psi[:, :, None] > psi[:, None, :])
    ell = jax.nn.log_sigmoid(s[:, :, None] - s[:, None, :])
    losses = -jnp.where(pair, jax.lax.stop_gradient(delta) * ell, 0.0).sum((-1, -2))
    return losses, _metrics(s, inp, losses)


@register_loss("pro", "listwise", needs_reference=False)
def pro_loss(inp: ListLogps, cfg: ListwiseConfig) -> tuple[Array, dict[str, Array]]:
    if inp.lengths is None:
        raise ValueError("PRO needs ListLogps.lengths (it ranks by avg_lp)")
    r = inp.logps / jnp.maximum(inp.lengths.astype(inp.logps.dtype), 1.0)
    idx = _order(inp.scores, inp.mask)
    r_o, ok_o = _take(r, idx), _take(inp.mask, idx)
    psi_o = _take(jax.lax.stop_gradient(inp.scores).astype(r.dtype), idx)
    kk = r.shape[-1]
    later = jnp.triu(jnp.ones((kk, kk), bool), k=1)[None] & ok_o[:, None, :]  # [b, k, i]: i > k, valid
    gap = jnp.where(later, psi_o[:, :, None] - psi_o[:, None, :], 0.0)  # 1/T_ki
    pos = gap.max(-1)  # 1/T_kk = max_i 1/T_ki (T_kk = min_i T_ki)
    neg = _neg(r.dtype)
    logits = jnp.where(later, r_o[:, None, :] * gap, neg)  # [b, k, i]
    own = r_o * pos
    lse = jnp.logaddexp(own, jax.nn.logsumexp(logits, axis=-1))
    has = ok_o & later.any(-1)
    rank_loss = -jnp.where(has, own - lse, 0.0).sum(-1)
    nll_best = -jnp.where(ok_o[:, 0], r_o[:, 0], 0.0)
    losses = rank_loss + cfg.pro_sft_weight * nll_best
    return losses, _metrics(r, inp, losses)


def _neural_sort(s_bk: Array, mask_bk: Array, tau: float, sinkhorn_iters: int) -> Array:
    """NeuralSort P̂[b, rank, item] restricted to the valid items of each list (rows ≥ n are 0)."""
    kk = s_bk.shape[-1]
    mf = mask_bk.astype(s_bk.dtype)
    n = mf.sum(-1)  # [b]
    a_sum = (jnp.abs(s_bk[:, :, None] - s_bk[:, None, :]) * mf[:, None, :]).sum(-1)  # Σ_k |s_j − s_k|
    scale = n[:, None] + 1.0 - 2.0 * jnp.arange(1, kk + 1, dtype=s_bk.dtype)[None]  # [b, rank]
    logits = (scale[:, :, None] * s_bk[:, None, :] - a_sum[:, None, :]) / tau
    logits = jnp.where(mask_bk[:, None, :], logits, _neg(s_bk.dtype))
    row_ok = (jnp.arange(kk)[None] < n[:, None])[:, :, None]
    p = jnp.where(row_ok & mask_bk[:, None, :], jax.nn.softmax(logits, axis=-1), 0.0)

    def body(_, p):  # Sinkhorn: alternate column / row normalisation on the valid block
        p = p / jnp.maximum(p.sum(-2, keepdims=True), 1e-20)
        p = jnp.where(row_ok & mask_bk[:, None, :], p, 0.0)
        p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-20)
        return jnp.where(row_ok & mask_bk[:, None, :], p, 0.0)

    return jax.lax.fori_loop(0, sinkhorn_iters, body, p) if sinkhorn_iters else p


@register_loss("opo", "listwise")
def opo_loss(inp: ListLogps, cfg: ListwiseConfig) -> tuple[Array, dict[str, Array]]:
    s = _policy_scores(inp, cfg)
    kk = s.shape[-1]
    psi = jax.lax.stop_gradient(inp.scores).astype(s.dtype)
    gain = jnp.where(inp.mask, 2.0**psi - 1.0, 0.0)
    disc = 1.0 / jnp.log2(jnp.arange(2, kk + 2, dtype=s.dtype))  # rank r (1-based) → 1/log2(1+r)
    if cfg.ndcg_k is not None:
        disc = jnp.where(jnp.arange(kk) < cfg.ndcg_k, disc, 0.0)
    p = _neural_sort(s, inp.mask, cfg.neuralsort_tau, cfg.sinkhorn_iters)
    dcg = (jnp.einsum("brj,bj->br", p, gain) * disc).sum(-1)
    ideal = (-jnp.sort(-jnp.where(inp.mask, gain, -jnp.inf), axis=-1))
    idcg = (jnp.where(jnp.isfinite(ideal), ideal, 0.0) * disc).sum(-1)
    ndcg = jnp.where(idcg > 0, dcg / jnp.where(idcg > 0, idcg, 1.0), 0.0)
    losses = -ndcg
    return losses, _metrics(s, inp, losses)


def listwise_loss(inp: ListLogps, cfg: ListwiseConfig) -> tuple[Array, dict[str, Array]]:
    """The registered listwise loss named ``cfg.loss``."""
    return get_loss(cfg.loss, "listwise")(inp, cfg)
