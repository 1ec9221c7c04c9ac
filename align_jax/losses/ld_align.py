"""LD-Align's weighted DPO (arXiv 2404.06390): the sigmoid DPO term of each pair times a weight
that grows with the pair's latent distance s = ‖ϕ(x, y) − ϕ(x, y′)‖ (winner y = the SFT
reference, loser y′ = a policy sample), so pairs where the policy is still far from the
reference count more.

* :func:`latent_weights` — the weight schemes (``softmax``: n·softmax(s/T) over the group;
  ``mean_norm``: s / mean(s); ``none``: 1 = plain SPIN). Every scheme has mean 1 over its group,
  so the loss keeps DPO's scale. Computed under ``stop_gradient``.
* registered pairwise loss ``"ld_align"``: ``stop_gradient(w) · −log σ(β·Δ)`` with
  ``w = PairLogps.pair_weight`` (the batch key ``pair_weight``, attached to the round's data by
  ``algorithms.ld_align``). With every weight 1 it is exactly ``"sigmoid"``. It combines with the
  family's extras like any member (``rpo_alpha`` NLL, LD-DPO ``ld_alpha``, f-divergences).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .preference import PairLogps, PrefConfig, preference_loss
from .registry import loss_spec, register_loss

WEIGHT_SCHEMES = ("softmax", "mean_norm", "none")


def latent_weights(distances, scheme: str = "softmax", temperature: float = 1.0):
    """Per-pair weights [N] from latent distances [N], normalised over the N pairs passed in
    (mean 1), gradient stopped."""
    s = jax.lax.stop_gradient(jnp.asarray(distances, jnp.float32))
    if scheme == "softmax":
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: must be > 0")
        w = s.shape[0] * jax.nn.softmax(s / temperature)
    elif scheme == "mean_norm":
        m = s.mean()
        w = jnp.where(m > 0, s / jnp.where(m > 0, m, 1.0), jnp.ones_like(s))
    elif scheme == "none":
        w = jnp.ones_like(s)
    else:
        raise ValueError(f"weight={scheme!r}: expected one of {list(WEIGHT_SCHEMES)}")
    return jax.lax.stop_gradient(w)


def _weighted_sigmoid_term(inp: PairLogps, c, cfg: PrefConfig):
    if inp.pair_weight is None:
        raise ValueError("loss 'ld_align' needs PairLogps.pair_weight (batch key 'pair_weight')")
    dpo = loss_spec("sigmoid", "pair").meta["term"](inp, c, cfg)
    return jax.lax.stop_gradient(inp.pair_weight.astype(dpo.dtype)) * dpo


def ld_align_loss(inp: PairLogps, cfg: PrefConfig):
    """Latent-distance-weighted DPO (ignores cfg.loss; honours rpo_alpha, WPO, LD-DPO)."""
    return preference_loss(inp, dataclasses.replace(cfg, loss="ld_align", loss_weights=None))


register_loss("ld_align", "pair", term=_weighted_sigmoid_term, uses_f=True,
              reward="ref")(ld_align_loss)
