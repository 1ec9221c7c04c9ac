"""Name → loss-function registry, so a config can say ``loss="ipo"`` and the step looks it up.

Every family has ONE call signature (see the family's module):

* ``"pair"``     – ``fn(inp: PairLogps, cfg: PrefConfig) -> (losses_b, metrics)``   (preference.py)
* ``"unpaired"`` – ``fn(inp: UnpairedLogps, cfg: KTOConfig) -> (losses_b, metrics)``  (kto.py)
* ``"rpo"``      – ``fn(inp: RPOInputs, cfg: RPOConfig) -> (loss, metrics)``          (rpo.py)
* ``"listwise"`` – ``fn(inp: ListLogps, cfg: ListwiseConfig) -> (losses_b, metrics)`` (listwise.py)
* ``"policy_gradient"`` – ``fn(inp: TokenPGInputs, cfg: TokenPGConfig) -> (loss, metrics)`` (token_pg.py)
* ``"advantage"`` – ``fn(inp: TokenRewards, cfg: AdvantageConfig) -> (adv_bt, metrics)`` (token_pg.py)
* ``"reward_model"`` – ``fn(inp: RewardPair, cfg: RewardLossConfig) -> (loss, metrics)`` (reward_model.py)

Registration happens at import time of those modules; ``align_jax.losses`` imports all of them, so
``from align_jax.losses import get_loss`` sees every built-in loss.
"""
from __future__ import annotations

from typing import Callable

FAMILIES = ("pair", "unpaired", "rpo", "listwise", "policy_gradient", "advantage", "reward_model")

# name -> (family, fn). Names are global across families so a bare name is unambiguous.
_REGISTRY: dict[str, tuple[str, Callable]] = {}


def register_loss(name: str, family: str) -> Callable[[Callable], Callable]:
    """Decorator: ``@register_loss("ipo", "pair")``. Re-registering a name with a different function
    raises, because silently replacing a loss would change what an existing config trains."""
    if family not in FAMILIES:
        raise ValueError(f"unknown loss family {family!r}; valid families: {list(FAMILIES)}")

    def deco(fn: Callable) -> Callable:
        old = _REGISTRY.get(name)
        if old is not None and old[1] is not fn:
            raise ValueError(f"loss {name!r} is already registered (family {old[0]!r})")
        _REGISTRY[name] = (family, fn)
        return fn

    return deco


def get_loss(name: str, family: str | None = None) -> Callable:
    """The loss function registered under ``name``; ``family`` (optional) is checked if given."""
    entry = _REGISTRY.get(name)
    if entry is None or (family is not None and entry[0] != family):
        raise ValueError(
            f"unknown loss {name!r}" + (f" in family {family!r}" if family else "")
            + f"; valid names: {list_losses(family)}"
        )
    return entry[1]


def loss_family(name: str) -> str:
    """Family of a registered loss (to pick the right inputs in a generic step)."""
    get_loss(name)  # uniform error message for unknown names
    return _REGISTRY[name][0]


def list_losses(family: str | None = None) -> list[str]:
    """Sorted registered names, optionally restricted to one family."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown loss family {family!r}; valid families: {list(FAMILIES)}")
    return sorted(n for n, (f, _) in _REGISTRY.items() if family is None or f == family)
