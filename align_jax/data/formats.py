"""Format adapters (raw record → schema) and :func:`load_examples`, the one loading entry point.

Each adapter takes a decoded record (a dict) and returns one schema object, or ``None`` for a
record that is well-formed but intentionally not usable in this view (e.g. a PKU-SafeRLHF item
with no safe response, asked for as a prompt+reference): those are *filtered*, counted and
logged, never silently lost. A malformed record raises :class:`RecordError`; the loader turns it
into a :class:`DataError` naming the file and location, or counts and logs a skip.

Formats:
  ``prompt_reference``  {prompt, reference, unsafe?, ...meta}         → PromptReference
  ``qa``                {question, answer, ...}                         → PromptReference
  ``pairs``             {prompt, chosen, rejected} (TRL explicit-prompt; str or message lists)
  ``conversational``    {chosen: [msgs], rejected: [msgs]} prompt = shared leading messages
                        (UltraFeedback-binarized; alias ``ultrafeedback``)  → PreferencePair
  ``hh``                Anthropic HH transcripts "\\n\\nHuman: … \\n\\nAssistant: …"  → PreferencePair
  ``pku_better`` / ``pku_safer``  PKU-SafeRLHF pair by better / safer id  → PreferencePair
  ``pku_reference``     PKU-SafeRLHF: safe response = reference, unsafe one = ``unsafe``
  ``ranked``            {prompt, responses[], scores[]}                 → RankedList
  ``unpaired``          {prompt, completion, label: bool} (alias ``kto``) → UnpairedExample
  ``auto``              detect from the first record's fields.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from align_jax.data import load_report
from align_jax.data.readers import iter_records
from align_jax.data.schemas import (
    DataError,
    PreferencePair,
    PromptReference,
    RankedList,
    RecordError,
    UnpairedExample,
)
from align_jax.errors import ConfigError

logger = logging.getLogger(__name__)

HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"


# ---------------------------------------------------------------- field validation helpers
def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _field(rec: dict, name: str) -> Any:
    if name not in rec:
        raise RecordError(f"missing field {name!r}")
    return rec[name]


def _text(rec: dict, name: str) -> str:
    value = _field(rec, name)
    if not isinstance(value, str):
        raise RecordError(f"field {name!r}: expected str, got {_type(value)}")
    return value


def _nonempty(text: str, name: str) -> str:
    """THE rule for responses in every format (chosen, rejected, reference, answer, completion,
    ranked responses, PKU responses): empty or blank is a bad record (an error naming file, line
    and field, or a counted skip with ``skip_bad_records``), never a silent zero-length target."""
    if not text.strip():
        raise RecordError(f"field {name!r}: expected a non-empty response, got {text!r}")
    return text


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            raise RecordError(
                f"field {name!r}: message {i}: expected {{'role': str, 'content': str}}, "
                f"got {m!r:.80}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt(rec: dict, name: str = "prompt") -> str | list[dict[str, str]]:
    value = _field(rec, name)
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(f"field {name!r}: expected a non-empty prompt")
        return value
    if isinstance(value, list) and value:
        return _messages(value, name)
    raise RecordError(f"field {name!r}: expected str or list of messages, got {_type(value)}"
                      + (" (empty)" if value == [] else ""))


def _response(rec: dict, name: str) -> str:
    """A response: a string, or (TRL conversational explicit-prompt form) assistant messages."""
    value = _field(rec, name)
    if isinstance(value, str):
        return _nonempty(value, name)
    if isinstance(value, list) and value:
        msgs = _messages(value, name)
        if any(m["role"] != "assistant" for m in msgs):
            raise RecordError(f"field {name!r}: expected only assistant messages after the prompt")
        return _nonempty("".join(m["content"] for m in msgs), name)
    raise RecordError(f"field {name!r}: expected str or list of messages, got {_type(value)}")


def _bool(rec: dict, name: str) -> bool:
    value = _field(rec, name)
    if not isinstance(value, bool):
        raise RecordError(f"field {name!r}: expected bool, got {_type(value)}")
    return value


def _choice_id(rec: dict, name: str) -> int:
    value = _field(rec, name)
    if isinstance(value, bool) or value not in (0, 1):
        raise RecordError(f"field {name!r}: expected 0 or 1, got {value!r}")
    return int(value)


def _meta(rec: dict, used: tuple[str, ...]) -> dict:
    return {k: v for k, v in rec.items() if k not in used}


# ---------------------------------------------------------------- adapters
def adapt_prompt_reference(rec: dict) -> PromptReference:
    unsafe = rec.get("unsafe")
    if unsafe is not None and not isinstance(unsafe, str):
        raise RecordError(f"field 'unsafe': expected str or null, got {_type(unsafe)}")
    return PromptReference(
        prompt=_prompt(rec),
        reference=_nonempty(_text(rec, "reference"), "reference"),
        unsafe=unsafe,
        meta=_meta(rec, ("prompt", "reference", "unsafe")),
    )


def adapt_qa(rec: dict) -> PromptReference:
    return PromptReference(
        prompt=_prompt(rec, "question"),
        reference=_nonempty(_text(rec, "answer"), "answer"),
        meta=_meta(rec, ("question", "answer")),
    )


def adapt_pairs(rec: dict) -> PreferencePair:
    if "prompt" not in rec and isinstance(rec.get("chosen"), list):
        return adapt_conversational(rec)  # TRL's implicit-prompt conversational form
    return PreferencePair(
        prompt=_prompt(rec),
        chosen=_response(rec, "chosen"),
        rejected=_response(rec, "rejected"),
        meta=_meta(rec, ("prompt", "chosen", "rejected")),
    )


def adapt_conversational(rec: dict) -> PreferencePair:
    """UltraFeedback-binarized style: full conversations; the prompt is everything but the last
    (assistant) message, and it must be the same in ``chosen`` and ``rejected``."""
    convs = {}
    for name in ("chosen", "rejected"):
        value = _field(rec, name)
        if not isinstance(value, list) or len(value) < 2:
            raise RecordError(
                f"field {name!r}: expected a list of >= 2 messages (prompt + reply), got "
                + (f"{len(value)} message(s)" if isinstance(value, list) else _type(value))
            )
        msgs = _messages(value, name)
        if msgs[-1]["role"] != "assistant":
            raise RecordError(f"field {name!r}: expected the last message to be the assistant's, "
                              f"got role {msgs[-1]['role']!r}")
        convs[name] = msgs
    if convs["chosen"][:-1] != convs["rejected"][:-1]:
        raise RecordError("fields 'chosen' and 'rejected': expected the same prompt messages "
                          "before the final assistant reply")
    return PreferencePair(
        prompt=convs["chosen"][:-1],
        chosen=_nonempty(convs["chosen"][-1]["content"], "chosen"),
        rejected=_nonempty(convs["rejected"][-1]["content"], "rejected"),
        meta=_meta(rec, ("prompt", "chosen", "rejected", "messages")),
    )


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """"\\n\\nHuman: a\\n\\nAssistant: b…" → [{"role": "user", …}, {"role": "assistant", …}, …]."""
    markers = {HH_HUMAN: "user", HH_ASSISTANT: "assistant"}
    messages: list[dict[str, str]] = []
    pos = 0
    while True:
        hits = [(text.find(m, pos), m) for m in markers]
        hits = [(i, m) for i, m in hits if i >= 0]
        if not hits:
            break
        start, marker = min(hits)
        if not messages and text[:start].strip():
            raise RecordError("expected the transcript to start with '\\n\\nHuman:'")
        if messages:
            messages[-1]["content"] = text[pos:start].strip()
        messages.append({"role": markers[marker], "content": ""})
        pos = start + len(marker)
    if not messages:
        raise RecordError("expected an HH transcript with '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    messages[-1]["content"] = text[pos:].strip()
    return messages


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH transcripts into (shared prompt ending in "\\n\\nAssistant:", chosen reply,
    rejected reply), cutting at the LAST Assistant turn of ``chosen``."""
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        raise RecordError("field 'chosen': expected an '\\n\\nAssistant:' turn")
    prompt = chosen[: cut + len(HH_ASSISTANT)]
    if not rejected.startswith(prompt):
        raise RecordError("fields 'chosen' and 'rejected': expected the same transcript up to "
                          "the last '\\n\\nAssistant:' turn")
    # The replies follow "Assistant:" after one space; strip only that separator.
    return prompt, chosen[len(prompt):].lstrip(" "), rejected[len(prompt):].lstrip(" ")


