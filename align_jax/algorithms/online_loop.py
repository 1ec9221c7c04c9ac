"""The on-policy loop shared by RefAlign's variants: rollout → reward → advantage → update, with
checkpoint/resume, JSONL+TensorBoard metrics and a progress bar.

Resume == uninterrupted: the rollout key of step s is fold_in(seed_key, s), the data order is the
loader's (seed, epoch) permutation whose position is checkpointed with the state, and the train
state carries its own rng. A run killed at any point restarts from the newest complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from align_jax.algorithms import refalign as ra
from align_jax.data.loader import DataLoader
from align_jax.errors import ConfigError
from align_jax.sampling.sampler import SamplingConfig
from align_jax.sharding import place_batch
from align_jax.sanity import check_config
from align_jax.train.guard import SKIP_KEY
from align_jax.train.metrics import compute
from align_jax.train.optim import make_optimizer
from align_jax.train.report import progress_bar
from align_jax.train.session import TrainingSession
from align_jax.train.state import create_train_state
from align_jax.train.step import make_train_step


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-5
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps: int = 40
    prompts_per_step: int = 4
    seed: int = 0
    save_every: int = 10
    keep_checkpoints: int = 2
    kl_every: int = 1  # measure KL(π_θ‖π_init) every N steps (one extra forward); 0 = never
    progress: bool = True
    max_nonfinite_steps: int = 3  # stop after this many non-finite updates in a row
    balance_by: str | None = None  # record field (e.g. "category"): batches take its values in turn


def as_record(ex) -> dict:
    """Schema object or dict -> flat dict with prompt/reference/unsafe + meta fields."""
    if isinstance(ex, dict):
        return ex
    d = {k: v for k, v in vars(ex).items() if k != "meta"}
    d.update(getattr(ex, "meta", {}) or {})
    return d


def train_online(model, tokenizer, examples: Sequence, reward_fn: ra.RewardFn, *,
                 rcfg: ra.RefAlignConfig, sampling: SamplingConfig, optim: OptimConfig,
                 loop: LoopConfig, run_dir: str | Path, mesh=None, step_callback=None,
                 objective=None):
    """-> (trained model, final TrainState).

    `examples` are records with at least `prompt` (and whatever `reward_fn` reads).
    `objective` turns a scored rollout into a train batch and gives the loss (default: RefAlign's
    REINFORCE, `ra.ReinforceObjective(rcfg)`; e.g. online SimPO in `algorithms.online_simpo`)."""
    objective = objective or ra.ReinforceObjective(rcfg)
    for c in (rcfg, sampling, optim, loop):
        check_config(c)
    run_dir = Path(run_dir)
    records = [as_record(e) for e in examples]
    opt = make_optimizer(optim.name, optim.lr, optim.schedule, optim.warmup_steps, loop.steps,
                         optim.weight_decay, optim.grad_clip)
    state, bundle = create_train_state(model, opt, loop.seed, mesh)
    # The initial policy for the KL measurement / penalty (a copy: the step donates its params).
    kl_penalty = rcfg.kl_coef > 0
    init_params = jax.tree.map(jnp.copy, state.params) if (loop.kl_every or kl_penalty) else None
    groups = [r.get(loop.balance_by) for r in records] if loop.balance_by else None
    if groups is not None and all(g is None for g in groups):
        raise ConfigError(f"balance_by={loop.balance_by!r}: no training record has that field")
    loader = DataLoader(records, loop.prompts_per_step, seed=loop.seed, shuffle=True,
                        groups=groups)
    session = TrainingSession(run_dir, save_every=loop.save_every, keep=loop.keep_checkpoints,
                              max_nonfinite_steps=loop.max_nonfinite_steps)
    step_fn = make_train_step(objective.make_loss_fn(), opt, bundle, mesh)
    init_fn = ra.make_init_logps_fn(bundle, rcfg.chunk_size) if init_params is not None else None
    base_key = jax.random.PRNGKey(loop.seed + 1)

    bar = None
    last_kl = float("nan")
    try:
        state, start = session.resume(state, loader)
        bar = progress_bar(loop.steps, start, "refalign", loop.progress)
        for step in range(start, loop.steps):
            t0 = time.perf_counter()
            batch_records = next(loader)
            policy = bundle.merge(state.params)
            ro = ra.rollout(policy, tokenizer, batch_records, jax.random.fold_in(base_key, step),
                            sampling, rcfg.k, mesh)
            t1 = time.perf_counter()
            prompts = [r["prompt"] for r in ro.records]
            comps = reward_fn(prompts, ro.texts, ro.records)
            batch, stats = objective.make_batch(ro, comps)
            t2 = time.perf_counter()
            dev_batch = place_batch(batch, mesh)
            if kl_penalty or (loop.kl_every and step % loop.kl_every == 0):
                lp0, kl_sum, n = init_fn(init_params, dev_batch)
                stats["kl_to_init"] = last_kl = float(kl_sum) / max(float(n), 1.0)
                if kl_penalty:  # the loss adds kl_coef · k3(π_θ, π_init) on these tokens
                    dev_batch = {**dev_batch, "init_logps": lp0}
            acc, skips = None, []
            for _ in range(rcfg.updates_per_rollout):
                state, m = step_fn(state, dev_batch)
                acc, skips = m, skips + [m[SKIP_KEY]]
            # metrics are the last update's, but a skipped update anywhere is counted
            acc[SKIP_KEY] = tuple(sum(x) for x in zip(*skips))
            stats.update({f"train/{k}": v for k, v in compute(jax.device_get(acc)).items()})
            t3 = time.perf_counter()
            stats.update(ra.rollout_stats(ro, sampling.max_new_tokens))
            stats.update({"time/sample_s": t1 - t0, "time/reward_s": t2 - t1,
                          "time/update_s": t3 - t2,
                          "samples_per_s": len(ro.texts) / max(t3 - t0, 1e-9)})
            session.end_step(step + 1, stats, state, final=step + 1 == loop.steps)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{_main_reward(stats):.4f}",
                                len=f"{stats['len/mean']:.1f}",
                                kl=f"{last_kl:.4f}")
            if step_callback is not None:
                step_callback(step + 1, stats, ro)
    finally:
        if bar is not None:
            bar.close()
        session.close()
    return bundle.merge(state.params), state


def _main_reward(stats: dict) -> float:
    for k in ("reward/sim", "reward/quality"):
        if k in stats:
            return stats[k]
    vals = [v for k, v in stats.items() if k.startswith("reward/") and not k.endswith("_std")]
    return float(np.mean(vals)) if vals else float("nan")
