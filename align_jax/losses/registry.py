"""Name → loss-function registry, so a config can say ``loss="ipo"`` and the step looks it up.

Every family has ONE call signature (see the family's module):

* ``"pair"``            – ``fn(inp: PairLogps, cfg: PrefConfig) -> (losses_b, metrics)``   (preference.py)
* ``"unpaired"``        – ``fn(inp: UnpairedLogps, cfg: KTOConfig) -> (losses_b, metrics)``  (kto.py)
* ``"rpo"``             – ``fn(inp: RPOInputs, cfg: RPOConfig) -> (loss, metrics)``          (rpo.py)
* ``"listwise"``        – ``fn(inp: ListLogps, cfg: ListwiseConfig) -> (losses_b, metrics)`` (listwise.py)
* ``"policy_gradient"`` – ``fn(logps_bt, mask_bt, adv_b, **knobs) -> (loss, metrics)``   (policy_gradient.py)
* ``"advantage"``       – ``fn(rewards_bk, mask_bk) -> adv_bk`` (gradient stopped)         (policy_gradient.py)
* ``"token_pg"``        – ``fn(inp: TokenPGInputs, cfg: TokenPGConfig) -> (loss, metrics)`` (token_pg.py:
  PPO-clip, TRL's GRPO loss types, DAPO, GSPO — rewards and advantages per token)
* ``"token_advantage"`` – ``fn(inp: TokenRewards, cfg: AdvantageConfig) -> (adv_bt, metrics)`` (token_pg.py)
* ``"reward_model"``    – ``fn(inp: RewardPair, cfg: RewardLossConfig) -> (loss, metrics)``  (reward_model.py)

Each entry also says what it needs (:class:`LossSpec`): whether the step must supply reference
log-probs, and which data it trains on (``pairs`` / ``unpaired`` / ``ranked`` / ``rollouts``). The
step builders read these instead of keeping their own lists, so a loss registered in a user's
script, e.g. ::

    @register_loss("my_margin", "pair", needs_reference=False)
    def my_margin(inp: PairLogps, cfg: PrefConfig):
        ...

trains with ``PrefConfig(loss="my_margin")`` without editing anything here.

Names are unique within a family; a bare name (no family) resolves when only one family has it.
Registration happens at import time of the family modules; ``align_jax.losses`` imports all of
them, so ``from align_jax.losses import get_loss`` sees every built-in loss.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping

FAMILIES = ("pair", "unpaired", "rpo", "listwise", "policy_gradient", "advantage", "token_pg",
            "token_advantage", "reward_model")

# What a family trains on unless an entry says otherwise.
FAMILY_DATA = {"pair": "pairs", "unpaired": "unpaired", "rpo": "pairs", "listwise": "ranked",
               "policy_gradient": "rollouts", "advantage": "rollouts", "token_pg": "rollouts",
               "token_advantage": "rollouts", "reward_model": "pairs"}
DATA_KINDS = ("pairs", "unpaired", "ranked", "rollouts")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One registered loss: the function and what the step must give it."""

    name: str
    family: str
    fn: Callable
    needs_reference: bool = True  # reference log-probs (cache / frozen copy / adapters off)
    data: str = "pairs"  # pairs | unpaired | ranked | rollouts
    # family-specific extras, read by the family's own module (e.g. the pairwise member term)
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# (family, name) -> LossSpec
_REGISTRY: dict[tuple[str, str], LossSpec] = {}
# (family, short name) -> registered name, e.g. ("listwise", "lipo") -> "lipo_lambda"
_ALIASES: dict[tuple[str, str], str] = {}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown loss family {family!r}; valid families: {list(FAMILIES)}")


def register_loss(name: str, family: str, *, needs_reference: bool = True,
                  data: str | None = None, aliases: tuple[str, ...] = (),
                  **meta) -> Callable[[Callable], Callable]:
    """Decorator: ``@register_loss("ipo", "pair")``. ``needs_reference``: the loss reads reference
    log-probs; ``data``: what it trains on (default: the family's); ``aliases``: short names that
    resolve to this one (``lipo`` → ``lipo_lambda``); ``meta``: family extras.
    Re-registering a name with a different function raises, because silently replacing a loss
    would change what an existing config trains."""
    _check_family(family)
    data = FAMILY_DATA[family] if data is None else data
    if data not in DATA_KINDS:
        raise ValueError(f"loss {name!r}: data={data!r}; expected one of {list(DATA_KINDS)}")

    def deco(fn: Callable) -> Callable:
        old = _REGISTRY.get((family, name))
        if old is not None and old.fn is not fn:
            raise ValueError(f"loss {name!r} is already registered in family {family!r}")
        _REGISTRY[(family, name)] = LossSpec(name, family, fn, needs_reference, data,
                                             types.MappingProxyType(dict(meta)))
        _ALIASES.update({(family, a): name for a in aliases})
        return fn

    return deco


def loss_spec(name: str, family: str | None = None) -> LossSpec:
    """The :class:`LossSpec` of ``name`` (in ``family`` if given). Unknown names fail with the
    registered ones; a bare name shared by several families asks for the family."""
    if family is not None:
        _check_family(family)
        spec = _REGISTRY.get((family, _ALIASES.get((family, name), name)))
        if spec is None:
            raise ValueError(f"unknown loss {name!r} in family {family!r}; valid names: "
                             f"{list_losses(family)}")
        return spec
    hits = [s for (f, n), s in _REGISTRY.items() if _ALIASES.get((f, name), name) == n]
    if not hits:
        raise ValueError(f"unknown loss {name!r}; valid names: {list_losses()}")
    if len(hits) > 1:
        raise ValueError(f"loss {name!r} is registered in several families "
                         f"{sorted(s.family for s in hits)}: pass family=")
    return hits[0]


def get_loss(name: str, family: str | None = None) -> Callable:
    """The loss function registered under ``name``; ``family`` (optional) is checked if given."""
    return loss_spec(name, family).fn


def loss_family(name: str) -> str:
    """Family of a registered loss (to pick the right inputs in a generic step)."""
    return loss_spec(name).family


def list_losses(family: str | None = None) -> list[str]:
    """Sorted registered names, optionally restricted to one family."""
    if family is not None:
        _check_family(family)
    return sorted({n for (f, n) in _REGISTRY if family is None or f == family})


def registered() -> dict[str, list[str]]:
    """{family: sorted names} of every family (empty families included)."""
    return {f: list_losses(f) for f in FAMILIES}