def adapt_hh(rec: dict) -> PreferencePair:
    prompt, chosen, rejected = split_hh_pair(_text(rec, "chosen"), _text(rec, "rejected"))
    # The prompt becomes chat messages so the policy's own chat template renders it.
    return PreferencePair(
        prompt=parse_hh_transcript(prompt)[:-1],
        chosen=_nonempty(chosen, "chosen"),
        rejected=_nonempty(rejected, "rejected"),
        meta={**_meta(rec, ("chosen", "rejected")), "hh_prompt": prompt},
    )


def _pku_common(rec: dict) -> tuple[str, list[str]]:
    return _prompt(rec), [_nonempty(_text(rec, f"response_{i}"), f"response_{i}") for i in (0, 1)]


def _pku_meta(rec: dict) -> dict:
    return _meta(rec, ("prompt", "response_0", "response_1"))


def adapt_pku_better(rec: dict) -> PreferencePair:
    prompt, responses = _pku_common(rec)
    best = _choice_id(rec, "better_response_id")
    return PreferencePair(prompt, responses[best], responses[1 - best], _pku_meta(rec))


def adapt_pku_safer(rec: dict) -> PreferencePair:
    prompt, responses = _pku_common(rec)
    safer = _choice_id(rec, "safer_response_id")
    return PreferencePair(prompt, responses[safer], responses[1 - safer], _pku_meta(rec))


