"""Token-level policy gradients against TRL 1.16's OWN GRPOTrainer loss code and hand/loop oracles.

TRL computes the GRPO-family loss inline in ``GRPOTrainer._compute_loss(self, model, inputs)``
(trl/trainer/grpo_trainer.py:3020-3288 in trl 1.16.0), so we call that unbound method with a
stand-in ``self`` whose ``_get_per_token_logps_and_entropies`` returns fixed per-token log-probs
(a torch leaf tensor) and compare, in float64, the loss and its gradient w.r.t. every log-prob
(torch autograd vs jax.grad) for each loss type, the asymmetric (DAPO) clip, GSPO's sequence-level
ratio, TRL's two-sided clip δ and the k3 KL term (with and without its bias correction).
Reward-to-go is checked against an explicit Python loop; PPO-clip and place_rewards by hand.
"""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from trl.trainer.grpo_trainer import GRPOTrainer

from align_jax.losses import (AdvantageConfig, TokenPGConfig, TokenPGInputs, TokenRewards,
                              get_loss, list_losses, place_rewards)

B, T = 6, 7
TOL = 1e-6


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _data(seed=0, token_adv=False):
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, T))
    for i in range(B):
        mask[i, : rng.integers(1, T + 1)] = 1
    logps = -rng.uniform(0.1, 2.0, (B, T))
    old = logps + rng.normal(0, 0.3, (B, T))  # ratios well outside [0.8, 1.28]: clipping bites
    ref = logps + rng.normal(0, 0.2, (B, T))
    adv = rng.normal(0, 1, (B, T) if token_adv else (B,))
    return logps, old, ref, adv, mask


class _Acc:  # single-process accelerate stand-in
    num_processes = 1
    gather = gather_for_metrics = staticmethod(lambda x: x)
    reduce = staticmethod(lambda x, reduction="sum": x)


def _trl(loss_type, logps, old, ref, adv, mask, *, eps=0.2, eps_high=0.2, beta=0.0, level="token",
         delta=None, bias_kl=False, max_len=T, num_items=None):
    lp = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, torch.zeros_like(lp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level,
        beta=beta, loss_type=loss_type, epsilon_low=eps, epsilon_high=eps_high, use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_len, accelerator=_Acc(), _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        args=SimpleNamespace(use_bias_correction_kl=bias_kl, delta=delta, steps_per_generation=1))
    m = torch.tensor(mask, dtype=torch.float64)
    inputs = dict(prompt_ids=torch.zeros((B, 2), dtype=torch.long),
                  prompt_mask=torch.ones((B, 2), dtype=torch.long),
                  completion_ids=torch.zeros((B, T), dtype=torch.long), completion_mask=m,
                  advantages=torch.tensor(adv, dtype=torch.float64),
                  old_per_token_logps=torch.tensor(old, dtype=torch.float64),
                  ref_per_token_logps=torch.tensor(ref, dtype=torch.float64),
                  num_items_in_batch=torch.tensor(float(mask.sum() if num_items is None
                                                        else num_items), dtype=torch.float64))
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    loss.backward()
    return loss.item(), lp.grad.numpy(), fake._metrics["train"]


def _ours(name, logps, old, ref, adv, mask, num_items=None, **cfg):
    c = TokenPGConfig(**cfg)
    fn = get_loss(name, "token_pg")

    def f(lp):
        return fn(TokenPGInputs(lp, jnp.asarray(mask), jnp.asarray(adv), jnp.asarray(old),
                                jnp.asarray(ref), num_items), c)

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logps))
    return float(loss), np.asarray(grad), metrics


