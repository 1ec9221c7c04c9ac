"""Token-level policy gradients: rewards at token positions, reward-to-go returns, and the clipped
surrogate losses of PPO and TRL's GRPOTrainer (``grpo``, ``dr_grpo``, ``dapo``, ``bnpo``, GSPO).

Two registry families (see ``registry``):

* ``"token_advantage"`` – ``fn(inp: TokenRewards, cfg: AdvantageConfig) -> (adv_bt, metrics)``
* ``"token_pg"``        – ``fn(inp: TokenPGInputs, cfg: TokenPGConfig) -> (loss, metrics)``

(Separate from ``"advantage"``/``"policy_gradient"`` — RefAlign's per-prompt group advantages and
sequence-level REINFORCE, ``policy_gradient.py`` — because one family has one signature.)

All arrays are [B, T] over RESPONSE tokens (``mask`` = 1 on real response tokens), the layout
``train.logprobs.token_logps`` returns. Advantages may be [B] (one per sequence, broadcast to its
tokens, as GRPO's group advantages) or [B, T] (per token, e.g. reward-to-go).

Group semantics: the surrogate losses normalise over the batch passed in (``grpo``: per sequence,
then mean over sequences; ``bnpo``/``ppo``: over its tokens; ``dr_grpo``: by B·max_len), except
``dapo``, whose normaliser is ``num_items`` — the token count of the whole generation batch, which
the caller passes when a batch is split into micro-batches (TRL's ``num_items_in_batch``), so the
loss of the micro-batches sums to the loss of the whole batch on any mesh. Whitening in
``reward_to_go`` uses statistics over every masked token of the batch passed in. Metrics are
(sum, count) pairs.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from align_jax.losses.registry import register_loss

Array = jax.Array
Metrics = dict[str, tuple[Array, Array]]


# ---------------------------------------------------------------- rewards at token positions
def place_rewards(scores_bk: Array, positions_bk: Array, mask_bt: Array) -> Array:
    """Token rewards [B, T]: ``scores_bk[b, k]`` added at token ``positions_bk[b, k]`` (several
    rewards may land on one token and add up). A position < 0 means "the last response token"
    (the usual place of a sequence-level reward); positions on masked tokens are dropped, so a
    truncated placement never leaks into padding."""
    B, T = mask_bt.shape
    m = mask_bt.astype(bool)
    last = jnp.max(jnp.where(m, jnp.arange(T)[None, :], -1), axis=1, keepdims=True)  # [B, 1]
    pos = jnp.where(positions_bk < 0, last, positions_bk)
    onehot = jax.nn.one_hot(pos, T, dtype=scores_bk.dtype)  # [B, K, T]; out of range -> 0 row
    return jnp.where(m, jnp.einsum("bk,bkt->bt", scores_bk, onehot), 0.0)


def kl_penalty_rewards(rewards_bt: Array, logps_bt: Array, ref_logps_bt: Array, mask_bt: Array,
                       beta: float) -> Array:
    """PPO's per-token KL penalty folded into the rewards: r_t − β·(log π(y_t) − log π_ref(y_t)),
    as TRL's PPOTrainer builds its token rewards (the sampled-token k1 estimator)."""
    kl = jax.lax.stop_gradient(logps_bt - ref_logps_bt)
    return jnp.where(mask_bt.astype(bool), rewards_bt - beta * kl, 0.0)


# ---------------------------------------------------------------- advantage estimators
class TokenRewards(NamedTuple):
    rewards: Array  # [B, T] token rewards (e.g. from place_rewards)
    mask: Array  # [B, T] response tokens


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    gamma: float = 1.0  # discount of the reward-to-go
    whiten: bool = False  # (G − mean) / std over the batch's masked tokens
    eps: float = 1e-8  # inside the sqrt of the whitening variance


def masked_whiten(x_bt: Array, mask_bt: Array, eps: float = 1e-8) -> Array:
    """(x − mean)/sqrt(var + eps) over masked entries, var with Bessel's correction (the PPO
    implementations' ``masked_whiten``). Masked-out entries become 0."""
    m = mask_bt.astype(x_bt.dtype)
    n = m.sum()
    mean = (x_bt * m).sum() / jnp.maximum(n, 1.0)
    var = (((x_bt - mean) ** 2) * m).sum() / jnp.maximum(n - 1.0, 1.0)
    return jnp.where(mask_bt.astype(bool), (x_bt - mean) * jax.lax.rsqrt(var + eps), 0.0)


