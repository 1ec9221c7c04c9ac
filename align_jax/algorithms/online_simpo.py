"""Online SimPO with similarity-ranked pairs: RefAlign's comparison baseline for general
preference alignment (docs/methods.md, "Online SimPO").

Per prompt, the K on-policy samples are ranked by a reward component (BERTScore to the
reference by default); the best and the worst form a (chosen, rejected) pair trained with the
reference-free SimPO loss −log σ(β·avg_lp_w − β·avg_lp_l − γ). Prompts whose samples all score
the same give no pair (masked, counted in `pairs/valid_frac`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from align_jax.algorithms.refalign import Rollout, train_batch
from align_jax.losses.preference import PairLogps, PrefConfig, preference_loss
from align_jax.train.logprobs import token_logps


@dataclasses.dataclass(frozen=True)
class OnlineSimPOObjective:
    k: int = 2
    beta: float = 2.0
    gamma: float = 1.0  # SimPO margin; TRL's simpo_gamma convention (logits = Δ − γ/β)
    rank_by: str = "sim"
    chunk_size: int | None = None

    def make_loss_fn(self):
        pcfg = PrefConfig(loss="simpo", beta=self.beta, gamma=self.gamma)

        def loss_fn(model, batch, rng):
            del rng
            logp_bt = token_logps(model, batch["input_ids"], batch["attention_mask"],
                                  batch["loss_mask"], chunk_size=self.chunk_size)
            m = batch["loss_mask"][:, 1:].astype(jnp.float32)
            s, n = jnp.sum(logp_bt, 1), jnp.sum(m, 1)
            P = s.shape[0] // 2
            losses, metrics = preference_loss(
                PairLogps(s[:P], s[P:], chosen_len=n[:P], rejected_len=n[P:]), pcfg)
            w = batch["pair_valid"].astype(jnp.float32)
            count = jnp.maximum(jnp.sum(w), 1.0)
            out = {k: (jnp.sum(v * w), count) for k, v in metrics.items() if jnp.ndim(v) == 1}
            return jnp.sum(losses * w) / count, out

        return loss_fn

    def make_batch(self, ro: Rollout, components) -> tuple[dict, dict]:
        r_pk = np.asarray(components[self.rank_by][0], np.float32).reshape(-1, self.k)
        P = r_pk.shape[0]
        best, worst = r_pk.argmax(1), r_pk.argmin(1)
        valid = r_pk.max(1) > r_pk.min(1)
        rows = np.concatenate([np.arange(P) * self.k + best, np.arange(P) * self.k + worst])
        full = train_batch(ro.out, np.zeros(P * self.k, np.float32))
        keys = ("input_ids", "attention_mask", "loss_mask", "old_logps")
        batch = {k: full[k][rows] for k in keys}
        batch["pair_valid"] = valid.astype(np.float32)
        stats = {f"reward/{self.rank_by}": float(r_pk.mean()),
                 "pairs/valid_frac": float(valid.mean()),
                 "pairs/reward_gap": float((r_pk.max(1) - r_pk.min(1)).mean())}
        for name, (scores, _) in components.items():
            stats.setdefault(f"reward/{name}", float(np.mean(scores)))
        stats["reward/total"] = float(sum(w * np.mean(s) for s, w in components.values()))
        return batch, stats
