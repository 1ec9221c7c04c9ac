"""The data report of a run: what was loaded, skipped (malformed, with ``skip_bad_records``),
filtered (well-formed but unusable) and truncated (over-long prompts/responses), printed and
saved as ``<run_dir>/data_report.json``.

Why a process-level log: experiments load their data before the run directory exists, through
several helpers (bundled sets, ``load_splits``, per-experiment glue), and the training session
that owns the run directory is created much later. Every :func:`~align_jax.data.formats.
load_examples` call and every truncation count notes itself here; the training session writes
what was noted since the previous run (:func:`write`) and starts a new report.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

REPORT_NAME = "data_report.json"
_loads: list[dict] = []
_truncation: dict[str, dict] = {}


def note_load(source, fmt: str, examples: int, skipped: int, filtered: int,
              skipped_messages: list[str]) -> None:
    _loads.append({"source": os.fspath(source), "format": fmt, "examples": examples,
                   "skipped": skipped, "filtered": filtered,
                   "skipped_records": list(skipped_messages[:20])})


def note_truncation(role: str, counts: dict) -> None:
    """``counts`` from :func:`~align_jax.data.tokenize.count_truncated` for one split."""
    _truncation[role] = dict(counts)
    for what in ("prompts", "responses"):
        n = counts.get(f"{what}_truncated", 0)
        if n:
            logger.warning("%s: %d of %d %s longer than %d tokens were truncated", role, n,
                           counts[what], what, counts[f"max_{what[:-1]}_len"])


def summary() -> dict:
    return {"loads": list(_loads), "truncation": dict(_truncation)}


def format_line(rep: dict) -> str:
    parts = []
    for ld in rep["loads"]:
        parts.append(f"{Path(ld['source']).name}: {ld['examples']} examples, {ld['skipped']} "
                     f"skipped, {ld['filtered']} filtered")
    for role, c in rep["truncation"].items():
        parts.append(f"{role}: {c['prompts_truncated']}/{c['prompts']} prompts truncated to "
                     f"{c['max_prompt_len']} tokens, {c['responses_truncated']}/{c['responses']} "
                     f"responses to {c['max_response_len']}")
    return "; ".join(parts)


def write(run_dir) -> dict | None:
    """Save and print the report of what was noted since the last call; start a new one.
    Nothing noted (e.g. a resumed run in the same process) leaves an existing report as is."""
    rep = summary()
    _loads.clear()
    _truncation.clear()
    if not rep["loads"] and not rep["truncation"]:
        return None
    import jax  # lazy: this package stays importable without touching devices

    if jax.process_index() == 0:
        path = Path(run_dir) / REPORT_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rep, indent=1))
        os.replace(tmp, path)
        print(f"[align_jax] data: {format_line(rep)} ({path.name})")
    return rep
