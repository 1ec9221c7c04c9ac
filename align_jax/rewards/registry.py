"""Name → reward-scorer registry, the sibling of ``align_jax.losses.registry``: a config says
``similarity="bertscore_f1"`` or ``harmless="refusal"`` and the experiment looks the scorer up here.

Families and what their scorers are called with:

* ``"similarity"`` – ``scorer(responses, references) -> scores [R]``   (similarity.py)
* ``"harmless"``   – ``scorer(prompts, responses, records) -> scores [R]`` (safety.py)

An entry is a FACTORY ``make(**options) -> scorer`` plus what it needs (``needs_encoder``: it
runs a text encoder, so it takes ``model=`` / ``num_layers=`` / ``mesh=``). A user's script
registers its own with ``@register_scorer("my_sim", "similarity")`` and uses it by name.
Unknown names fail with the registered ones.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from align_jax.errors import ConfigError

SCORER_FAMILIES = ("similarity", "harmless")


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
    name: str
    family: str
    make: Callable  # make(**options) -> scorer
    needs_encoder: bool = False


_SCORERS: dict[tuple[str, str], ScorerSpec] = {}


def _check_family(family: str) -> None:
    if family not in SCORER_FAMILIES:
        raise ValueError(f"unknown scorer family {family!r}; valid families: "
                         f"{list(SCORER_FAMILIES)}")


def register_scorer(name: str, family: str, *, needs_encoder: bool = False):
    """Decorator on a scorer factory; re-registering a name with another factory raises."""
    _check_family(family)

    def deco(make: Callable) -> Callable:
        old = _SCORERS.get((family, name))
        if old is not None and old.make is not make:
            raise ValueError(f"scorer {name!r} is already registered in family {family!r}")
        _SCORERS[(family, name)] = ScorerSpec(name, family, make, needs_encoder)
        return make

    return deco


def scorer_spec(name: str, family: str) -> ScorerSpec:
    _check_family(family)
    spec = _SCORERS.get((family, name))
    if spec is None:
        raise ConfigError(f"{family}={name!r}: unknown {family} scorer; registered: "
                          f"{list_scorers(family)}")
    return spec


def make_scorer(name: str, family: str, **options):
    """The scorer ``name`` of ``family`` built with ``options``."""
    return scorer_spec(name, family).make(**options)


def list_scorers(family: str) -> list[str]:
    _check_family(family)
    return sorted(n for (f, n) in _SCORERS if f == family)
