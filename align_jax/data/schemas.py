"""Dataset schemas (one dataclass per kind of alignment data); the data error type is
:class:`align_jax.errors.DataError` (re-exported here).

A prompt is either a plain string or a list of chat messages ``{"role": str, "content": str}``
(the form chat templates take). Responses are always plain strings: the assistant's reply.
Examples are frozen so a loader can hand the same object to several consumers safely.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from align_jax.errors import DataError  # noqa: F401  (re-exported: the data layer's error type)

Message = dict[str, str]
Prompt = Union[str, list[Message]]


class RecordError(Exception):
    """Raised by format adapters for one bad record; the loader adds file + location."""


@dataclass(frozen=True)
class PromptReference:
    """A prompt with one high-quality reference answer (RefAlign, SFT, confidence QA).

    ``unsafe`` optionally holds a known-bad (harmful) response to the same prompt, used by the
    safety variant as a contrast; ``meta`` keeps any other fields of the source record.
    """

    prompt: Prompt
    reference: str
    unsafe: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreferencePair:
    """One prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response."""

    prompt: Prompt
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RankedList:
    """One prompt with K responses and a score each (higher = better); K may vary by prompt."""

    prompt: Prompt
    responses: list[str]
    scores: list[float]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UnpairedExample:
    """One prompt + completion labelled desirable (True) or undesirable (False), as in KTO."""

    prompt: Prompt
    completion: str
    label: bool
    meta: dict[str, Any] = field(default_factory=dict)


def prompt_text(prompt: Prompt) -> str:
    """The last user turn of a prompt (or the prompt itself): a readable key for logs/tables."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return message["content"]
    return prompt[-1]["content"] if prompt else ""


def as_record(ex) -> dict:
    """Schema object or dict -> flat dict with its fields + meta fields (what reward functions
    and the online methods read: ``prompt``, ``reference``, ``category``, ...)."""
    if isinstance(ex, dict):
        return ex
    d = {k: v for k, v in vars(ex).items() if k != "meta"}
    d.update(getattr(ex, "meta", {}) or {})
    return d
