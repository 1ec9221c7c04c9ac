"""Pairwise DPO family: one pure function per member, all with the same signature

    loss_fn(inp: PairLogps, cfg: PrefConfig) -> (losses_b [B], metrics: dict[str, array [B]])

so a config switches objectives with ``loss="ipo"`` (or combines them: ``loss=("sigmoid", "sft")``,
``loss_weights=(1.0, 0.5)``, summed per example as TRL's multi-loss does). The batch loss is
``losses_b.mean()``; metrics are per example so the caller reduces them as (sum, count).

Conventions follow TRL 1.16 (DPOTrainer, CPOTrainer, ORPOTrainer) and are tested against TRL's own
code: log-probs are SUMS over response tokens; ``r = lp - lp_ref``; ``rewards/* = beta * r``
(reference-free losses: ``beta * avg_lp`` for simpo/orpo, ``beta * lp`` for cpo).

Batch-coupled members (group semantics):
* ``sft`` (and the ORPO NLL, ``rpo_alpha``): token-level mean over the WHOLE batch passed in,
  ``-sum_b lp_w / sum_b |y_w|``, broadcast to every example (TRL's convention).
* ``aot`` / ``aot_unpaired``: sorted within groups of ``cfg.group_size`` consecutive examples
  (None = the whole batch passed in). Under jit the batch is the global batch, so the value does not
  depend on the mesh; TRL sorts the per-device batch, i.e. ``group_size = per-device batch``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from .accuracy import pair_accuracy
from .registry import loss_spec, register_loss

Array = jax.Array


class PairLogps(NamedTuple):
    """Inputs of every pairwise loss; float arrays [B]. ``None`` fields are optional extras."""

    chosen_logps: Array  # policy, sum over response tokens
    rejected_logps: Array
    ref_chosen_logps: Array | None = None  # None → zeros (reference-free losses ignore them)
    ref_rejected_logps: Array | None = None
    chosen_len: Array | None = None  # response token counts (ipo, sigmoid_norm, simpo, orpo, sft, rdpo)
    rejected_len: Array | None = None
    # LD-DPO: the part of each sum beyond the shared length min(|y_w|, |y_l|) (see shared_tail_logps).
    chosen_tail_logps: Array | None = None
    rejected_tail_logps: Array | None = None
    ref_chosen_tail_logps: Array | None = None
    ref_rejected_tail_logps: Array | None = None
    # WPO: per-example log-weights (see wpo_log_weights); used as constants (stop_gradient).
    chosen_logw: Array | None = None
    rejected_logw: Array | None = None
    # bco_pair: running mean δ of the rewards (scalar). A pure function cannot hold it; the step keeps
    # it in its state and updates it with bco_delta_update. None → 0 (TRL 1.16's bco_pair).
    bco_delta: Array | None = None
    # LD-Align (ld_align.py): per-pair weight on the DPO term, a constant (stop_gradient).
    pair_weight: Array | None = None


_F_DIVS = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclasses.dataclass(frozen=True)
class PrefConfig:
    """Hyper-parameters of the pairwise family (hashable, so it can be a static jit argument);
    formulas and defaults in docs/methods.md."""

    family: ClassVar[str] = "pair"  # registry family of the names in `loss`

    loss: str | tuple[str, ...] = "sigmoid"  # registered pairwise loss(es); several are summed
    loss_weights: tuple[float, ...] | None = None  # None → 1.0 each
    beta: float = 0.1  # IPO: the regulariser τ; SimPO: β (paper 2.0–10)
    label_smoothing: float = 0.0  # cdpo/robust/exo_pair/aot/simpo/cpo ε
    # f-DPO: reverse_kl | forward_kl | js_divergence | alpha_divergence (members built on the
    # reward difference only)
    f_divergence: str = "reverse_kl"
    f_alpha: float = 0.5  # α of alpha_divergence
    gamma: float = 0.5  # SimPO target margin γ (TRL's simpo_gamma): logits = Δavg_lp − γ/β
    orpo_lambda: float = 0.1  # ORPO λ (TRL's ORPOConfig.beta)
    dpop_lambda: float = 50.0  # DPOP λ (Smaug paper)
    alpha: float = 0.0  # R-DPO length coefficient α
    rpo_alpha: float = 0.0  # NLL weight (TRL's old rpo_alpha): adds rpo_alpha · "sft"
    ld_alpha: float | None = None  # LD-DPO α ∈ [0, 1]; None = off
    use_weighting: bool = False  # WPO
    discopop_tau: float = 0.05  # DiscoPOP temperature of the logistic/exponential mix
    group_size: int | None = None  # aot sorting groups (None = the global batch)

    def __post_init__(self):
        # Lists from a CLI/YAML would make the config unhashable; store tuples ("a,b" from a
        # command line is two names).
        if isinstance(self.loss, str) and "," in self.loss:
            object.__setattr__(self, "loss", tuple(n.strip() for n in self.loss.split(",")))
        if not isinstance(self.loss, str):
            object.__setattr__(self, "loss", tuple(self.loss))
        if self.loss_weights is not None:
            object.__setattr__(self, "loss_weights", tuple(float(w) for w in self.loss_weights))

    @property
    def loss_names(self) -> tuple[str, ...]:
        return (self.loss,) if isinstance(self.loss, str) else self.loss


# ----------------------------------------------------------------------------- helpers for the step


def shared_tail_logps(token_logps_bt: Array, mask_bt: Array, other_len_b: Array) -> tuple[Array, Array]:
    """Split per-token log-probs into (shared prefix sum, excess sum) for LD-DPO: the shared part is
    the first ``min(|y|, other_len)`` response tokens (response positions counted inside the mask, so
    left/right padding and prompts are handled), the rest is the verbose tail."""
    m = mask_bt.astype(bool)
    pos_bt = jnp.cumsum(m, axis=1)  # 1-based position among response tokens
    shared_b = jnp.minimum(m.sum(axis=1), other_len_b.astype(pos_bt.dtype))
    in_shared = m & (pos_bt <= shared_b[:, None])
    in_tail = m & (pos_bt > shared_b[:, None])
    # where (not multiply) so -inf/NaN garbage at padded positions cannot leak into the sums
    zero = jnp.zeros((), token_logps_bt.dtype)
    return (jnp.where(in_shared, token_logps_bt, zero).sum(1), jnp.where(in_tail, token_logps_bt, zero).sum(1))


def ld_dpo_logps(token_logps_bt: Array, mask_bt: Array, other_len_b: Array, alpha: float) -> Array:
    """LD-DPO length-desensitised sum: shared + alpha · tail (alpha=1 → plain sum)."""
    shared, tail = shared_tail_logps(token_logps_bt, mask_bt, other_len_b)
    return shared + alpha * tail


def log_sum_sq_probs(logits_btv: Array) -> Array:
    """log Σ_v p_v² per position (WPO's alignment term), in float32."""
    lsm = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
    return jax.nn.logsumexp(2.0 * lsm, axis=-1)


def wpo_log_weights(token_logps_bt: Array, log_sum_sq_probs_bt: Array, mask_bt: Array) -> Array:
    """WPO per-example log-weight: mean over response tokens of (log p(y_t) − log Σ_v p_v²); the pair
    weight is exp(lw_w + lw_l). Gradient is stopped: WPO weights are constants (TRL: no_grad)."""
    m = mask_bt.astype(bool)
    n = jnp.maximum(m.sum(axis=1), 1).astype(token_logps_bt.dtype)
    s = jnp.where(m, token_logps_bt - log_sum_sq_probs_bt, 0.0).sum(axis=1)
    return jax.lax.stop_gradient(s / n)


def bco_delta_update(delta: Array, count: Array, chosen_rewards_b: Array, rejected_rewards_b: Array):
    """Running mean of all BCO rewards (β·r of chosen and rejected), count-weighted like TRL's old
    RunningMoments; returns (new_delta, new_count). Feed rewards/chosen, rewards/rejected metrics."""
    r = jax.lax.stop_gradient(jnp.concatenate([chosen_rewards_b, rejected_rewards_b]))
    n = jnp.asarray(r.shape[0], jnp.float32)
    new_count = count + n
    return delta + (r.mean() - delta) * (n / new_count), new_count


# ----------------------------------------------------------------------------- prepared quantities


class _Ctx(NamedTuple):
    lp_c: Array  # policy sums (LD-adjusted when ld_alpha is set)
    lp_r: Array
    ref_c: Array
    ref_r: Array
    lr_c: Array  # log-ratios lp − ref
    lr_r: Array
    sc_c: Array  # f-divergence scores of the log-ratios (= lr for reverse KL)
    sc_r: Array
    delta: Array  # sc_c − sc_r
    full_lp_c: Array  # raw chosen sum (for the NLL/sft term, never LD-adjusted, as in TRL)


def _need(x, what, loss):
    if x is None:
        raise ValueError(f"loss {loss!r} needs PairLogps.{what}")
    return x


def _len(inp, side, loss):
    n = _need(getattr(inp, f"{side}_len"), f"{side}_len", loss)
    return jnp.maximum(n.astype(inp.chosen_logps.dtype), 1.0)


def _f_score(lr: Array, cfg: PrefConfig) -> Array:
    """f'(π/π_ref) of the f-DPO paper, as in TRL."""
    if cfg.f_divergence == "reverse_kl":
        return lr
    if cfg.f_divergence == "forward_kl":
        return 1.0 - jnp.exp(-lr)
    if cfg.f_divergence == "js_divergence":
        return math.log(2.0) + jax.nn.log_sigmoid(lr)
    if abs(cfg.f_alpha - 1.0) < 1e-6:  # alpha → 1 limit is reverse KL
        return lr
    t = jnp.minimum((cfg.f_alpha - 1.0) * lr, 80.0)  # clamp like TRL so exp stays finite
    return (jnp.exp(t) - 1.0) / (cfg.f_alpha - 1.0)


def _prepare(inp: PairLogps, cfg: PrefConfig) -> _Ctx:
    z = jnp.zeros_like(inp.chosen_logps)
    lp_c, lp_r = inp.chosen_logps, inp.rejected_logps
    ref_c = z if inp.ref_chosen_logps is None else inp.ref_chosen_logps
    ref_r = z if inp.ref_rejected_logps is None else inp.ref_rejected_logps
    if cfg.ld_alpha is not None:
        # sum = shared + tail, so shared + α·tail = sum − (1−α)·tail
        k = 1.0 - cfg.ld_alpha
        lp_c = lp_c - k * _need(inp.chosen_tail_logps, "chosen_tail_logps", "ld_alpha")
        lp_r = lp_r - k * _need(inp.rejected_tail_logps, "rejected_tail_logps", "ld_alpha")
        if inp.ref_chosen_logps is not None:
            ref_c = ref_c - k * _need(inp.ref_chosen_tail_logps, "ref_chosen_tail_logps", "ld_alpha")
            ref_r = ref_r - k * _need(inp.ref_rejected_tail_logps, "ref_rejected_tail_logps", "ld_alpha")
    lr_c, lr_r = lp_c - ref_c, lp_r - ref_r
    sc_c, sc_r = _f_score(lr_c, cfg), _f_score(lr_r, cfg)
    return _Ctx(lp_c, lp_r, ref_c, ref_r, lr_c, lr_r, sc_c, sc_r, sc_c - sc_r, inp.chosen_logps)


def _smoothed(logits: Array, eps: float) -> Array:
    """−(1−ε)·log σ(x) − ε·log σ(−x): conservative (cDPO) form shared by aot/simpo/cpo."""
    return -(1.0 - eps) * jax.nn.log_sigmoid(logits) - eps * jax.nn.log_sigmoid(-logits)


def _sort_groups(x: Array, group_size: int | None) -> Array:
    if group_size is None:
        return jnp.sort(x)
    if x.shape[0] % group_size:
        raise ValueError(f"batch {x.shape[0]} is not a multiple of group_size {group_size}")
    return jnp.sort(x.reshape(-1, group_size), axis=1).reshape(x.shape)


def _nll_chosen(inp: PairLogps, c: _Ctx, loss: str) -> Array:
    """Token-level mean NLL of the chosen responses over the whole batch, broadcast to [B]."""
    n = _need(inp.chosen_len, "chosen_len", loss).astype(c.full_lp_c.dtype)
    val = -c.full_lp_c.sum() / jnp.maximum(n.sum(), 1.0)
    return jnp.broadcast_to(val, c.full_lp_c.shape)


# ----------------------------------------------------------------------------- members
# Each built-in member is a TERM (inp, ctx, cfg) -> losses_b over the shared prepared quantities,
# registered under its name with: "uses_f" (built on the f-divergence reward difference; others
# reject a non-default f_divergence, as TRL does), "reward" (how rewards/* metrics are defined)
# and whether it reads the reference. The registered function is the single-member loss.


def _single(name: str):
    def fn(inp: PairLogps, cfg: PrefConfig) -> tuple[Array, dict[str, Array]]:
        return _combine(inp, cfg, ((name, 1.0),))

    fn.__name__ = f"{name}_loss"
    fn.__doc__ = f"Pairwise loss {name!r} (ignores cfg.loss; honours rpo_alpha, WPO, LD-DPO)."
    return fn


def _member(name: str, uses_f: bool = False, reward: str = "ref", needs_reference: bool = True):
    def deco(term):
        register_loss(name, "pair", needs_reference=needs_reference, term=term, uses_f=uses_f,
                      reward=reward)(_single(name))
        return term

    return deco


@_member("sigmoid", uses_f=True)
def _sigmoid(inp, c, cfg):
    return -jax.nn.log_sigmoid(cfg.beta * c.delta)


@_member("cdpo", uses_f=True)
def _cdpo(inp, c, cfg):  # conservative DPO (TRL < 1.0 "sigmoid" with label_smoothing)
    return _smoothed(cfg.beta * c.delta, cfg.label_smoothing)


@_member("robust", uses_f=True)
def _robust(inp, c, cfg):  # unbiased under label flips with probability ε
    eps, x = cfg.label_smoothing, cfg.beta * c.delta
    return (-(1.0 - eps) * jax.nn.log_sigmoid(x) + eps * jax.nn.log_sigmoid(-x)) / (1.0 - 2.0 * eps)


@_member("hinge", uses_f=True)
def _hinge(inp, c, cfg):
    return jax.nn.relu(1.0 - cfg.beta * c.delta)


@_member("ipo", uses_f=True)
def _ipo(inp, c, cfg):  # per-token-mean log-ratios (TRL, confirmed with the IPO authors)
    h = c.sc_c / _len(inp, "chosen", "ipo") - c.sc_r / _len(inp, "rejected", "ipo")
    return (h - 1.0 / (2.0 * cfg.beta)) ** 2


@_member("exo_pair", uses_f=True)
def _exo_pair(inp, c, cfg):  # KL(p_θ || p_rh) over {w, l} with p_rh = (1−ε, ε)
    eps, x = cfg.label_smoothing, cfg.beta * c.delta
    return jax.nn.sigmoid(x) * (jax.nn.log_sigmoid(x) - math.log1p(-eps)) + jax.nn.sigmoid(-x) * (
        jax.nn.log_sigmoid(-x) - math.log(eps)
    )


@_member("nca_pair")
def _nca_pair(inp, c, cfg):
    rw, rl = cfg.beta * c.lr_c, cfg.beta * c.lr_r
    return -jax.nn.log_sigmoid(rw) - 0.5 * jax.nn.log_sigmoid(-rw) - 0.5 * jax.nn.log_sigmoid(-rl)


@_member("bco_pair")
def _bco_pair(inp, c, cfg):
    d = jnp.zeros((), c.lr_c.dtype) if inp.bco_delta is None else jax.lax.stop_gradient(inp.bco_delta)
    return -jax.nn.log_sigmoid(cfg.beta * c.lr_c - d) - jax.nn.log_sigmoid(-(cfg.beta * c.lr_r - d))


@_member("sppo_hard")
def _sppo_hard(inp, c, cfg):
    return (c.lr_c - 0.5 / cfg.beta) ** 2 + (c.lr_r + 0.5 / cfg.beta) ** 2


@_member("aot")
def _aot(inp, c, cfg):  # sort policy and reference pair log-ratios separately, then DPO on quantiles
    d = _sort_groups(c.lp_c - c.lp_r, cfg.group_size) - _sort_groups(c.ref_c - c.ref_r, cfg.group_size)
    return _smoothed(cfg.beta * d, cfg.label_smoothing)


@_member("aot_unpaired")
def _aot_unpaired(inp, c, cfg):  # sort chosen and rejected log-ratios separately
    d = _sort_groups(c.lr_c, cfg.group_size) - _sort_groups(c.lr_r, cfg.group_size)
    return _smoothed(cfg.beta * d, cfg.label_smoothing)


@_member("apo_zero")
def _apo_zero(inp, c, cfg):
    return (1.0 - jax.nn.sigmoid(cfg.beta * c.lr_c)) + jax.nn.sigmoid(cfg.beta * c.lr_r)


@_member("apo_down")
def _apo_down(inp, c, cfg):
    return jax.nn.sigmoid(cfg.beta * c.lr_c) + (1.0 - jax.nn.sigmoid(cfg.beta * (c.lr_c - c.lr_r)))


@_member("discopop", uses_f=True)
def _discopop(inp, c, cfg):  # log-ratio-modulated blend of logistic and exponential losses
    x = cfg.beta * c.delta
    mod = jax.nn.sigmoid(x / cfg.discopop_tau)
    return -jax.nn.log_sigmoid(x) * (1.0 - mod) + jnp.exp(-x) * mod


@_member("sigmoid_norm", uses_f=True)
def _sigmoid_norm(inp, c, cfg):
    h = c.sc_c / _len(inp, "chosen", "sigmoid_norm") - c.sc_r / _len(inp, "rejected", "sigmoid_norm")
    return -jax.nn.log_sigmoid(cfg.beta * h)


@_member("sft", uses_f=True, needs_reference=False)
def _sft(inp, c, cfg):
    return _nll_chosen(inp, c, "sft")


@_member("simpo", reward="avg", needs_reference=False)
def _simpo(inp, c, cfg):  # reference-free, length-normalised, target margin γ
    h = c.lp_c / _len(inp, "chosen", "simpo") - c.lp_r / _len(inp, "rejected", "simpo")
    return _smoothed(cfg.beta * (h - cfg.gamma / cfg.beta), cfg.label_smoothing)


@_member("cpo", reward="sum", needs_reference=False)
def _cpo(inp, c, cfg):  # CPO preference term (add "sft" for its NLL/BC term, TRL's cpo_alpha)
    return _smoothed(cfg.beta * (c.lp_c - c.lp_r), cfg.label_smoothing)


def _log1mexp(x: Array) -> Array:
    """log(1 − e^x) for x < 0, branching at −ln 2 to avoid cancellation (same branches as TRL)."""
    return jnp.where(x < -math.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


@_member("orpo", reward="avg", needs_reference=False)
def _orpo(inp, c, cfg):  # NLL(y_w) − λ·log σ(log odds_w − log odds_l), odds on avg log-probs
    a_c = c.lp_c / _len(inp, "chosen", "orpo")
    a_r = c.lp_r / _len(inp, "rejected", "orpo")
    log_odds = (a_c - a_r) - (_log1mexp(a_c) - _log1mexp(a_r))
    return _nll_chosen(inp, c, "orpo") - cfg.orpo_lambda * jax.nn.log_sigmoid(log_odds)


@_member("dpop")
def _dpop(inp, c, cfg):  # DPO-Positive: penalise the chosen log-prob falling below the reference
    pen = jax.nn.relu(c.ref_c - c.lp_c)
    return -jax.nn.log_sigmoid(cfg.beta * (c.lr_c - c.lr_r - cfg.dpop_lambda * pen))


@_member("rdpo")
def _rdpo(inp, c, cfg):  # R-DPO: length-regularised margin
    dl = _need(inp.chosen_len, "chosen_len", "rdpo") - _need(inp.rejected_len, "rejected_len", "rdpo")
    return -jax.nn.log_sigmoid(cfg.beta * (c.lr_c - c.lr_r) + cfg.alpha * dl.astype(c.lr_c.dtype))


# ----------------------------------------------------------------------------- driver


def _validate(cfg: PrefConfig, terms) -> None:
    names = {n for n, _ in terms}
    if cfg.f_divergence not in _F_DIVS:
        raise ValueError(f"f_divergence must be one of {_F_DIVS}, got {cfg.f_divergence!r}")
    if cfg.f_divergence != "reverse_kl":
        bad = sorted(n for n in names if not loss_spec(n, "pair").meta.get("uses_f", False))
        if bad:
            raise ValueError(f"f_divergence={cfg.f_divergence!r} is undefined for {bad}")
    if names & {"robust"} and not 0.0 <= cfg.label_smoothing < 0.5:
        raise ValueError("robust needs 0 <= label_smoothing < 0.5")
    if names & {"exo_pair"} and not 0.0 < cfg.label_smoothing < 1.0:
        raise ValueError("exo_pair needs 0 < label_smoothing < 1 (log ε)")
    if cfg.use_weighting and names & {"aot", "aot_unpaired"}:
        raise ValueError("WPO weighting is undefined for aot losses (their terms are not per pair)")
    if cfg.ld_alpha is not None and not 0.0 <= cfg.ld_alpha <= 1.0:
        raise ValueError("ld_alpha must be in [0, 1]")


def _metrics(inp: PairLogps, c: _Ctx, cfg: PrefConfig, reward: str) -> dict[str, Array]:
    if reward == "ref":
        rc, rr = c.lr_c, c.lr_r
    elif reward == "avg":
        rc, rr = c.lp_c / _len(inp, "chosen", "metrics"), c.lp_r / _len(inp, "rejected", "metrics")
    else:
        rc, rr = c.lp_c, c.lp_r
    rc = jax.lax.stop_gradient(cfg.beta * rc)
    rr = jax.lax.stop_gradient(cfg.beta * rr)
    return {
        "rewards/chosen": rc,
        "rewards/rejected": rr,
        "rewards/margins": rc - rr,
        "rewards/accuracies": pair_accuracy(rc, rr).astype(rc.dtype),  # a tie counts 0.5
        "logps/chosen": jax.lax.stop_gradient(c.lp_c),
        "logps/rejected": jax.lax.stop_gradient(c.lp_r),
    }


def _term(name: str, inp: PairLogps, c: _Ctx, cfg: PrefConfig):
    """(losses_b, reward kind, own metrics or None) of one registered pairwise loss. A loss
    registered from outside (a plain ``fn(inp, cfg) -> (losses_b, metrics)``) is its own term
    and keeps its metrics beside the family's."""
    spec = loss_spec(name, "pair")
    if "term" in spec.meta:
        return spec.meta["term"](inp, c, cfg), spec.meta["reward"], None
    losses_b, metrics = spec.fn(inp, cfg)
    return losses_b, spec.meta.get("reward", "ref"), metrics


def _combine(inp: PairLogps, cfg: PrefConfig, terms) -> tuple[Array, dict[str, Array]]:
    terms = tuple(terms) + ((("sft", cfg.rpo_alpha),) if cfg.rpo_alpha else ())
    for n, _ in terms:  # unknown names fail here, listing the registered ones
        loss_spec(n, "pair")
    _validate(cfg, terms)
    c = _prepare(inp, cfg)
    parts = [_term(n, inp, c, cfg) for n, _ in terms]
    losses_b = sum(w * lb for (lb, _, _), (_, w) in zip(parts, terms))
    if cfg.use_weighting:
        lw_c = _need(inp.chosen_logw, "chosen_logw", "use_weighting")
        lw_r = _need(inp.rejected_logw, "rejected_logw", "use_weighting")
        losses_b = losses_b * jnp.exp(jax.lax.stop_gradient(lw_c + lw_r))
    metrics = _metrics(inp, c, cfg, parts[0][1])
    if parts[0][2] is not None:
        metrics.update(parts[0][2])
    metrics["loss"] = jax.lax.stop_gradient(losses_b)
    return losses_b, metrics


def needs_reference(cfg: PrefConfig) -> bool:
    """Whether any member of ``cfg.loss`` reads reference log-probs (the rpo_alpha NLL does not)."""
    return any(loss_spec(n, "pair").needs_reference for n in cfg.loss_names)


def preference_loss(inp: PairLogps, cfg: PrefConfig) -> tuple[Array, dict[str, Array]]:
    """The loss(es) named in ``cfg.loss`` with ``cfg.loss_weights``; plus rpo_alpha·sft, WPO, LD-DPO."""
    names = cfg.loss_names
    weights = cfg.loss_weights if cfg.loss_weights is not None else (1.0,) * len(names)
    if len(weights) != len(names):
        raise ValueError(f"loss_weights {weights} must match loss {names}")
    return _combine(inp, cfg, tuple(zip(names, weights)))
