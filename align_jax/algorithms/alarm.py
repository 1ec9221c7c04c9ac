"""ALaRM (arXiv 2403.06754) in the one online loop: what the method measures once before training
(fixed holistic statistics, consistency selection of the aspects, their σ-shaping), the reward
function of the rollouts, and the token-reward hook that puts the hierarchical rewards
(``rewards.alarm``) at token positions for ``token_objective.TokenPGObjective``.

Measured once on a sample set (K samples of the INITIAL policy per sample prompt) and saved in
the run directory, so a resumed run reuses them instead of re-measuring on a changed policy:
``holistic_stats.json`` (mean/std of the raw holistic reward → z-scores, τ is a threshold on
them) and ``alarm_selection.json`` (every candidate aspect's agreement rate with the holistic
reward, the selected aspect(s), and each aspect's shaping σ((x − mean)/std) with the sample
set's mean and std: raw aspects live on very different scales — words, grade levels, ratios —
and σ of a raw word count would be 1 for every answer).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from align_jax.algorithms.refalign import rollout
from align_jax.errors import ConfigError
from align_jax.rewards.alarm import (HOLISTIC_STATS_FILE, AlarmConfig, HolisticStats,
                                     alarm_rewards, sequence_aspect)
from align_jax.rewards.aspects import make_aspect_scorer, references_from_records
from align_jax.rewards.consistency import score_candidates, select_aspects
from align_jax.train import report

SELECTION_FILE = "alarm_selection.json"
CANDIDATES = ("readability", "length", "repetition", "similarity")


def aspect_scorers(names: Sequence[str], tokenizer, records: Sequence[dict],
                   similarity=None) -> dict[str, Callable]:
    """{name: scorer(prompts, responses)} of the offline aspects; ``similarity`` (a BERTScore
    scorer) compares each response with its record's ``reference``."""
    specials = list(tokenizer.all_special_tokens)
    out = {}
    for name in names:
        if name == "similarity":
            if similarity is None:
                raise ConfigError("aspect 'similarity' needs a similarity scorer")
            out[name] = make_aspect_scorer("similarity", scorer=similarity,
                                           references=references_from_records(records))
        elif name in ("readability", "length", "repetition"):
            out[name] = make_aspect_scorer(name, special_tokens=specials)
        else:
            raise ConfigError(f"aspect {name!r}: expected one of {CANDIDATES}")
    return out


def measure_once(run_dir: Path, policy, tokenizer, records: Sequence[dict], holistic: Callable,
                 scorers: dict[str, Callable], sampling, k: int, seed: int = 0, top_n: int = 1,
                 mesh=None) -> tuple[HolisticStats, dict]:
    """(holistic stats, selection report) — read back from the run dir if they are there."""
    sel_path, stats_path = run_dir / SELECTION_FILE, run_dir / HOLISTIC_STATS_FILE
    if sel_path.is_file() and stats_path.is_file():
        print(f"[align_jax] reusing {stats_path.name} and {sel_path.name} of this run")
        return HolisticStats.load(stats_path), json.loads(sel_path.read_text())
    ro = rollout(policy, tokenizer, records, jax.random.PRNGKey(seed + 7), sampling, k, mesh)
    prompts = [r["prompt"] for r in ro.records]
    h = np.asarray(holistic(prompts, ro.texts), np.float32)
    stats = HolisticStats.fit(h)
    cands = score_candidates(scorers, prompts, ro.texts)
    chosen, rates = select_aspects(h, cands, prompts, top_n=top_n)
    shaping = {n: {"shift": float(s.mean()), "scale": 1.0 / float(s.std()) if s.std() > 0
                   else 1.0} for n, s in cands.items()}
    sel = {"selected": chosen, "candidates": rates, "shaping": shaping,
           "sample_set": {"prompts": len(records), "k": k, "responses": len(ro.texts)},
           "holistic": {"mean": stats.mean, "std": stats.std}}
    stats.save(stats_path)  # the stats first: the selection file marks the step as done
    report.write_json(sel_path, sel)
    return stats, sel


def selection_table(selection: dict) -> str:
    """Markdown: every candidate's agreement rate with the holistic reward."""
    rows = "".join(f"| {n} | {r['agreement']:.3f} | {r['pairs']} | {r['selected']} |\n"
                   for n, r in selection["candidates"].items())
    return ("## consistency selection (sample set)\n\n| aspect | agreement | pairs | selected |"
            f"\n|---|---|---|---|\n{rows}")


def alarm_config(base: AlarmConfig, selection: dict, aspect_weight: float = 1.0) -> AlarmConfig:
    """The preset with the selected aspects' weights and shaping filled in."""
    sh = [selection["shaping"][n] for n in selection["selected"]]
    return dataclasses.replace(base, aspect_weights=tuple(aspect_weight for _ in sh),
                               sigmoid_scales=tuple(s["scale"] for s in sh),
                               sigmoid_shifts=tuple(s["shift"] for s in sh))


def reward_fn(holistic: Callable, scorers: dict[str, Callable]):
    """The loop's reward function: raw holistic score and each aspect's raw score per row."""
    def fn(prompts, responses, records):
        out = {"holistic": (np.asarray(holistic(list(prompts), list(responses)), np.float32), 1.0)}
        out.update({n: (np.asarray(s(list(prompts), list(responses)), np.float32), 1.0)
                    for n, s in scorers.items()})
        return out
    return fn


def token_reward_hook(stats: HolisticStats, aspects: Sequence[str], cfg: AlarmConfig):
    """(rollout, components) -> (token rewards [R, N], stats): z-normalised holistic reward and
    the selected aspects (sequence-level: on each response's last token) combined by
    ``rewards.alarm.alarm_rewards`` with ``cfg`` (preset τ, w_h; ``mode`` = the ablation)."""
    def hook(ro, comps):
        h = stats.normalise(np.asarray(comps["holistic"][0], np.float32))
        asp = [sequence_aspect(comps[n][0]) for n in aspects]
        out = alarm_rewards(h, asp, np.asarray(ro.out.mask), cfg)
        st = {f"reward/{n}": float(np.mean(comps[n][0])) for n in ("holistic", *aspects)}
        st["reward/holistic_z"] = float(np.mean(h))
        st.update({k: float(s) / max(float(c), 1.0) for k, (s, c) in out.metrics.items()})
        return np.asarray(out.token_rewards), st
    return hook


def evaluate(policy, tokenizer, records: Sequence[dict], holistic: Callable, stats: HolisticStats,
             scorers: dict[str, Callable], sampling, n: int, seed: int = 0, tau: float = 0.6,
             mesh=None) -> dict:
    """Held-out: ``n`` samples per prompt (fixed key) scored by the holistic reward (raw and z,
    share ≥ τ) and every aspect. {"metrics", "answers" (each prompt's first sample)}."""
    ro = rollout(policy, tokenizer, records, jax.random.PRNGKey(seed + 11), sampling, n, mesh)
    prompts = [r["prompt"] for r in ro.records]
    h = np.asarray(holistic(prompts, ro.texts), np.float32)
    z = stats.normalise(h)
    m = {"holistic": float(h.mean()), "holistic_z": float(z.mean()),
         "above_tau": float((z >= tau).mean())}
    m.update({f"aspect/{k}": float(v.mean())
              for k, v in score_candidates(scorers, prompts, ro.texts).items()})
    m["len_words"] = float(np.mean([len(t.split()) for t in ro.texts]))
    return {"metrics": m, "answers": ro.texts[::n]}