def adapt_pku_reference(rec: dict) -> PromptReference | None:
    """Safe response → reference, unsafe one → ``unsafe``. Both safe: the safer is the reference
    and ``unsafe`` is None. Neither safe: no usable reference → filtered (returns None)."""
    prompt, responses = _pku_common(rec)
    safe = [_bool(rec, "is_response_0_safe"), _bool(rec, "is_response_1_safe")]
    if not any(safe):
        return None
    if all(safe):
        ref, unsafe = responses[_choice_id(rec, "safer_response_id")], None
    else:
        ref, unsafe = responses[safe.index(True)], responses[safe.index(False)]
    return PromptReference(prompt, ref, unsafe, _pku_meta(rec))


def adapt_ranked(rec: dict) -> RankedList:
    responses, scores = _field(rec, "responses"), _field(rec, "scores")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise RecordError(f"field 'responses': expected a list of str, got {_type(responses)}")
    if not isinstance(scores, list) or not all(
        isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores
    ):
        raise RecordError(f"field 'scores': expected a list of numbers, got {scores!r:.80}")
    if len(responses) != len(scores):
        raise RecordError(f"fields 'responses' and 'scores': expected equal lengths, "
                          f"got {len(responses)} and {len(scores)}")
    if len(responses) < 2:
        raise RecordError(f"field 'responses': expected at least 2 responses, got {len(responses)}")
    for i, r in enumerate(responses):
        _nonempty(r, f"responses[{i}]")
    return RankedList(_prompt(rec), list(responses), [float(s) for s in scores],
                      _meta(rec, ("prompt", "responses", "scores")))


def adapt_unpaired(rec: dict) -> UnpairedExample:
    return UnpairedExample(_prompt(rec), _nonempty(_text(rec, "completion"), "completion"),
                           _bool(rec, "label"),
                           _meta(rec, ("prompt", "completion", "label")))


ADAPTERS: dict[str, Callable[[dict], Any]] = {
    "prompt_reference": adapt_prompt_reference,
    "qa": adapt_qa,
    "pairs": adapt_pairs,
    "conversational": adapt_conversational,
    "ultrafeedback": adapt_conversational,
    "hh": adapt_hh,
    "pku_better": adapt_pku_better,
    "pku_safer": adapt_pku_safer,
    "pku_reference": adapt_pku_reference,
    "ranked": adapt_ranked,
    "unpaired": adapt_unpaired,
    "kto": adapt_unpaired,
}


def detect_format(rec: dict) -> str:
    """Guess the format from one record's fields (used by ``format="auto"``)."""
    keys = set(rec)
    if {"response_0", "response_1"} <= keys:
        return "pku_better"
    if {"responses", "scores"} <= keys:
        return "ranked"
    if {"completion", "label"} <= keys:
        return "unpaired"
    if "reference" in keys:
        return "prompt_reference"
    if {"question", "answer"} <= keys:
        return "qa"
    if {"chosen", "rejected"} <= keys:
        chosen = rec["chosen"]
        if "prompt" not in keys and isinstance(chosen, str) and HH_ASSISTANT in chosen:
            return "hh"
        if "prompt" not in keys and isinstance(chosen, list):
            return "conversational"
        return "pairs"
    raise RecordError(f"cannot detect the format from fields {sorted(keys)}; pass format=")


