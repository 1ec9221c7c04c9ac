"""ALaRM hierarchical rewards (arXiv 2403.06754; ALGORITHMS.md §2): the reward pieces.

    stats = HolisticStats.fit(rm(prompts, sample_responses))   # once, before training
    stats.save(run_dir / HOLISTIC_STATS_FILE)                  # a resumed run reloads the same
    h = stats.normalise(rm(prompts, responses))                 # z with the FIXED stats
    out = alarm_rewards(h, [aspect_a, aspect_b], mask_bt, PRESETS["long_form_qa"])
    out.token_rewards  # [B, T] for losses.token_pg (reward_to_go, then a surrogate loss)

The combination (per sample; σ-shaped aspects, unshaped holistic):

    ≤ short_len response tokens  →  short_penalty·w_h on the last token (everything else dropped)
    h < τ                        →  w_h·h on the last token only
    h ≥ τ                        →  Σ_a w_a·σ(s_a·(x − c_a)) at each aspect reward's token + w_h·h

Why shaping and no centring: σ(·) ∈ (0, 1), so a sample above τ gets w_h·h ≥ w_h·τ plus only
positive aspect rewards — it always outranks a sample below τ, which gets at most w_h·τ. Centring
the aspect rewards would break that order, so they are never centred here.

Ablations (``mode``): ``hierarchical`` (the method), ``holistic_only`` (w_h·h only),
``aspect_only`` (shaped aspects only), ``weighted_sum`` (aspects + w_h·h for every sample, no
gate). The short-response rule applies in every mode: it guards against a degenerate policy, not
a property of the holistic reward.

Layout: arrays are [B, T] in ``train.logprobs.token_logps``' layout, ``mask`` = 1 on the response
tokens (one contiguous run per row). Aspect positions are RESPONSE-relative (0 = first response
token, −1 = last), so host code can compute them from the response text alone; they are moved into
the [B, T] layout here. A position past the response end is put on the last response token (a
sentence cut by truncation still pays out). An empty response has no token to hold a reward and
gets none.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from align_jax.errors import ConfigError, DataError
from align_jax.losses.token_pg import place_rewards
from align_jax.rewards.aspects import sentence_spans

Array = jax.Array
HOLISTIC_STATS_FILE = "holistic_stats.json"


# ---------------------------------------------------------------- holistic normalisation
@dataclasses.dataclass(frozen=True)
class HolisticStats:
    """Mean and std of the holistic reward, measured ONCE on a sample set and then fixed.

    Why fixed: τ is a threshold on the z-score, so the z-scale must not drift with each batch
    (a batch z-score would put half of every batch above τ = 0 whatever the policy does)."""
    mean: float
    std: float
    count: int = 0  # size of the sample set the stats came from (provenance only)

    @classmethod
    def fit(cls, scores, min_std: float = 1e-6) -> "HolisticStats":
        """Population mean and std (ddof = 0) of ``scores``. A (near-)constant sample set cannot
        define a z-scale, so it is an error rather than a silent division by ~0."""
        x = np.asarray(scores, np.float64).reshape(-1)
        if x.size == 0 or not np.all(np.isfinite(x)):
            raise ValueError(f"HolisticStats.fit needs finite scores, got {x.size} values"
                             + ("" if x.size == 0 else " with non-finite entries"))
        std = float(x.std())
        if std < min_std:
            raise ValueError(f"holistic scores are constant (std {std:.3g} < {min_std}); "
                             "measure the stats on a more varied sample set")
        return cls(float(x.mean()), std, int(x.size))

    def normalise(self, scores):
        """(x − mean) / std with the stored stats (numpy in → numpy, jax in → jax)."""
        return (scores - self.mean) / self.std

    def save(self, path: str | os.PathLike) -> Path:
        """JSON, written atomically (tmp + rename) so a run killed mid-write never leaves a
        half file that a resumed run would read."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HolisticStats":
        try:
            d = json.loads(Path(path).read_text())
            stats = cls(float(d["mean"]), float(d["std"]), int(d.get("count", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"not holistic stats ({type(e).__name__}: {e}); expected JSON with "
                            "'mean' and 'std'", source=str(path)) from e
        if not (math.isfinite(stats.mean) and math.isfinite(stats.std) and stats.std > 0):
            raise DataError(f"bad stats mean={stats.mean} std={stats.std}", source=str(path))
        return stats


# ---------------------------------------------------------------- aspect rewards
def sigmoid_shape(x, scale: float = 1.0, shift: float = 0.0):
    """σ(scale·(x − shift)) ∈ (0, 1). ``shift`` is the raw score that maps to 0.5 and ``scale``
    how sharply; both are [open] in the paper (σ(x) there) and exist because raw aspect scores
    live on very different scales (a word count would saturate σ at 1)."""
    return jax.nn.sigmoid(scale * (jnp.asarray(x, jnp.float32) - shift))


class AspectRewards(NamedTuple):
    """One aspect's raw rewards for a batch, K entries per row (K = 1 for a sequence-level
    aspect, #sentences for a per-sentence one, T for a per-token one)."""
    scores: Array  # [B, K] float raw scores
    positions: Array  # [B, K] int response-relative token positions; −1 = last response token
    valid: Array  # [B, K] bool; padding entries (rows with fewer than K rewards) are False


def sequence_aspect(scores_b) -> AspectRewards:
    """A sequence-level aspect: one reward per response, on its last token."""
    s = jnp.asarray(scores_b, jnp.float32)[:, None]
    return AspectRewards(s, jnp.full(s.shape, -1, jnp.int32), jnp.ones(s.shape, bool))


def token_aspect(scores_bt, mask_bt) -> AspectRewards:
    """A per-token aspect given in the [B, T] layout (e.g. a token-level classifier's output)."""
    mask = jnp.asarray(mask_bt).astype(bool)
    T = mask.shape[1]
    first = jnp.argmax(mask, axis=1)[:, None]
    rel = jnp.broadcast_to(jnp.arange(T)[None, :] - first, mask.shape).astype(jnp.int32)
    return AspectRewards(jnp.asarray(scores_bt, jnp.float32), jnp.where(mask, rel, 0), mask)


def pack_aspect(scores: Sequence[Sequence[float]],
                positions: Sequence[Sequence[int]]) -> AspectRewards:
    """Ragged per-row (scores, response-relative positions) → padded ``AspectRewards`` (host)."""
    if len(scores) != len(positions):
        raise ValueError(f"{len(scores)} score rows vs {len(positions)} position rows")
    K = max([1] + [len(s) for s in scores])
    sc = np.zeros((len(scores), K), np.float32)
    pos = np.full((len(scores), K), -1, np.int32)
    valid = np.zeros((len(scores), K), bool)
    for r, (s, p) in enumerate(zip(scores, positions)):
        if len(s) != len(p):
            raise ValueError(f"row {r}: {len(s)} scores vs {len(p)} positions")
        sc[r, :len(s)], pos[r, :len(p)], valid[r, :len(s)] = s, p, True
    return AspectRewards(jnp.asarray(sc), jnp.asarray(pos), jnp.asarray(valid))


def token_char_ends(tokenizer, ids: Sequence[int], skip_special_tokens: bool = True) -> np.ndarray:
    """End offset (exclusive) of each token in ``tokenizer.decode(ids)``: the length of the
    decoded prefix ids[:t+1]. Made non-decreasing because a token that ends inside a multi-byte
    character decodes to a replacement char that the next token may take back. O(T²) host work
    (T decodes), cheap next to sampling at response lengths of a few hundred tokens."""
    ends = [len(tokenizer.decode(list(ids[:t + 1]), skip_special_tokens=skip_special_tokens))
            for t in range(len(ids))]
    return np.maximum.accumulate(np.asarray(ends, np.int64)) if ends else np.zeros(0, np.int64)


def char_to_token_positions(char_ends: Sequence[int], token_ends: Sequence[int]) -> np.ndarray:
    """Response-relative token position of each character end offset: the first token whose
    span reaches it (token_end ≥ char_end), i.e. the token holding the sentence's last character.
    An offset past the last token (text not covered by the tokens) maps to −1 = the last token,
    so its reward is kept rather than dropped."""
    te = np.asarray(token_ends, np.int64)
    ce = np.asarray(char_ends, np.int64)
    pos = np.searchsorted(te, ce, side="left")
    return np.where(pos >= len(te), -1, pos).astype(np.int32)


def sentence_aspect(tokenizer, prompts: Sequence, response_ids: Sequence[Sequence[int]],
                    scorer: Callable, skip_special_tokens: bool = True) -> AspectRewards:
    """A per-sentence aspect from any ``scorer(prompts, texts) -> scores`` (the aspect-scorer
    interface, so every scorer of ``rewards.aspects`` — or a reward model — can score sentences):
    each response (``response_ids[r]`` = its response tokens, in the order of the mask's response
    tokens) is decoded, split into sentences, every sentence scored in ONE scorer call with its
    prompt, and each score placed on the token ending its sentence. A response without a word
    gets no entry."""
    if len(prompts) != len(response_ids):
        raise ValueError(f"{len(prompts)} prompts vs {len(response_ids)} responses")
    flat_p, flat_s, positions = [], [], []
    for p, ids in zip(prompts, response_ids):
        ids = [int(i) for i in ids]
        text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        spans = sentence_spans(text)
        ends = token_char_ends(tokenizer, ids, skip_special_tokens)
        positions.append(char_to_token_positions([e for _, e in spans], ends))
        flat_p += [p] * len(spans)
        flat_s += [text[a:b] for a, b in spans]
    flat = np.asarray(scorer(flat_p, flat_s) if flat_s else [], np.float32).reshape(-1)
    if flat.shape[0] != len(flat_s):
        raise ValueError(f"scorer returned {flat.shape[0]} scores for {len(flat_s)} sentences")
    cuts = np.cumsum([len(q) for q in positions])[:-1]
    return pack_aspect(np.split(flat, cuts), positions)


def _to_layout(rel_bk: Array, mask_bt: Array) -> Array:
    """Response-relative positions → [B, T]-layout positions (see module docstring)."""
    m = mask_bt.astype(bool)
    T = m.shape[1]
    first = jnp.argmax(m, axis=1)[:, None]
    n = m.sum(axis=1)[:, None]
    last = jnp.max(jnp.where(m, jnp.arange(T)[None, :], -1), axis=1, keepdims=True)
    return jnp.where((rel_bk < 0) | (rel_bk >= n), last, first + rel_bk)


@functools.partial(jax.jit, static_argnames=("weight", "shaped", "scale", "shift"))
def place_aspect(aspect: AspectRewards, mask_bt, weight: float = 1.0, shaped: bool = True,
                 scale: float = 1.0, shift: float = 0.0) -> Array:
    """Token rewards [B, T] of one aspect: w·σ(scale·(x − shift)) (or w·x unshaped) at each valid
    entry's token. Shaping happens before padding is zeroed, because σ(0) = 0.5 ≠ 0."""
    mask = jnp.asarray(mask_bt)
    x = sigmoid_shape(aspect.scores, scale, shift) if shaped else jnp.asarray(aspect.scores,
                                                                               jnp.float32)
    x = jnp.where(aspect.valid, weight * x, 0.0)
    return place_rewards(x, _to_layout(jnp.asarray(aspect.positions), mask), mask)


# ---------------------------------------------------------------- the hierarchy
def _hierarchical(hol_bt, asp_bt, h_b, tau):
    # h ≥ τ: the aspects refine an answer the holistic reward already finds good enough
    return hol_bt + jnp.where(h_b >= tau, 1.0, 0.0)[:, None] * asp_bt


COMBINERS: dict[str, Callable] = {
    "hierarchical": _hierarchical,
    "holistic_only": lambda hol_bt, asp_bt, h_b, tau: hol_bt,
    "aspect_only": lambda hol_bt, asp_bt, h_b, tau: asp_bt,
    "weighted_sum": lambda hol_bt, asp_bt, h_b, tau: hol_bt + asp_bt,
}


def get_combiner(mode: str) -> Callable:
    """``fn(holistic_bt, aspects_bt, h_b, tau) -> rewards_bt`` by name."""
    if mode not in COMBINERS:
        raise ConfigError(f"mode={mode!r}: unknown ALaRM mode; valid names: {sorted(COMBINERS)}")
    return COMBINERS[mode]


@dataclasses.dataclass(frozen=True)
class AlarmConfig:
    mode: str = "hierarchical"  # hierarchical | holistic_only | aspect_only | weighted_sum
    tau: float = 0.6  # threshold on the z-normalised holistic reward (QA 0.6, MT 0.5)
    w_h: float = 5.0  # holistic weight (QA 5, MT 3)
    short_len: int = 2  # responses of ≤ short_len tokens get short_penalty·w_h
    short_penalty: float = -10.0
    shape: bool = True  # σ-shape the aspect rewards (the holistic reward is never shaped)
    # per-aspect knobs, in the order the aspects are passed; () = 1.0 / 1.0 / 0.0 for each
    aspect_weights: tuple[float, ...] = ()
    sigmoid_scales: tuple[float, ...] = ()
    sigmoid_shifts: tuple[float, ...] = ()

    def __post_init__(self):
        get_combiner(self.mode)
        if self.short_len < 0:
            raise ConfigError(f"short_len={self.short_len}: must be ≥ 0")

    def per_aspect(self, n: int) -> list[tuple[float, float, float]]:
        """(weight, scale, shift) of each of n aspects."""
        def fill(vals, default, key):
            if not vals:
                return [default] * n
            if len(vals) != n:
                raise ConfigError(f"{key} has {len(vals)} values for {n} aspects")
            return [float(v) for v in vals]
        return list(zip(fill(self.aspect_weights, 1.0, "aspect_weights"),
                        fill(self.sigmoid_scales, 1.0, "sigmoid_scales"),
                        fill(self.sigmoid_shifts, 0.0, "sigmoid_shifts")))


# Paper presets (ALGORITHMS.md §2): τ and w_h per task; the rest are the shared defaults above.
PRESETS: dict[str, AlarmConfig] = {
    "long_form_qa": AlarmConfig(tau=0.6, w_h=5.0),
    "mt": AlarmConfig(tau=0.5, w_h=3.0),
}


def preset(name: str, **overrides) -> AlarmConfig:
    """A paper preset, optionally with fields replaced: ``preset("mt", mode="weighted_sum")``."""
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r}: unknown ALaRM preset; valid names: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


class AlarmOutput(NamedTuple):
    token_rewards: Array  # [B, T] rewards for the token-level policy-gradient losses
    total: Array  # [B] sequence-level sum of token_rewards
    metrics: dict  # (sum, count) pairs


@functools.partial(jax.jit, static_argnames="cfg")
def alarm_rewards(h_b, aspects: Sequence[AspectRewards], mask_bt,
                  cfg: AlarmConfig = AlarmConfig()) -> AlarmOutput:
    """Token rewards of the ALaRM combination (module docstring) for z-normalised holistic
    rewards ``h_b`` [B] and the aspects' raw rewards. Jitted with ``cfg`` static (one compile
    per config and shape); Python branches only on ``cfg`` and the number of aspects."""
    mask = jnp.asarray(mask_bt)
    m = mask.astype(bool)
    h = jnp.asarray(h_b, jnp.float32)
    combine = get_combiner(cfg.mode)
    if cfg.mode != "holistic_only" and not aspects:
        raise ConfigError(f"mode={cfg.mode!r} needs at least one aspect reward")
    last = jnp.full((h.shape[0], 1), -1, jnp.int32)
    hol_bt = place_rewards(cfg.w_h * h[:, None], last, mask)
    asp_bt = jnp.zeros(mask.shape, jnp.float32)
    metrics = {}
    for i, (a, (w, s, c)) in enumerate(zip(aspects, cfg.per_aspect(len(aspects)))):
        a_bt = place_aspect(a, mask, w, cfg.shape, s, c)
        asp_bt = asp_bt + a_bt
        metrics[f"alarm/aspect{i}"] = (a_bt.sum(), jnp.asarray(h.shape[0], jnp.float32))
    rewards = combine(hol_bt, asp_bt, h, cfg.tau)
    n_tok = m.sum(axis=1)
    short = n_tok <= cfg.short_len
    penalty = place_rewards(jnp.full_like(h, cfg.short_penalty * cfg.w_h)[:, None], last, mask)
    rewards = jnp.where(short[:, None], penalty, rewards)
    rewards = jnp.where(m, rewards, 0.0)
    count = jnp.asarray(h.shape[0], jnp.float32)
    metrics.update({
        "alarm/above_tau": (((h >= cfg.tau) & ~short).astype(jnp.float32).sum(), count),
        "alarm/short": (short.astype(jnp.float32).sum(), count),
        "alarm/holistic_z": (h.sum(), count),
        "alarm/reward": (rewards.sum(), count),
    })
    return AlarmOutput(rewards, rewards.sum(axis=1), metrics)
