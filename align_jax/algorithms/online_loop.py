"""The on-policy methods as a batch source for the one loop (``align_jax.train.loop``):
rollout (K samples per prompt) → reward → advantage → train batch, then the objective's update.

Resume == uninterrupted: the rollout key of step s is fold_in(seed_key, s), the data order is the
loader's (seed, epoch) permutation whose position the loop checkpoints with the state, and the
train state carries its own rng. A run killed at any point restarts from the newest complete
checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp

from align_jax.algorithms import refalign as ra
from align_jax.data.loader import DataLoader
from align_jax.data.schemas import as_record
from align_jax.errors import ConfigError
from align_jax.rewards.compose import RewardFn
from align_jax.sampling.sampler import SamplingConfig
from align_jax.sanity import check_config
from align_jax.sharding import place_batch
from align_jax.train.base_model import base_identity
from align_jax.train.guard import SKIP_KEY
from align_jax.train.loop import LoopConfig, run_loop
from align_jax.train.metrics import compute
from align_jax.train.optim import OptimConfig
from align_jax.train.state import create_train_state
from align_jax.train.step import make_train_step


@dataclasses.dataclass(frozen=True)
class OnlineLoopConfig(LoopConfig):
    """The loop's knobs plus what an on-policy source adds."""

    prompts_per_step: int = 4  # prompts sampled per step (each gets K samples)
    kl_every: int = 1  # measure KL(π_θ‖π_init) every N steps (one extra forward); 0 = never
    balance_by: str | None = None  # record field (e.g. "category"): batches take its values in turn


def balance_groups(records, balance_by: str | None) -> list | None:
    """Each record's ``balance_by`` value (None when off); a field no record has is a
    ConfigError (callers check before any costly work: the experiments before the warm-up)."""
    if not balance_by:
        return None
    groups = [as_record(r).get(balance_by) for r in records]
    if all(g is None for g in groups):
        raise ConfigError(f"balance_by={balance_by!r}: no training record has that field")
    return groups


class RolloutSource:
    """Batch source of the on-policy methods: each step samples K responses for the next prompts
    with the CURRENT policy, scores them (``reward_fn``) and lets the objective turn them into a
    train batch; measures (and, with ``kl_coef``, feeds the loss) the KL to the initial policy."""

    def __init__(self, records, tokenizer, reward_fn, objective, bundle, rcfg, sampling,
                 loop: OnlineLoopConfig, init_params, mesh=None):
        groups = balance_groups(records, loop.balance_by)
        self.loader = DataLoader(records, loop.prompts_per_step, seed=loop.seed, shuffle=True,
                                 groups=groups)
        self.tokenizer, self.reward_fn, self.objective = tokenizer, reward_fn, objective
        self.bundle, self.rcfg, self.sampling, self.loop, self.mesh = (bundle, rcfg, sampling,
                                                                       loop, mesh)
        self.kl_penalty = rcfg.kl_coef > 0
        self.init_params = init_params
        self.init_fn = (ra.make_init_logps_fn(bundle, rcfg.chunk_size, mesh)
                        if init_params is not None else None)
        self.base_key = jax.random.PRNGKey(loop.seed + 1)
        self.last = None  # the latest rollout (for callbacks)
        self.last_kl: tuple[int, float] | None = None  # (step, KL) of the latest measurement

    def next(self, state, step: int):
        t0 = time.perf_counter()
        batch_records = next(self.loader)
        policy = self.bundle.merge(state.params)
        ro = ra.rollout(policy, self.tokenizer, batch_records,
                        jax.random.fold_in(self.base_key, step), self.sampling, self.rcfg.k,
                        self.mesh)
        t1 = time.perf_counter()
        comps = self.reward_fn([r["prompt"] for r in ro.records], ro.texts, ro.records)
        batch, stats = self.objective.make_batch(ro, comps)
        t2 = time.perf_counter()
        dev_batch = place_batch(batch, self.mesh)
        if self.kl_penalty or (self.loop.kl_every and step % self.loop.kl_every == 0):
            lp0, kl_sum, n = self.init_fn(self.init_params, dev_batch)
            stats["kl_to_init"] = float(kl_sum) / max(float(n), 1.0)
            self.last_kl = (step + 1, stats["kl_to_init"])
            if self.kl_penalty:  # the loss adds kl_coef · k3(π_θ, π_init) on these tokens
                dev_batch = {**dev_batch, "init_logps": lp0}
        stats.update(ra.rollout_stats(ro, self.sampling.max_new_tokens))
        stats.update({"time/sample_s": t1 - t0, "time/reward_s": t2 - t1})
        self.last = ro
        return dev_batch, stats