def discounted_returns(rewards_bt: Array, mask_bt: Array, gamma: float = 1.0) -> Array:
    """G_t = r_t + γ·G_{t+1} over response tokens (padding contributes nothing and does not
    discount: a masked step passes G through unchanged). A reverse ``lax.scan`` over T."""
    m = mask_bt.astype(bool)
    r = jnp.where(m, rewards_bt, 0.0)

    def step(g_next, xs):
        r_t, m_t = xs
        g = jnp.where(m_t, r_t + gamma * g_next, g_next)
        return g, g

    _, g = jax.lax.scan(step, jnp.zeros(r.shape[0], r.dtype), (r.T, m.T), reverse=True)
    return jnp.where(m, g.T, 0.0)


@register_loss("reward_to_go", "token_advantage", needs_reference=False)
def reward_to_go(inp: TokenRewards,
                 cfg: AdvantageConfig = AdvantageConfig()) -> tuple[Array, Metrics]:
    """Per-token advantages: the discounted reward-to-go G_t (no critic: REINFORCE / GRPO with
    dense rewards), optionally whitened over the batch. Gradient stopped."""
    g = discounted_returns(jax.lax.stop_gradient(inp.rewards), inp.mask, cfg.gamma)
    m = inp.mask.astype(g.dtype)
    metrics = {"adv/return": (jnp.where(inp.mask.astype(bool), g, 0.0).sum(), m.sum())}
    if cfg.whiten:
        g = masked_whiten(g, inp.mask, cfg.eps)
    return g, metrics


# ---------------------------------------------------------------- clipped surrogate losses
class TokenPGInputs(NamedTuple):
    logps: Array  # [B, T] log π_θ(y_t) of the current policy (differentiated)
    mask: Array  # [B, T] response tokens
    advantages: Array  # [B] or [B, T]
    old_logps: Array | None = None  # [B, T] at sampling time; None = on-policy (= logps, no grad)
    ref_logps: Array | None = None  # [B, T] reference policy (needed when beta > 0)
    num_items: Array | None = None  # [] dapo normaliser: tokens of the whole generation batch


@dataclasses.dataclass(frozen=True)
class TokenPGConfig:
    epsilon: float = 0.2  # ε_low: ratio clipped below at 1 − ε
    epsilon_high: float | None = None  # ε_high (DAPO's clip-higher, 0.28 in the paper); None = ε
    importance_sampling_level: str = "token"  # "sequence" = GSPO's length-normalised ratio
    beta: float = 0.0  # weight of the k3 KL to the reference, added per token as TRL does
    use_bias_correction_kl: bool = False  # TRL: KL term times the importance ratio
    delta: float | None = None  # TRL's two-sided clipping: ratio capped at δ in the first term
    max_completion_length: int | None = None  # dr_grpo's constant; None = T of the batch

    @property
    def eps_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


def _surrogate(inp: TokenPGInputs, cfg: TokenPGConfig, level: str):
    """Per-token loss [B, T] (or [B, 1] broadcast) and metrics before normalisation, following
    TRL 1.16 GRPOTrainer._compute_loss (trl/trainer/grpo_trainer.py:3083-3150; the
    normalisations per loss type are lines 3153-3174)."""
    if level not in ("token", "sequence"):
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")
    logps = inp.logps
    mf = inp.mask.astype(logps.dtype)
    old = jax.lax.stop_gradient(logps if inp.old_logps is None else inp.old_logps)
    adv = jax.lax.stop_gradient(inp.advantages).astype(logps.dtype)
    adv = adv[:, None] if adv.ndim == 1 else adv
    log_ratio = jnp.where(inp.mask.astype(bool), logps - old, 0.0)
    if level == "sequence":  # GSPO: exp of the mean token log-ratio, one weight per sequence
        log_w = ((log_ratio * mf).sum(-1) / jnp.maximum(mf.sum(-1), 1.0))[:, None]
    else:
        log_w = log_ratio
    coef_1 = jnp.exp(log_w)
    coef_2 = jnp.clip(coef_1, 1.0 - cfg.epsilon, 1.0 + cfg.eps_high)
    c1 = coef_1 if cfg.delta is None else jnp.minimum(coef_1, cfg.delta)
    per_tok = -jnp.minimum(c1 * adv, coef_2 * adv)
    metrics: Metrics = {}
    count = mf.sum()

    def tok_mean(x):  # (sum, count) over tokens; a [B, 1] sequence-level value counts once
        x = jax.lax.stop_gradient(x)
        if x.shape[-1] == 1:
            return x.sum(), jnp.asarray(x.shape[0], mf.dtype)
        return (x * mf).sum(), count

    if cfg.beta:
        if inp.ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps")
        d = jax.lax.stop_gradient(inp.ref_logps) - logps
        kl = jnp.exp(d) - d - 1.0
        if cfg.use_bias_correction_kl:
            kl = kl * coef_1
        per_tok = per_tok + cfg.beta * kl
        metrics["pg/kl"] = tok_mean(kl)
    low = ((coef_1 < 1.0 - cfg.epsilon) & (adv < 0)).astype(mf.dtype)
    high = ((coef_1 > 1.0 + cfg.eps_high) & (adv > 0)).astype(mf.dtype)
    metrics.update({"pg/clip_low": tok_mean(low), "pg/clip_high": tok_mean(high),
                    "pg/ratio": tok_mean(coef_1)})  # TRL's clip_ratio/{low,high}_mean
    return jnp.broadcast_to(per_tok, mf.shape) * mf, mf, metrics


