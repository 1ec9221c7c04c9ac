"""RefAlign (arXiv 2504.09895): REINFORCE with a similarity reward to ONE reference answer.

One step = rollout (K on-policy samples per prompt, jitted KV-cache sampler) → rewards (named
components, e.g. `sim` = BERTScore F1 to the reference, `harmless` for the safety variant, each
with a weight) → advantages per component (mean baseline incl. the sample itself, optional clip
to [−ε, ε]) summed with their weights, A = A_sim + 4·A_harm → token-level REINFORCE update.
No reference model, critic or preference pairs (docs/methods.md, "RefAlign").

Each piece is a function: the rollout and the objective here, the reward composition in
`align_jax.rewards.compose`; `algorithms.online_loop` makes them a batch source for the one loop
(`align_jax.train.loop`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from align_jax.errors import ConfigError
from align_jax.losses.policy_gradient import advantages, reinforce_loss
from align_jax.losses.registry import list_losses
from align_jax.rewards.similarity import strip_for_scoring
from align_jax.sampling.sampler import SampleOutput, SamplingConfig, sample_texts
from align_jax.train.logprobs import rollout_logps, token_logps


@dataclasses.dataclass(frozen=True)
class RefAlignConfig:
    k: int = 2  # samples per prompt (the released runs use K=2)
    advantage: str = "mean"  # mean (RefAlign) | rloo | grpo | none
    adv_clip: float | None = None  # ε; [open] in the paper, off by default
    length_c: float | None = None  # length factor (1 + 1/(C+|y|))·S; None = off ([open] C)
    clip_ratio: float | None = None  # PPO-style ratio clip when a rollout is reused
    updates_per_rollout: int = 1  # optimizer updates per rollout (> 1: importance ratio)
    kl_coef: float = 0.0  # KL-to-initial penalty; off as in RefAlign (it is still MEASURED)
    chunk_size: int | None = None  # log-prob chunking over the sequence (big vocabularies)
    # per-component advantage method, "component:method" (e.g. "harmless:none"); others use
    # `advantage`. Why: with the mean-of-K baseline a prompt whose K samples all refuse gives no
    # signal, so "refuse everything" is never pushed back on benign prompts once it is learnt.
    component_advantage: tuple[str, ...] = ()

    def __post_init__(self):  # a typo fails when the config is built, not after the first eval
        component_advantage_methods(self.component_advantage)


@dataclasses.dataclass
class Rollout:
    out: SampleOutput  # rows = prompts repeated K times: [p0s0, p0s1, ..., p1s0, ...]
    texts: list[str]  # decoded responses, special tokens removed
    records: list[dict]  # the data record of each row (repeated K times)


def rollout(model, tokenizer, records: Sequence[dict], key, sampling: SamplingConfig, k: int,
            mesh=None, prompt_key: str = "prompt") -> Rollout:
    """K samples per record's prompt (chat template applied), decoded for scoring."""
    texts, out = sample_texts(model, tokenizer, [r[prompt_key] for r in records], key,
                              sampling.replace(n=k), mesh=mesh)
    texts = [strip_for_scoring(t, tokenizer.all_special_tokens) for t in texts]
    rows = [r for r in records for _ in range(k)]
    return Rollout(out=out, texts=texts, records=rows)


def component_advantage_methods(specs: Sequence[str]) -> dict[str, str]:
    """("harmless:none", …) -> {"harmless": "none"}; a malformed entry is a ConfigError."""
    out = {}
    valid = list_losses("advantage")
    for spec in specs:
        name, sep, method = str(spec).partition(":")
        if not sep or method not in valid:
            raise ConfigError(f"component_advantage entry {spec!r}: expected COMPONENT:METHOD "
                              f"with METHOD a registered advantage estimator {valid}")
        out[name] = method
    return out


def compute_advantages(components: Mapping[str, tuple[np.ndarray, float]], k: int,
                       cfg: RefAlignConfig) -> tuple[np.ndarray, dict[str, float]]:
    """Σ_c w_c · adv(R_c) per row, each component's advantage over its prompt's K samples."""
    total = None
    stats: dict[str, float] = {"reward/total": float(sum(w * np.mean(scores)  # Σ_c w_c · R_c
                                                         for scores, w in components.values()))}
    methods = component_advantage_methods(cfg.component_advantage)
    for name, (scores, w) in components.items():
        r_pk = jnp.asarray(scores, jnp.float32).reshape(-1, k)
        method = methods.get(name, cfg.advantage)
        a = np.asarray(advantages(r_pk, method, cfg.adv_clip)).reshape(-1)
        total = w * a if total is None else total + w * a
        stats[f"reward/{name}"] = float(np.mean(scores))
        stats[f"reward/{name}_std"] = float(np.std(scores))
        stats[f"adv/{name}_absmean"] = float(np.mean(np.abs(a)))
    assert total is not None, "reward function returned no components"
    stats["adv/absmean"] = float(np.mean(np.abs(total)))
    stats["adv/max"] = float(np.max(total))
    return total.astype(np.float32), stats


