"""Supervised warm-up on the reference answers, in the one loop, before an on-policy method.

RLHF pipelines start RL from a supervised (SFT) model; RefAlign's own experiments do (Alpaca-7B and
its SFT'd successors). The online experiments can do the same on their prompt/reference records:
``sft.steps=N`` runs N steps of token-mean NLL on (prompt, reference) — the chat template and
truncation the sampler uses — in ``<run>/sft`` (own checkpoints and ``metrics.jsonl``, resumable),
and the on-policy run starts from the result, which is then also its KL anchor.

Why it exists: a 135M policy with ~10% base refusals gives REINFORCE almost nothing to prefer on
risky prompts, and what it learns from the rare refusal spreads to every prompt (README, safety
sweep). Supervised targets give both sides at once — refuse THESE, answer THOSE — so the
distinction is in the gradient from the first step. ``balance_by`` (e.g. ``category``) takes the
groups in turn, so every batch holds both.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import jax

from align_jax.data.loader import DataLoader
from align_jax.data.tokenize import TokenizeConfig, sequence_batch
from align_jax.errors import ConfigError
from align_jax.sharding import place_batch
from align_jax.train.base_model import base_identity
from align_jax.train.loop import LoopConfig, run_loop
from align_jax.train.metrics import compute
from align_jax.train.optim import OptimConfig
from align_jax.train.state import create_train_state
from align_jax.train.step import lm_loss_fn, make_train_step


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """The warm-up's length (``steps=0``: none), batches and optimizer. Its seed (data order) is
    the run's (``loop.seed``), so ``seeds=0,1,2`` varies the warm-up too."""

    steps: int = 0  # NLL updates on (prompt, reference) before the on-policy method; 0 = off
    save_every: int = 40  # checkpoint every N steps (and at the last)
    batch_size: int = 8  # records per update
    balance_by: str | None = None  # record field whose values batches take in turn (category)
    max_prompt_len: int = 128  # prompt tokens kept (left-truncated)
    max_completion_len: int = 96  # reference tokens kept (right-truncated)
    optim: OptimConfig = OptimConfig(lr=1e-4, grad_clip=1.0, schedule="cosine")


class ReferenceSource:
    """Batches of (prompt, reference) sequences in the loader's resumable (seed, epoch) order."""

    def __init__(self, records: Sequence[dict], tokenizer, cfg: SFTConfig, seed: int = 0,
                 mesh=None):
        bad = [i for i, r in enumerate(records) if not r.get("reference")]
        if bad:
            raise ConfigError(f"sft.steps={cfg.steps}: the warm-up trains on reference answers, "
                              f"but record {bad[0]} (and {len(bad) - 1} more) has none")
        groups = [r.get(cfg.balance_by) for r in records] if cfg.balance_by else None
        self.tok_cfg = TokenizeConfig(max_prompt_len=cfg.max_prompt_len,
                                      max_completion_len=cfg.max_completion_len, pad_multiple=32)
        self.loader = DataLoader(list(records), min(cfg.batch_size, len(records)), seed=seed,
                                 shuffle=True, groups=groups)
        self.tokenizer, self.mesh = tokenizer, mesh

    def next(self, state, step: int):
        rows = next(self.loader)
        batch = sequence_batch(self.tokenizer, [r["prompt"] for r in rows],
                               [r["reference"] for r in rows], self.tok_cfg)
        return place_batch(batch, self.mesh), {}


def warm_up(model, tokenizer, records: Sequence[dict], cfg: SFTConfig, run_dir: str | Path, *,
            mesh=None, seed: int = 0, progress: bool = True):
    """-> the model after ``cfg.steps`` NLL updates on the records' references (``model`` itself
    when ``steps == 0``). Runs in ``run_dir`` (resumes it; a finished warm-up is read back)."""
    if cfg.steps <= 0:
        return model
    opt = cfg.optim.make(cfg.steps)
    state, bundle = create_train_state(model, opt, seed, mesh)
    step_fn = make_train_step(lm_loss_fn(), opt, bundle, mesh)
    source = ReferenceSource(records, tokenizer, cfg, seed, mesh)

    def update(state, batch):
        t0 = time.perf_counter()
        state, m = step_fn(state, batch)
        stats = {f"train/{k}": v for k, v in compute(jax.device_get(m)).items()}
        stats["time/update_s"] = time.perf_counter() - t0
        return state, stats

    loop_cfg = LoopConfig(steps=cfg.steps, seed=seed, save_every=cfg.save_every,
                          progress=progress)
    state = run_loop(state, source, update, Path(run_dir), loop_cfg, label="sft warm-up",
                     postfix=lambda s: {"nll": f"{s.get('train/nll', float('nan')):.3f}"},
                     base=base_identity(model, bundle.frozen))
    return bundle.merge(state.params)
