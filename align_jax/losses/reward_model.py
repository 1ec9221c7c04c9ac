"""Reward-model losses over SCORES (not policy log-probs): family ``"reward_model"``,
``fn(inp: RewardPair, cfg: RewardLossConfig) -> (loss, metrics)``.

Bradley–Terry as TRL's RewardTrainer.compute_loss (trl 1.16, trl/trainer/reward_trainer.py:
786-795): −mean log σ(r_w − r_l − margin) + c·mean((r_w + r_l)²), the second term (``center_
rewards_coefficient``, arXiv 2312.09244) pulling the scores towards zero mean. The mean is over the
pairs of the batch passed in; metrics are (sum, count) pairs over pairs.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from align_jax.losses.accuracy import pair_accuracy
from align_jax.losses.registry import register_loss

Array = jax.Array


class RewardPair(NamedTuple):
    chosen: Array  # [B] scores r_w
    rejected: Array  # [B] scores r_l
    margin: Array | None = None  # [B] required score gap (TRL's optional "margin" column)


@dataclasses.dataclass(frozen=True)
class RewardLossConfig:
    center_rewards_coefficient: float | None = None  # TRL's default: off


@register_loss("bradley_terry", "reward_model", needs_reference=False)
def bradley_terry_loss(inp: RewardPair, cfg: RewardLossConfig = RewardLossConfig()
                       ) -> tuple[Array, dict[str, tuple[Array, Array]]]:
    diff = inp.chosen - inp.rejected
    if inp.margin is not None:
        diff = diff - inp.margin
    n = jnp.asarray(diff.shape[0], diff.dtype)
    nll = -jax.nn.log_sigmoid(diff)
    loss = nll.mean()
    if cfg.center_rewards_coefficient is not None:
        loss = loss + cfg.center_rewards_coefficient * jnp.mean((inp.chosen + inp.rejected) ** 2)
    sg = jax.lax.stop_gradient
    metrics = {
        "rm/bt_nll": (sg(nll.sum()), n),
        "rewards/accuracies": (pair_accuracy(inp.chosen, inp.rejected).astype(diff.dtype).sum(),
                               n),  # a tie counts 0.5 (losses.accuracy)
        "rewards/margins": (sg((inp.chosen - inp.rejected).sum()), n),
        "rewards/chosen": (sg(inp.chosen.sum()), n),
        "rewards/rejected": (sg(inp.rejected.sum()), n),
    }
    return loss, metrics
