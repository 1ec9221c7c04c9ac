"""KTO (Kahneman–Tversky Optimisation) and its reference-point-free APO variant, unpaired data.

    loss_fn(inp: UnpairedLogps, cfg: KTOConfig) -> (losses_b [B], metrics: dict[str, array [B]])

Each example is one (prompt, response, desirable?) triple. KTO's reference point
z0 = max(0, mean_b [lp_θ(y'_b|x_b) − lp_ref(y'_b|x_b)]) is estimated from MISMATCHED pairs
(response y'_b of another prompt; the step builds them, e.g. by rolling the batch by one) and is
detached. Group semantics: the mean runs over the whole batch passed in (the global batch under jit),
so the value does not depend on the mesh. TRL averages per-device means, which is the same for equal
per-device sizes. The batch loss is ``losses_b.sum() / mask.sum()`` (= ``mean`` without padding).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from .registry import get_loss, register_loss

Array = jax.Array


class UnpairedLogps(NamedTuple):
    logps: Array  # [B] policy sums over response tokens
    ref_logps: Array  # [B]
    labels: Array  # [B] bool, True = desirable
    kl_logps: Array | None = None  # [B] policy on mismatched (x, y') pairs (gradient is stopped)
    ref_kl_logps: Array | None = None  # [B] reference on the same mismatched pairs
    mask: Array | None = None  # [B] valid examples (padding), None = all valid


@dataclasses.dataclass(frozen=True)
class KTOConfig:
    family: ClassVar[str] = "unpaired"  # registry family of the names in `loss`
    loss: str = "kto"  # or "apo_zero_unpaired" (no KL term); any registered "unpaired" loss
    beta: float = 0.1
    desirable_weight: float = 1.0  # λ_D
    undesirable_weight: float = 1.0  # λ_U

    @property
    def loss_names(self) -> tuple[str, ...]:
        return (self.loss,)


def _mask(inp: UnpairedLogps) -> Array:
    if inp.mask is None:
        return jnp.ones(inp.logps.shape, bool)
    return inp.mask.astype(bool)


def kl_reference_point(inp: UnpairedLogps) -> Array:
    """z0: detached, clamped ≥ 0 masked mean of the mismatched-pair log-ratios (scalar)."""
    if inp.kl_logps is None or inp.ref_kl_logps is None:
        raise ValueError("KTO needs kl_logps and ref_kl_logps (mismatched pairs)")
    m = _mask(inp)
    d = jnp.where(m, inp.kl_logps - inp.ref_kl_logps, 0.0)
    kl = d.sum() / jnp.maximum(m.sum(), 1).astype(d.dtype)
    return jax.lax.stop_gradient(jnp.maximum(kl, 0.0))


def _unpaired(inp: UnpairedLogps, cfg: KTOConfig, kind: str) -> tuple[Array, dict[str, Array]]:
    m = _mask(inp)
    lab = inp.labels.astype(bool)
    r = inp.logps - inp.ref_logps
    if kind == "kto":
        z0 = kl_reference_point(inp)
        chosen = 1.0 - jax.nn.sigmoid(cfg.beta * (r - z0))
        rejected = 1.0 - jax.nn.sigmoid(cfg.beta * (z0 - r))
    else:  # apo_zero_unpaired: reference point fixed at 0
        z0 = jnp.zeros((), r.dtype)
        chosen = 1.0 - jax.nn.sigmoid(cfg.beta * r)
        rejected = jax.nn.sigmoid(cfg.beta * r)
    losses = jnp.where(lab, cfg.desirable_weight * chosen, cfg.undesirable_weight * rejected)
    losses = jnp.where(m, losses, 0.0)
    rew = jax.lax.stop_gradient(cfg.beta * r)
    fc = (lab & m).astype(r.dtype)
    fr = (~lab & m).astype(r.dtype)
    # per-example (sum, count) pairs: mean chosen reward = Σ rewards/chosen / Σ count/chosen
    metrics = {
        "rewards/chosen": rew * fc,
        "rewards/rejected": rew * fr,
        "count/chosen": fc,
        "count/rejected": fr,
        "logps/chosen": jax.lax.stop_gradient(inp.logps) * fc,
        "logps/rejected": jax.lax.stop_gradient(inp.logps) * fr,
        "kl": jnp.broadcast_to(z0, r.shape) * m.astype(r.dtype),
        "loss": jax.lax.stop_gradient(losses),
    }
    return losses, metrics


@register_loss("kto", "unpaired", uses_kl_pairs=True)
def kto_loss(inp: UnpairedLogps, cfg: KTOConfig) -> tuple[Array, dict[str, Array]]:
    """KTO: desirable λ_D·(1 − σ(β(r − z0))), undesirable λ_U·(1 − σ(β(z0 − r)))."""
    return _unpaired(inp, cfg, "kto")


@register_loss("apo_zero_unpaired", "unpaired")
def apo_zero_unpaired_loss(inp: UnpairedLogps, cfg: KTOConfig) -> tuple[Array, dict[str, Array]]:
    """APO-zero, unpaired: desirable λ_D·(1 − σ(βr)), undesirable λ_U·σ(βr); no KL estimate."""
    return _unpaired(inp, cfg, "apo_zero_unpaired")


def unpaired_loss(inp: UnpairedLogps, cfg: KTOConfig) -> tuple[Array, dict[str, Array]]:
    """The registered unpaired loss named ``cfg.loss``."""
    return get_loss(cfg.loss, "unpaired")(inp, cfg)
