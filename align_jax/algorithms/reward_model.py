"""Reward-model training glue: a policy-family backbone + a fresh score head, preference pairs
tokenised exactly as the scorer reads them (``rewards.reward_model.encode_pairs``), and the
Bradley–Terry step loss. The loop is the preference loop (``algorithms.preference.
train_preference``: checkpoints, resume, metrics, eval before/after); this module only supplies
the data and the loss, so a trained RM scores in ``load_reward_model`` exactly as it trained.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.data.tokenize import pad_id_of, round_up
from align_jax.losses import RewardLossConfig, RewardPair, get_loss
from align_jax.models.score_head import ScoredDecoder
from align_jax.data.tokenize import pad_rows
from align_jax.rewards.reward_model import encode_pairs


def add_score_head(policy, tokenizer, seed: int = 0, num_labels: int = 1) -> ScoredDecoder:
    """The policy's decoder (its LM head unused) under a new score head; the scored token follows
    the tokenizer's pad id (see ``score_head``), which the export writes as ``pad_token_id``."""
    return ScoredDecoder(policy, num_labels, pad_token_id=pad_id_of(tokenizer),
                         rngs=nnx.Rngs(seed))


class RewardPairData:
    """Preference pairs as right-padded chosen/rejected id batches of ONE length (the dataset's
    longest, rounded up to ``pad_multiple``: one compile). ``batch(indices)`` is what the
    preference loop's loader and evaluation call. An optional per-pair ``meta["margin"]`` (on
    every pair) becomes the ``margin`` column of TRL's RewardTrainer."""

    def __init__(self, examples: Sequence, tokenizer, max_length: int = 512,
                 pad_multiple: int = 32, length: int | None = None):
        if not examples:
            raise ValueError("no preference pairs")
        self.examples = list(examples)
        prompts = [e.prompt for e in self.examples]
        full = [encode_pairs(tokenizer, prompts, [getattr(e, side) for e in self.examples])
                for side in ("chosen", "rejected")]
        # texts keep their LAST max_length tokens (the scorer's rule): counted for the data report
        self.truncation = {"prompts": 2 * len(self.examples), "max_prompt_len": max_length,
                           "prompts_truncated": sum(len(x) > max_length for f in full for x in f),
                           "responses": 2 * len(self.examples), "responses_truncated": 0,
                           "max_response_len": max_length}
        self.chosen, self.rejected = ([x[-max_length:] for x in f] for f in full)
        self.pad_id = pad_id_of(tokenizer)
        longest = max(len(s) for s in self.chosen + self.rejected)
        self.length = length or round_up(longest, pad_multiple)
        margins = [e.meta.get("margin") for e in self.examples]
        self.margin = (np.asarray(margins, np.float32) if all(m is not None for m in margins)
                       else None)

    def __len__(self) -> int:
        return len(self.examples)

    def max_length(self) -> int:
        return self.length

    def batch(self, indices) -> dict[str, np.ndarray]:
        idx = np.asarray(indices)
        out = {}
        for side, seqs in (("chosen", self.chosen), ("rejected", self.rejected)):
            ids, mask = pad_rows([seqs[i] for i in idx], self.length, self.pad_id)
            out[f"{side}_input_ids"], out[f"{side}_attention_mask"] = ids, mask
        if self.margin is not None:
            out["margin"] = self.margin[idx]
        return out


def make_rm_loss_fn(loss_cfg: RewardLossConfig = RewardLossConfig(), loss: str = "bradley_terry"):
    """``loss_fn(model, batch, rng)`` for ``train.step``: chosen and rejected in ONE forward
    (2B rows, as TRL concatenates them), then the registered reward-model loss."""
    fn = get_loss(loss, "reward_model")

    def loss_fn(model, batch, rng):
        del rng
        ids = jnp.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]])
        mask = jnp.concatenate([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
        r = model(ids, mask)[:, 0]
        b = batch["chosen_input_ids"].shape[0]
        return fn(RewardPair(r[:b], r[b:], batch.get("margin")), loss_cfg)

    return loss_fn
