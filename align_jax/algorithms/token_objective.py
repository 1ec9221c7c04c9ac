"""Token-level rewards in the one online loop: an objective (``make_batch`` / ``make_loss_fn``,
what ``online_loop.train_online`` takes) whose rewards sit at token positions instead of one
number per sample.

    objective = TokenPGObjective(token_rewards=hook, loss="ppo", pg=TokenPGConfig(epsilon=0.2),
                                 adv=AdvantageConfig(gamma=1.0, whiten=True))
    train_online(..., objective=objective)   # rcfg.updates_per_rollout = PPO epochs per batch

The hook ``token_rewards(rollout, components) -> (rewards [R, N], stats)`` gets the rollout
(tokens, mask, texts, records) and the reward function's components, and returns the rewards of
each generated token in the sampler's layout (``rollout.out.mask`` = 1 on response tokens).
The objective turns them into per-token advantages with a registered ``token_advantage``
estimator (``reward_to_go``: discounted return G_t with γ, optional whitening) and trains with a
registered ``token_pg`` loss (PPO-clip, TRL's GRPO loss types, DAPO, GSPO) whose importance ratio
is taken against the sampler's untempered log-probs of the same tokens, so the updates after the
first of ``updates_per_rollout`` are clipped PPO epochs over the same batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np

from align_jax.algorithms.refalign import Rollout, train_batch
from align_jax.errors import ConfigError
from align_jax.losses.registry import get_loss, list_losses
from align_jax.losses.token_pg import AdvantageConfig, TokenPGConfig, TokenPGInputs, TokenRewards
from align_jax.train.logprobs import rollout_logps

TokenRewardHook = Callable[[Rollout, dict], tuple[np.ndarray, dict]]


def shift_to_train_layout(x_rn: np.ndarray, prompt_len: int) -> np.ndarray:
    """[R, N] values of the generated tokens → the [R, P+N−1] layout of ``token_logps`` over
    prompt+response (token n of the response is predicted at position P−1+n)."""
    x = np.asarray(x_rn, np.float32)
    return np.concatenate([np.zeros((x.shape[0], prompt_len - 1), np.float32), x], 1)


@dataclasses.dataclass(frozen=True)
class TokenPGObjective:
    token_rewards: TokenRewardHook
    loss: str = "ppo"  # a registered token_pg loss
    pg: TokenPGConfig = TokenPGConfig()
    advantage: str = "reward_to_go"  # a registered token_advantage estimator
    adv: AdvantageConfig = AdvantageConfig()
    chunk_size: int | None = None

    def __post_init__(self):  # a typo fails when the objective is built
        for name, fam in ((self.loss, "token_pg"), (self.advantage, "token_advantage")):
            if name not in list_losses(fam):
                raise ConfigError(f"{name!r} is not a registered {fam} loss: {list_losses(fam)}")

    def make_batch(self, ro: Rollout, components) -> tuple[dict, dict]:
        rewards, stats = self.token_rewards(ro, components)
        mask = np.asarray(ro.out.mask)
        rewards = np.asarray(rewards, np.float32)
        if rewards.shape != mask.shape:
            raise ValueError(f"token_rewards returned {rewards.shape}, the rollout's response "
                             f"tokens are {mask.shape}")
        adv, m = get_loss(self.advantage, "token_advantage")(
            TokenRewards(jnp.asarray(rewards), jnp.asarray(mask)), self.adv)
        adv = np.asarray(adv)
        batch = train_batch(ro.out, np.zeros(mask.shape[0], np.float32))
        batch["adv"] = shift_to_train_layout(adv, np.asarray(ro.out.prompt_ids).shape[1])
        stats = dict(stats)
        stats.update({k: float(s) / max(float(n), 1.0) for k, (s, n) in m.items()})
        sel = mask.astype(bool)
        stats["adv/absmean"] = float(np.abs(adv[sel]).mean()) if sel.any() else 0.0
        stats["reward/token_sum"] = float(rewards.sum(1).mean())
        # the loop's "total_reward": what the policy is trained on, summed over each response
        stats.setdefault("reward/total", stats["reward/token_sum"])
        return batch, stats

    def make_loss_fn(self):
        fn = get_loss(self.loss, "token_pg")

        def loss_fn(model, batch, rng):
            del rng
            logp_bt, ent_bt, mask_bt = rollout_logps(model, batch, self.chunk_size)
            if self.pg.beta and "init_logps" not in batch:
                raise ConfigError("pg.beta > 0 needs the initial policy's log-probs: set the "
                                  "online objective's kl_coef > 0 as well")
            loss, metrics = fn(TokenPGInputs(logp_bt, mask_bt, batch["adv"],
                                             old_logps=batch["old_logps"],
                                             ref_logps=batch.get("init_logps")), self.pg)
            metrics = dict(metrics)
            metrics["entropy"] = (jnp.sum(ent_bt), jnp.sum(mask_bt))
            return loss, metrics

        return loss_fn