def make_online_update(step_fn, updates_per_rollout: int):
    """``updates_per_rollout`` optimizer steps on one scored rollout; the metrics are the last
    update's, but a skipped update anywhere is counted."""

    def update(state, dev_batch):
        t0 = time.perf_counter()
        acc, skips = None, []
        for _ in range(updates_per_rollout):
            state, m = step_fn(state, dev_batch)
            acc, skips = m, skips + [m[SKIP_KEY]]
        acc[SKIP_KEY] = tuple(sum(x) for x in zip(*skips))
        stats = {f"train/{k}": v for k, v in compute(jax.device_get(acc)).items()}
        stats["time/update_s"] = time.perf_counter() - t0
        return state, stats

    return update


def train_online(model, tokenizer, examples: Sequence, reward_fn: RewardFn, *,
                 rcfg: ra.RefAlignConfig, sampling: SamplingConfig, optim: OptimConfig,
                 loop: OnlineLoopConfig, run_dir: str | Path, mesh=None, step_callback=None,
                 objective=None, label: str = "refalign"):
    """-> (trained model, final TrainState).

    `examples` are records with at least `prompt` (and whatever `reward_fn` reads).
    `objective` turns a scored rollout into a train batch and gives the loss (default: RefAlign's
    REINFORCE, `ra.ReinforceObjective(rcfg)`; e.g. online SimPO in `algorithms.online_simpo`).
    `label` names the progress bar (the method). `step_callback(step, stats, rollout)`."""
    objective = objective or ra.ReinforceObjective(rcfg)
    for c in (rcfg, sampling, optim, loop):
        check_config(c)
    if sampling.n not in (1, rcfg.k):  # K is the objective's knob; the sampler's n follows it
        raise ConfigError(f"n={sampling.n}: the online methods sample k={rcfg.k} responses per "
                          "prompt (set k)")
    records = [as_record(e) for e in examples]
    opt = optim.make(loop.steps)
    state, bundle = create_train_state(model, opt, loop.seed, mesh)
    # The initial policy for the KL measurement / penalty (a copy: the step donates its params).
    keep_init = loop.kl_every or rcfg.kl_coef > 0
    init_params = jax.tree.map(jnp.copy, state.params) if keep_init else None
    source = RolloutSource(records, tokenizer, reward_fn, objective, bundle, rcfg, sampling, loop,
                           init_params, mesh)
    update = make_online_update(make_train_step(objective.make_loss_fn(), opt, bundle, mesh),
                                rcfg.updates_per_rollout)

    def throughput(step, state, stats):
        stats["samples_per_s"] = len(source.last.texts) / max(stats["time/step_s"], 1e-9)

    def postfix(stats):  # each field says what it is: Σ_c w_c·R_c, tokens, KL and its step
        kl = ({f"kl@{source.last_kl[0]}": f"{source.last_kl[1]:.4f}"} if source.last_kl
              else {"kl": "not measured yet"})
        return {"total_reward": f"{stats['reward/total']:.4f}",
                "tokens": f"{stats['len/mean']:.1f}", **kl}

    callback = (None if step_callback is None
                else (lambda step, stats: step_callback(step, stats, source.last)))
    state = run_loop(state, source, update, run_dir, loop, label=label, postfix=postfix,
                     hooks=[throughput], step_callback=callback,
                     base=base_identity(model, bundle.frozen))
    return bundle.merge(state.params), state