def _finish(loss: Array, mf: Array, metrics: Metrics) -> tuple[Array, Metrics]:
    metrics["pg/loss"] = (jax.lax.stop_gradient(loss), jnp.ones((), loss.dtype))
    metrics["pg/tokens"] = (mf.sum(), jnp.ones((), mf.dtype))
    return loss, metrics


@register_loss("grpo", "token_pg", needs_reference=False)
def grpo_loss(inp: TokenPGInputs, cfg: TokenPGConfig = TokenPGConfig()) -> tuple[Array, Metrics]:
    """GRPO: each sequence's token mean, then the mean over sequences (length-biased: a long
    sequence's tokens weigh less)."""
    per_tok, mf, m = _surrogate(inp, cfg, cfg.importance_sampling_level)
    loss = (per_tok.sum(-1) / jnp.maximum(mf.sum(-1), 1.0)).mean()
    return _finish(loss, mf, m)


@register_loss("gspo", "token_pg", needs_reference=False)
def gspo_loss(inp: TokenPGInputs, cfg: TokenPGConfig = TokenPGConfig()) -> tuple[Array, Metrics]:
    """GSPO (arXiv 2507.18071): ``grpo`` with the sequence-level importance ratio
    exp(mean_t log(π/π_old)), whatever ``importance_sampling_level`` says. The paper clips it
    tightly (ε 3e-4, ε_high 4e-4)."""
    per_tok, mf, m = _surrogate(inp, cfg, "sequence")
    loss = (per_tok.sum(-1) / jnp.maximum(mf.sum(-1), 1.0)).mean()
    return _finish(loss, mf, m)


@register_loss("bnpo", "token_pg", needs_reference=False)
def bnpo_loss(inp: TokenPGInputs, cfg: TokenPGConfig = TokenPGConfig()) -> tuple[Array, Metrics]:
    """BNPO: token mean over the (micro-)batch passed in."""
    per_tok, mf, m = _surrogate(inp, cfg, cfg.importance_sampling_level)
    return _finish(per_tok.sum() / jnp.maximum(mf.sum(), 1.0), mf, m)


@register_loss("dr_grpo", "token_pg", needs_reference=False)
def dr_grpo_loss(inp: TokenPGInputs, cfg: TokenPGConfig = TokenPGConfig()) -> tuple[Array, Metrics]:
    """Dr. GRPO (arXiv 2503.20783): token sum / (B · max_completion_length), a constant, so no
    length bias."""
    per_tok, mf, m = _surrogate(inp, cfg, cfg.importance_sampling_level)
    L = cfg.max_completion_length or mf.shape[1]
    return _finish(per_tok.sum() / (mf.shape[0] * L), mf, m)


@register_loss("dapo", "token_pg", needs_reference=False)
def dapo_loss(inp: TokenPGInputs, cfg: TokenPGConfig = TokenPGConfig()) -> tuple[Array, Metrics]:
    """DAPO (arXiv 2503.14476): token sum / tokens of the whole generation batch (``num_items``;
    default: this batch's), so micro-batches add up to the full-batch token mean. Pair with
    ``epsilon_high`` (clip-higher)."""
    per_tok, mf, m = _surrogate(inp, cfg, cfg.importance_sampling_level)
    n = mf.sum() if inp.num_items is None else jnp.asarray(inp.num_items, mf.dtype)
    return _finish(per_tok.sum() / jnp.maximum(n, 1.0), mf, m)


@register_loss("ppo", "token_pg", needs_reference=False)
def ppo_clip_loss(inp: TokenPGInputs,
                  cfg: TokenPGConfig = TokenPGConfig()) -> tuple[Array, Metrics]:
    """PPO-clip (critic-free): mean over the batch's tokens of max(−A_t·ρ_t, −A_t·clip(ρ_t,
    1−ε, 1+ε_high)) with per-token advantages (e.g. ``reward_to_go``), TRL PPOTrainer's policy
    loss. Several epochs over one batch of samples = call it again with the same ``old_logps``."""
    per_tok, mf, m = _surrogate(inp, cfg, "token")
    return _finish(per_tok.sum() / jnp.maximum(mf.sum(), 1.0), mf, m)


TOKEN_PG_LOSSES = ("grpo", "gspo", "bnpo", "dr_grpo", "dapo", "ppo")
