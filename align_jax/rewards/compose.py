"""Reward composition: a reward function maps the R rows of a rollout — (prompts, responses,
records) — to NAMED components ``{name: (scores [R], weight)}``. The online objectives take the
advantage of each component over its prompt's K samples and sum them with their weights
(RefAlign safety: A = A_sim + 4·A_harm; docs/methods.md). Components are built from registered
scorers (``align_jax.rewards.registry``); ALaRM's hierarchical combination sits beside
:func:`combine_rewards` as another way of putting components together.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from align_jax.losses.policy_gradient import length_factor
from align_jax.rewards.registry import scorer_spec
from align_jax.rewards.similarity import make_similarity

RewardFn = Callable[[Sequence, Sequence[str], Sequence[dict]], Mapping[str, tuple[np.ndarray, float]]]


def similarity_scorer(name: str, tokenizer, encoder: str | None = None,
                      num_layers: int | None = None, mesh=None):
    """The registered similarity S ``name``; the policy tokenizer's special tokens are stripped
    from what it scores. Encoder-based scorers get ``encoder`` / ``num_layers`` / ``mesh``."""
    kw = {"special_tokens": list(tokenizer.all_special_tokens)}
    if scorer_spec(name, "similarity").needs_encoder:
        kw.update(model=encoder, num_layers=num_layers, mesh=mesh)
    return make_similarity(name, **kw)


def component(name: str, scorer, weight: float = 1.0) -> RewardFn:
    """One named component from a ``scorer(prompts, responses, records) -> scores``."""

    def fn(prompts, responses, records):
        return {name: (np.asarray(scorer(prompts, responses, records), np.float32), weight)}

    return fn


def similarity_reward(similarity, reference_key: str = "reference", weight: float = 1.0,
                      length_c: float | None = None) -> RewardFn:
    """`sim` component: S(y, y*) to each record's reference; optional length factor
    (1 + 1/(C+|y|))·S."""

    def score(prompts, responses, records):
        s = np.asarray(similarity(list(responses), [r[reference_key] for r in records]),
                       np.float32)
        if length_c is not None:
            lens = np.array([len(y.split()) for y in responses], np.float32)
            s = np.asarray(length_factor(jnp.asarray(s), jnp.asarray(lens), length_c))
        return s

    return component("sim", score, weight)


def harmless_reward(scorer, weight: float = 4.0) -> RewardFn:
    """`harmless` component for the safety variant (weight 4.0 in the released runs)."""
    return component("harmless", scorer, weight)


def combine_rewards(*fns: RewardFn) -> RewardFn:
    """All components of ``fns`` side by side (each keeps its own weight)."""

    def fn(prompts, responses, records):
        out = {}
        for f in fns:
            out.update(f(prompts, responses, records))
        return out

    return fn
