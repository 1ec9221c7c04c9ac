"""LD-Align rounds (arXiv 2404.06390) as a batch source for the one loop.

Self-play DPO in ``rounds`` rounds over the same training prompts: in round r the winner of each
pair is the prompt's SFT reference answer y, the loser a FRESH sample y′ of the policy as it is at
the start of the round; the pair's DPO term is weighted by ``latent_weights`` of the guide's latent
distance s = ‖ϕ(x, y) − ϕ(x, y′)‖ (``weight=none``: all 1 = SPIN). The reference model of round r
is the policy at the start of round r (``refresh_reference``, SPIN's choice) or the initial policy.

``steps`` (the loop's) counts optimizer updates over ALL rounds; round r owns the updates
[ceil(r·S/R), ceil((r+1)·S/R)) (a round with none is skipped). At a round's first update the
source prepares it and saves ``rounds/round_<r>/``: ``samples.json`` (the losers), ``pairs.jsonl``
(prompt, chosen, rejected, distance, weight per pair) and ``reference.npz`` (the round's reference
log-probs). A resumed run reads those back instead of resampling (the round-start policy is gone
by then), so resume == uninterrupted. The round's last update is followed by the held-out
evaluation (``rounds/round_<r>/eval.json``; the hook adds it to the metrics as ``eval/*``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from align_jax.algorithms.preference import TrainConfig, make_preference_update
from align_jax.algorithms.preference_step import lora_reference
from align_jax.algorithms.reference_cache import compute_reference
from align_jax.algorithms.refalign_eval import generate_answers
from align_jax.data.loader import DataLoader
from align_jax.data.pref_data import PrefData
from align_jax.data.schemas import PreferencePair
from align_jax.losses.ld_align import WEIGHT_SCHEMES, latent_weights
from align_jax.models.latent_ae import NORMS, latent_distance
from align_jax.sampling.sampler import SamplingConfig
from align_jax.sharding import place_batch
from align_jax.train import report
from align_jax.train.loop import eval_once, run_loop
from align_jax.train.state import create_train_state, has_lora
from align_jax.train.step import make_train_step


@dataclasses.dataclass(frozen=True)
class RoundsConfig:
    """What makes the rounds LD-Align (or SPIN)."""

    rounds: int = 2  # R self-play rounds (each resamples the losers)
    weight: str = "softmax"  # softmax | mean_norm | none (= SPIN)
    weight_temperature: float = 1.0  # softmax temperature T over the round's distances
    norm: str = "l2"  # latent distance norm: l2 | l1 | linf
    refresh_reference: bool = True  # reference of round r = policy at its start (SPIN)

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds}: must be >= 1")
        if self.weight not in WEIGHT_SCHEMES:
            raise ValueError(f"weight={self.weight!r}: expected one of {list(WEIGHT_SCHEMES)}")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: expected one of {sorted(NORMS)}")
        if self.weight == "softmax" and self.weight_temperature <= 0:
            raise ValueError(f"weight_temperature={self.weight_temperature}: must be > 0")


def round_bounds(steps: int, rounds: int) -> list[tuple[int, int]]:
    """[start, end) update indices of each round: ceil splitting, so a longer run keeps the
    earlier rounds' boundaries when S is a multiple (and step 0 is always in round 0)."""
    cuts = [math.ceil(r * steps / rounds) for r in range(rounds + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def sample_losers(round_dir: Path, policy, tokenizer, records: Sequence[dict],
                  sampling: SamplingConfig, seed: int, mesh=None) -> list[str]:
    """One fresh policy sample per record (the round's losers), saved as ``samples.json`` in
    ``round_dir`` and read back from there when present (a resumed round)."""
    path = Path(round_dir) / "samples.json"
    if path.exists():
        return json.loads(path.read_text())
    texts = generate_answers(policy, tokenizer, records, sampling,
                             batch_size=min(16, len(records)), mesh=mesh, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(path, texts)
    return texts


class LDAlignSource:
    """The round's pairs, prepared when the loop enters it; micro-batches of prompt indices in the
    loader's (seed, epoch) order (one loader over the prompts serves every round)."""

    def __init__(self, bundle, init_params, records: Sequence[dict], tokenizer, tcfg, length: int,
                 cfg: TrainConfig, rcfg: RoundsConfig, sampling: SamplingConfig, run_dir: Path, *,
                 phi: Callable | None = None, mesh=None, ref_batch_size: int = 8,
                 chunk_size: int | None = None):
        self.bundle, self.init_params, self.records = bundle, init_params, list(records)
        self.tok, self.tcfg, self.length = tokenizer, tcfg, length
        self.cfg, self.rcfg, self.sampling, self.phi, self.mesh = cfg, rcfg, sampling, phi, mesh
        self.root = Path(run_dir) / "rounds"
        self.ref_batch_size, self.chunk_size = ref_batch_size, chunk_size
        self.bounds = round_bounds(cfg.steps, rcfg.rounds)
        self.loader = DataLoader(list(range(len(self.records))), cfg.batch_size, seed=cfg.seed,
                                 shuffle=True, collate_fn=np.asarray)
        self.current, self.data, self.stats = None, None, {}

    def round_of(self, step: int) -> int:
        return next(r for r, (a, b) in enumerate(self.bounds) if a <= step < b)

    def dir(self, r: int) -> Path:
        return self.root / f"round_{r}"

    def losers(self, r: int, policy) -> list[str]:
        return sample_losers(self.dir(r), policy, self.tok, self.records, self.sampling,
                             self.cfg.seed * 1000 + r + 1, self.mesh)

    def prepare(self, r: int, state) -> PrefData:
        d = self.dir(r)
        policy = self.bundle.merge(state.params)
        losers = self.losers(r, policy)
        prompts = [x["prompt"] for x in self.records]
        refs = [x["reference"] for x in self.records]
        data = PrefData("pair", [PreferencePair(p, c, l) for p, c, l in zip(prompts, refs, losers)],
                        self.tok, self.tcfg, length=self.length)
        if (d / "reference.npz").exists() and (d / "pairs.jsonl").exists():
            rows = [json.loads(line) for line in (d / "pairs.jsonl").read_text().splitlines()]
            s = np.array([np.nan if row["distance"] is None else row["distance"] for row in rows],
                         np.float32)
            w = np.array([row["weight"] for row in rows], np.float32)
            ref = dict(np.load(d / "reference.npz"))
        else:
            if self.rcfg.weight == "none" or self.phi is None:
                s = np.full(len(refs), np.nan, np.float32)  # SPIN: no guide, no distance
            else:
                s = np.asarray(latent_distance(self.phi(prompts, refs), self.phi(prompts, losers),
                                               self.rcfg.norm), np.float32)
            w = np.asarray(latent_weights(np.nan_to_num(s), self.rcfg.weight,
                                          self.rcfg.weight_temperature), np.float32)
            if self.rcfg.refresh_reference:
                ref_model = policy
            elif has_lora(policy):
                ref_model = lora_reference(policy)
            else:
                ref_model = self.bundle.merge(self.init_params)
            ref = compute_reference(ref_model, data, batch_size=self.ref_batch_size,
                                    mesh=self.mesh, chunk_size=self.chunk_size)
            np.savez(d / "reference.npz", **{k: np.asarray(v) for k, v in ref.items()})
            with open(d / "pairs.jsonl", "w") as f:  # written last: the round's "prepared" mark
                for p, c, l, si, wi in zip(prompts, refs, losers, s, w):
                    f.write(json.dumps({"prompt": p, "chosen": c, "rejected": l,
                                        "distance": None if np.isnan(si) else float(si),
                                        "weight": float(wi)}, ensure_ascii=False) + "\n")
        self.stats = {"round": float(r), "ld/weight_max": float(w.max()),
                      "ld/weight_min": float(w.min())}
        if not np.isnan(s).all():
            self.stats["ld/distance_mean"] = float(np.nanmean(s))
        return data.with_arrays(**ref, pair_weight=w)

    def next(self, state, step: int):
        r = self.round_of(step)
        if r != self.current:
            self.dir(r).mkdir(parents=True, exist_ok=True)
            self.data, self.current = self.prepare(r, state), r
        micro = [self.data.batch(next(self.loader)) for _ in range(self.cfg.optim.grad_accum)]
        return [place_batch(b, self.mesh) for b in micro], dict(self.stats)


def train_ld_align(policy, records: Sequence[dict], tokenizer, tcfg, length: int, loss_fn,
                   cfg: TrainConfig, rcfg: RoundsConfig, sampling: SamplingConfig, run_dir, *,
                   phi: Callable | None = None, held_out: Callable | None = None, mesh=None,
                   ref_batch_size: int = 8, chunk_size: int | None = None, label: str = "ld_align"):
    """The R rounds in the one loop -> (trained policy, {round: held-out eval}).

    ``records``: {prompt, reference} training rows; ``phi(prompts, responses) -> [N, d]``: the
    trained guide's encoder (None with ``weight=none``); ``held_out(policy) -> {"metrics", ...}``
    runs after each round's last update."""
    run_dir = Path(run_dir)
    opt = cfg.optim.make(cfg.steps)
    state, bundle = create_train_state(policy, opt, cfg.seed, mesh)
    # the initial weights, copied before any checkpoint is restored (refresh_reference=false)
    init_params = None if rcfg.refresh_reference else jax.tree.map(jnp.copy, state.params)
    step_fn = make_train_step(loss_fn, opt, bundle, mesh)
    source = LDAlignSource(bundle, init_params, records, tokenizer, tcfg, length, cfg, rcfg,
                           sampling, run_dir, phi=phi, mesh=mesh, ref_batch_size=ref_batch_size,
                           chunk_size=chunk_size)
    evals: dict[int, dict] = {}

    def after_round(step, state, stats):
        ends = {b: r for r, (a, b) in enumerate(source.bounds) if b > a}
        if held_out is not None and step in ends:
            r = ends[step]
            res = eval_once(source.dir(r) / "eval.json", lambda: held_out(bundle.merge(state.params)))
            evals[r] = res
            stats.update({f"eval/{k}": v for k, v in res["metrics"].items()})
            print(f"\n[align_jax] round {r} done: {report.fmt_metrics(res['metrics'])}")

    state = run_loop(state, source, make_preference_update(step_fn), run_dir, cfg, label=label,
                     postfix=lambda s: {"loss": f"{s['train/loss']:.4f}",
                                        "round": f"{int(s['round'])}"},
                     hooks=[after_round])
    for r, (a, b) in enumerate(source.bounds):  # rounds finished before a resume
        if b > a and r not in evals and (source.dir(r) / "eval.json").exists():
            evals[r] = json.loads((source.dir(r) / "eval.json").read_text())
    return bundle.merge(state.params), evals