CASES = {  # name: (our loss, TRL loss_type, our config, TRL kwargs, token-level advantages)
    "grpo": ("grpo", "grpo", {}, {}, False),
    "bnpo": ("bnpo", "bnpo", {}, {}, False),
    "dr_grpo": ("dr_grpo", "dr_grpo", dict(max_completion_length=11), dict(max_len=11), False),
    "dapo_clip_higher": ("dapo", "dapo", dict(epsilon_high=0.28), dict(eps_high=0.28), False),
    "dapo_num_items": ("dapo", "dapo", {}, dict(num_items=40.0), False),
    "gspo": ("gspo", "grpo", dict(epsilon=3e-4, epsilon_high=4e-4),
             dict(eps=3e-4, eps_high=4e-4, level="sequence"), False),
    "grpo_seq_level_kl": ("grpo", "grpo", dict(importance_sampling_level="sequence", beta=0.04),
                          dict(level="sequence", beta=0.04), False),
    "grpo_kl": ("grpo", "grpo", dict(beta=0.1), dict(beta=0.1), False),
    "bnpo_kl_bias_corr": ("bnpo", "bnpo", dict(beta=0.1, use_bias_correction_kl=True),
                          dict(beta=0.1, bias_kl=True), False),
    "grpo_delta": ("grpo", "grpo", dict(delta=1.5), dict(delta=1.5), False),
    "bnpo_token_adv": ("bnpo", "bnpo", dict(epsilon_high=0.3), dict(eps_high=0.3), True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_trl_grpo_trainer(case):
    ours_name, trl_type, cfg, trl_kw, token_adv = CASES[case]
    logps, old, ref, adv, mask = _data(hash(case) % 100, token_adv)
    num_items = trl_kw.get("num_items")
    want, want_grad, trl_metrics = _trl(trl_type, logps, old, ref, adv, mask, **trl_kw)
    got, got_grad, metrics = _ours(ours_name, logps, old, ref, adv, mask, num_items=num_items,
                                   **cfg)
    assert abs(got - want) <= TOL * max(1.0, abs(want)), (got, want)
    np.testing.assert_allclose(got_grad, want_grad, atol=TOL)
    if trl_type != "dapo" or num_items is None:  # clip fractions are token means over the batch
        for ours_key, trl_key in (("pg/clip_low", "clip_ratio/low_mean"),
                                  ("pg/clip_high", "clip_ratio/high_mean")):
            s, n = metrics[ours_key]
            assert float(s / n) == pytest.approx(trl_metrics[trl_key][0], abs=1e-6)  # TRL: f32
        if "beta" in cfg:
            s, n = metrics["pg/kl"]
            assert float(s / n) == pytest.approx(trl_metrics["kl"][0], abs=1e-9)


def test_on_policy_default_is_the_policy_gradient():
    """old_logps=None: ratio 1 in value, gradient of mean A·log π (TRL's detach shortcut)."""
    logps, _, _, adv, mask = _data(3)
    fn = get_loss("bnpo")
    f = lambda lp: fn(TokenPGInputs(lp, jnp.asarray(mask), jnp.asarray(adv)))[0]
    loss, grad = jax.value_and_grad(f)(jnp.asarray(logps))
    np.testing.assert_allclose(loss, -(adv[:, None] * mask).sum() / mask.sum(), atol=1e-12)
    np.testing.assert_allclose(grad, -adv[:, None] * mask / mask.sum(), atol=1e-12)


def test_ppo_clip_by_hand():
    logps = np.log(np.array([[0.5, 0.2, 0.3], [0.4, 0.4, 0.1]]))
    old = np.log(np.array([[0.25, 0.2, 0.6], [0.5, 0.1, 0.1]]))  # ratios 2, 1, .5 / .8, 4, 1
    adv = np.array([[1.0, -1.0, 2.0], [-1.0, 0.5, 3.0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    # per token: max(-A r, -A clip(r, .8, 1.2)):
    #  A=1 r=2 -> max(-2, -1.2) = -1.2 ; A=-1 r=1 -> 1 ; A=2 r=.5 -> max(-1, -1.6) = -1
    #  A=-1 r=.8 -> max(.8, .8) = .8 ; A=.5 r=4 -> max(-2, -.6) = -.6 ; masked
    want = (-1.2 + 1.0 - 1.0 + 0.8 - 0.6) / 5
    loss, m = get_loss("ppo", "token_pg")(
        TokenPGInputs(jnp.asarray(logps), jnp.asarray(mask), jnp.asarray(adv), jnp.asarray(old)),
        TokenPGConfig(epsilon=0.2))
    assert float(loss) == pytest.approx(want, abs=1e-12)
    assert float(m["pg/clip_high"][0]) == 2.0  # r=2 (A>0) and r=4 (A>0) clipped above


def _rtg_loop(r, mask, gamma):
    out = np.zeros_like(r)
    for b in range(r.shape[0]):
        g = 0.0
        for t in reversed(range(r.shape[1])):
            if mask[b, t]:
                g = r[b, t] + gamma * g
                out[b, t] = g
    return out


@pytest.mark.parametrize("gamma,whiten", [(1.0, False), (0.9, False), (0.95, True)])
def test_reward_to_go_equals_loop(gamma, whiten):
    rng = np.random.default_rng(1)
    r = rng.normal(size=(B, T))
    mask = (rng.uniform(size=(B, T)) < 0.8).astype(np.int32)  # holes inside, not just padding
    mask[:, 0] = 1
    want = _rtg_loop(r, mask, gamma)
    if whiten:
        v = want[mask == 1]
        want = np.where(mask == 1, (want - v.mean()) / np.sqrt(v.var(ddof=1) + 1e-8), 0.0)
    got, _ = get_loss("reward_to_go", "token_advantage")(TokenRewards(jnp.asarray(r), jnp.asarray(mask)),
                                                    AdvantageConfig(gamma=gamma, whiten=whiten))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-12)


def test_place_rewards_by_hand():
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    scores = np.array([[1.0, 2.0, 5.0], [3.0, 4.0, 7.0]])
    pos = np.array([[0, 0, -1], [1, 4, -1]])  # two on one token; -1 = last; 4 is padding in row 1
    got = np.asarray(place_rewards(jnp.asarray(scores), jnp.asarray(pos), jnp.asarray(mask)))
    want = np.array([[3.0, 0, 0, 5.0, 0], [0, 3.0 + 7.0, 0, 0, 0]])
    np.testing.assert_allclose(got, want)


def test_registered_names():
    assert set(list_losses("token_pg")) >= {"grpo", "gspo", "bnpo", "dr_grpo", "dapo", "ppo"}
    assert "reward_to_go" in list_losses("token_advantage")