def train_batch(out: SampleOutput, adv_r: np.ndarray) -> dict[str, np.ndarray]:
    """Teacher-forcing batch over prompt+response: loss on response tokens only; the sampler's
    untempered log-probs become `old_logps` (shifted layout [R, T-1]) for ratio/KL terms."""
    p_ids, p_mask = np.asarray(out.prompt_ids), np.asarray(out.prompt_mask)
    toks, gmask = np.asarray(out.tokens), np.asarray(out.mask)
    R, P = p_ids.shape
    ids = np.concatenate([p_ids, toks], 1).astype(np.int32)
    attn = np.concatenate([p_mask, gmask], 1).astype(np.int32)
    loss_mask = np.concatenate([np.zeros_like(p_mask), gmask], 1).astype(np.int32)
    old = np.concatenate([np.zeros((R, P - 1), np.float32),
                          np.asarray(out.logprobs_raw, np.float32)], 1)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask,
            "adv": adv_r.astype(np.float32), "old_logps": old}


def make_loss_fn(cfg: RefAlignConfig):
    """loss_fn(model, batch, rng) for `align_jax.train.step.make_train_step`."""

    def loss_fn(model, batch, rng):
        del rng
        logp_bt, ent_bt, mask_bt = rollout_logps(model, batch, cfg.chunk_size)
        use_ratio = cfg.clip_ratio is not None or cfg.updates_per_rollout > 1
        loss, metrics = reinforce_loss(
            logp_bt, mask_bt, batch["adv"],
            old_logps_bt=batch["old_logps"] if use_ratio else None,
            clip_ratio=cfg.clip_ratio,
            ref_logps_bt=batch.get("init_logps"), kl_coef=cfg.kl_coef)
        n = jnp.sum(mask_bt)
        metrics = dict(metrics)
        metrics["entropy"] = (jnp.sum(ent_bt), n)
        return loss, metrics

    return loss_fn


@dataclasses.dataclass(frozen=True)
class ReinforceObjective:
    """RefAlign's update: Σ_c w_c·adv(R_c) broadcast over response tokens, REINFORCE loss.
    (The online loop takes any object with `make_loss_fn()` and `make_batch(rollout, comps)`.)"""

    cfg: RefAlignConfig

    def make_loss_fn(self):
        return make_loss_fn(self.cfg)

    def make_batch(self, ro: Rollout, components) -> tuple[dict, dict]:
        adv, stats = compute_advantages(components, self.cfg.k, self.cfg)
        return train_batch(ro.out, adv), stats


def make_init_logps_fn(bundle, chunk_size: int | None = None, mesh=None):
    """jitted (init_params, batch) -> (init_logps [R, T-1] on the rollout tokens, KL sum,
    #tokens). KL(π_θ‖π_init) is estimated as Σ (logp_θ − logp_init) with logp_θ = the sampler's
    untempered log-probs (unbiased on-policy). The log-probs also feed the KL penalty of the
    loss when `RefAlignConfig.kl_coef` > 0 (the batch's `init_logps`). Traced under the mesh
    (like the train step), so the model's activation sharding constraints apply: without them a
    pod replicated this pass (`python -m align_jax.aot` found it needing 143 GiB per v5p chip for
    Llama-3-8B at 512 rows)."""
    from align_jax.sharding import use_mesh

    @jax.jit
    def init_logps(init_params, batch):
        model = bundle.merge(init_params)
        with use_mesh(mesh):
            lp0 = token_logps(model, batch["input_ids"], batch["attention_mask"],
                              batch["loss_mask"], chunk_size=chunk_size)
        m = batch["loss_mask"][:, 1:]
        return lp0, jnp.sum((batch["old_logps"] - lp0) * m), jnp.sum(m)

    return init_logps


def rollout_stats(ro: Rollout, max_new_tokens: int) -> dict[str, float]:
    lens = np.asarray(ro.out.lengths)
    raw = np.asarray(ro.out.logprobs_raw)
    m = np.asarray(ro.out.mask)
    return {
        "len/mean": float(lens.mean()),
        "len/hit_max_frac": float(np.mean(~np.asarray(ro.out.stopped))),
        "len/words": float(np.mean([len(t.split()) for t in ro.texts])),
        "sample_nll": float(-(raw * m).sum() / max(m.sum(), 1)),
    }
