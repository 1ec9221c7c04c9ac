"""ALaRM in the one online loop (align_jax/algorithms/{token_objective,alarm}.py): the token-reward
hook's batch against a loop over tokens, the first PPO epoch's gradient against the REINFORCE
formula, and a tiny end-to-end run that raises the holistic reward and resumes identically."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from _word_tokenizer import CHAT_VOCAB, tiny_chat_cfg, tiny_chat_tokenizer
from align_jax.algorithms import alarm
from align_jax.algorithms.online_loop import OnlineLoopConfig, train_online
from align_jax.algorithms.refalign import RefAlignConfig, rollout
from align_jax.algorithms.token_objective import TokenPGObjective
from align_jax.losses.token_pg import AdvantageConfig, TokenPGConfig
from align_jax.models.llama import Decoder
from align_jax.rewards.alarm import AlarmConfig, HolisticStats, preset
from align_jax.sampling.sampler import SamplingConfig
from align_jax.train.logprobs import token_logps
from align_jax.train.optim import OptimConfig

VOCAB = CHAT_VOCAB
tiny_tokenizer, tiny_cfg = tiny_chat_tokenizer, tiny_chat_cfg


SAMPLING = SamplingConfig(max_new_tokens=6, prompt_bucket=8)
DATA = [{"prompt": f"w{i} w{(i + 3) % 12}", "reference": "yes"} for i in range(12)]


def _yes(prompts, responses):
    """Holistic stand-in: the share of 'yes' words (learnable by a 2-layer model in steps)."""
    return np.array([r.split().count("yes") / max(len(r.split()), 1) for r in responses],
                    np.float32)


def _rollout(seed=0, n=3):
    model = Decoder(tiny_cfg(), rngs=nnx.Rngs(seed))
    return model, rollout(model, tiny_tokenizer(), DATA[:n], jax.random.PRNGKey(seed), SAMPLING, 2)


def test_token_rewards_become_reward_to_go_in_the_train_layout():
    model, ro = _rollout()
    mask = np.asarray(ro.out.mask)
    rng = np.random.RandomState(0)
    rewards = (rng.randn(*mask.shape) * mask).astype(np.float32)
    gamma = 0.9
    obj = TokenPGObjective(lambda ro_, comps: (rewards, {}), adv=AdvantageConfig(gamma=gamma))
    batch, stats = obj.make_batch(ro, {})
    P = np.asarray(ro.out.prompt_ids).shape[1]
    for r in range(mask.shape[0]):  # G_t = r_t + γ·G_{t+1}, by hand over the response tokens
        g, want = 0.0, np.zeros(mask.shape[1])
        for t in reversed(range(mask.shape[1])):
            if mask[r, t]:
                g = rewards[r, t] + gamma * g
                want[t] = g
        np.testing.assert_allclose(batch["adv"][r, P - 1:], want, atol=1e-5)
        assert not batch["adv"][r, : P - 1].any()
    # the advantages sit exactly where the loss mask of the shifted log-probs is on
    assert np.array_equal(batch["adv"] != 0, (batch["loss_mask"][:, 1:] == 1) & (batch["adv"] != 0))
    assert stats["reward/token_sum"] == pytest.approx(float(rewards.sum(1).mean()), abs=1e-5)


def test_first_ppo_epoch_gradient_is_the_token_reinforce_gradient():
    """At ratio 1 (old log-probs = current), ∇ PPO-clip = −(1/N) Σ_t A_t ∇log π(y_t)."""
    model, ro = _rollout()
    mask = np.asarray(ro.out.mask)
    rewards = (np.random.RandomState(1).randn(*mask.shape) * mask).astype(np.float32)
    obj = TokenPGObjective(lambda ro_, comps: (rewards, {}), loss="ppo", pg=TokenPGConfig(0.2))
    batch, _ = obj.make_batch(ro, {})
    batch = jax.tree.map(jnp.asarray, batch)
    batch["old_logps"] = token_logps(model, batch["input_ids"], batch["attention_mask"],
                                     batch["loss_mask"])
    graphdef, params = nnx.split(model)
    m = batch["loss_mask"][:, 1:].astype(jnp.float32)

    def ppo(p):
        return obj.make_loss_fn()(nnx.merge(graphdef, p), batch, None)[0]

    def reinforce(p):
        lp = token_logps(nnx.merge(graphdef, p), batch["input_ids"], batch["attention_mask"],
                         batch["loss_mask"])
        return -(batch["adv"] * lp * m).sum() / m.sum()

    g1, g2 = jax.grad(ppo)(params), jax.grad(reinforce)(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
    assert float(ppo(params)) == pytest.approx(float(-(batch["adv"] * m).sum() / m.sum()),
                                               abs=1e-6)


def test_alarm_hook_is_the_hierarchy_on_the_last_token():
    _, ro = _rollout(n=2)
    stats = HolisticStats(0.25, 0.5)
    cfg = AlarmConfig(tau=0.6, w_h=5.0, sigmoid_shifts=(2.0,))
    length = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    h = np.array([0.0, 0.75, 1.0, 0.25], np.float32)  # z = −0.5, 1.0, 1.5, 0.0
    rewards, st = alarm.token_reward_hook(stats, ["length"], cfg)(
        ro, {"holistic": (h, 1.0), "length": (length, 1.0)})
    mask = np.asarray(ro.out.mask)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    z = (h - 0.25) / 0.5
    sig = 1.0 / (1.0 + np.exp(-(length - 2.0)))
    want = 5.0 * z + np.where(z >= 0.6, sig, 0.0)
    want = np.where(mask.sum(1) <= 2, -50.0, want)
    np.testing.assert_allclose(rewards[np.arange(4), last], want, atol=1e-5)
    assert np.count_nonzero(rewards) <= 4
    assert st["reward/holistic"] == pytest.approx(h.mean())


def _run(tmp, steps, mode="hierarchical"):
    model = Decoder(tiny_cfg(), rngs=nnx.Rngs(0))
    tok = tiny_tokenizer()
    lengths = alarm.aspect_scorers(["length"], tok, DATA)
    stats = HolisticStats(0.2, 0.2)
    cfg = preset("long_form_qa", mode=mode, sigmoid_shifts=(3.0,))
    objective = TokenPGObjective(alarm.token_reward_hook(stats, ["length"], cfg), loss="ppo",
                                 adv=AdvantageConfig(whiten=True))
    return train_online(
        model, tok, DATA, alarm.reward_fn(_yes, lengths),
        rcfg=RefAlignConfig(k=4, updates_per_rollout=2), sampling=SAMPLING,
        optim=OptimConfig(lr=3e-2, grad_clip=1.0),
        loop=OnlineLoopConfig(steps=steps, prompts_per_step=4, save_every=4, kl_every=0,
                              progress=False),
        run_dir=tmp, objective=objective, label="alarm")


def test_tiny_end_to_end_raises_the_holistic_reward_and_resumes(tmp_path):
    _, full = _run(tmp_path / "full", 16)
    rows = [json.loads(l) for l in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    first = np.mean([r["reward/holistic"] for r in rows[:3]])
    last = np.mean([r["reward/holistic"] for r in rows[-3:]])
    assert last > first + 0.2, (first, last)
    assert "train/pg/clip_low" in rows[-1] and "alarm/above_tau" in rows[-1]

    _run(tmp_path / "resumed", 8)  # killed after its checkpoint at step 8, restarted
    _, res = _run(tmp_path / "resumed", 16)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(res.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