# ---------------------------------------------------------------- loading
@dataclass
class LoadResult:
    """Examples plus an account of everything not returned (skipped = malformed, filtered =
    well-formed but unusable in the requested view). Iterable / indexable like a list."""

    examples: list
    num_skipped: int = 0
    num_filtered: int = 0
    skipped: list[str] = field(default_factory=list)  # the first messages, for reports
    format: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator:
        return iter(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


_MAX_KEPT_MESSAGES = 100


def load_examples(
    source: str | os.PathLike,
    format: str = "auto",
    *,
    split: str | None = None,
    data_dir: str | None = None,
    field_map: dict[str, str] | None = None,
    skip_bad_records: bool = False,
    limit: int | None = None,
) -> LoadResult:
    """Read ``source`` (see :func:`readers.iter_records`) as ``format`` (see module docstring).

    ``field_map`` renames source fields before adapting, e.g. ``{"question": "prompt"}``.
    A malformed record raises :class:`DataError` (file, location, what was expected) unless
    ``skip_bad_records`` is set, in which case it is logged and counted in ``num_skipped``.
    """
    if format != "auto" and format not in ADAPTERS:
        raise ConfigError(f"data_format={format!r}: unknown format; expected 'auto' or one of "
                          f"{sorted(ADAPTERS)}")
    adapter = None if format == "auto" else ADAPTERS[format]
    result = LoadResult(examples=[], format=format)
    for raw in iter_records(source, split=split, data_dir=data_dir):
        if limit is not None and len(result.examples) >= limit:
            break
        try:
            if raw.error is not None:
                raise RecordError(raw.error)
            rec = raw.data
            if not isinstance(rec, dict):
                raise RecordError(f"expected a record object, got {_type(rec)}")
            if field_map:
                rec = {field_map.get(k, k): v for k, v in rec.items()}
            if adapter is None:  # the first good record decides the format for the whole source
                result.format = detect_format(rec)
                adapter = ADAPTERS[result.format]
                logger.info("%s: detected format %r", source, result.format)
            example = adapter(rec)
        except RecordError as e:
            err = DataError(str(e), source=raw.source, location=raw.location)
            if not skip_bad_records:
                raise DataError(f"{e} (skip_bad_records=true skips and counts bad records)",
                                source=raw.source, location=raw.location) from None
            result.num_skipped += 1
            if len(result.skipped) < _MAX_KEPT_MESSAGES:
                result.skipped.append(str(err))
            logger.warning("skipping bad record: %s", err)
            continue
        if example is None:
            result.num_filtered += 1
            continue
        result.examples.append(example)
    load_report.note_load(source, result.format, len(result.examples), result.num_skipped,
                          result.num_filtered, result.skipped)
    if result.num_skipped or result.num_filtered:
        logger.warning("%s: loaded %d examples, skipped %d malformed, filtered %d unusable (%s)",
                       source, len(result.examples), result.num_skipped, result.num_filtered,
                       result.format)
    return result


# ---------------------------------------------------------------- dataset-level conversions
def pairs_to_unpaired(pairs: list[PreferencePair]) -> list[UnpairedExample]:
    """Each pair → (prompt, chosen, True) and (prompt, rejected, False), interleaved, so a KTO
    batch drawn in order sees both labels."""
    out = []
    for p in pairs:
        out.append(UnpairedExample(p.prompt, p.chosen, True, dict(p.meta)))
        out.append(UnpairedExample(p.prompt, p.rejected, False, dict(p.meta)))
    return out


def pairs_to_references(pairs: list[PreferencePair]) -> list[PromptReference]:
    """Chosen response as the reference (RefAlign on preference data). The rejected response is
    kept in ``meta["rejected"]``, not in ``unsafe``: worse is not necessarily harmful."""
    return [PromptReference(p.prompt, p.chosen, None, {**p.meta, "rejected": p.rejected})
            for p in pairs]


def ranked_to_pairs(items: list[RankedList]) -> list[PreferencePair]:
    """Best-scored vs worst-scored response of each list (ties broken by first occurrence).
    A list whose scores are all equal, or whose best and worst responses are the same text, has
    no preference and yields no pair (logged)."""
    out = []
    for r in items:
        best = max(range(len(r.scores)), key=lambda i: r.scores[i])
        worst = min(range(len(r.scores)), key=lambda i: r.scores[i])
        if r.scores[best] > r.scores[worst] and r.responses[best] != r.responses[worst]:
            out.append(PreferencePair(r.prompt, r.responses[best], r.responses[worst],
                                      dict(r.meta)))
    if len(out) < len(items):
        logger.warning("ranked_to_pairs: %d of %d lists have all-equal scores (or the same best "
                       "and worst text) and give no pair", len(items) - len(out), len(items))
    return out
