"""python -m align_jax.report RUN_DIR [RUN_DIR ...] [out=PATH]

One run directory: redraws RUN_DIR/curves.png from its metrics.jsonl and writes RUN_DIR/report.md
(held-out metrics before / after, first and last value of every curve, the run's config).
Several: one PNG overlaying their curves (legend = run directory name) and a Markdown table of
their final metrics (held-out after training, last logged training values), written to
PATH.png / PATH.md (default: ./report.png and ./report.md) — for comparing methods or seeds.

Reads what every experiment writes: metrics.jsonl, config.json, and eval_before.json /
eval_after.json (flat, or {"metrics": ...}) or eval.json ({"before": ..., "after": ...}).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from align_jax.errors import DataError, UserError
from align_jax.train import report


@dataclasses.dataclass
class Run:
    path: Path
    rows: list[dict]  # metrics.jsonl
    before: dict[str, float]  # held-out metrics of the initial policy ({} when not evaluated)
    after: dict[str, float]
    config: dict

    @property
    def name(self) -> str:
        return self.path.name


def load_run(path: str | Path) -> Run:
    path = Path(path).resolve()
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{path}: no metrics.jsonl (not a run directory?)")
    before, after = load_evals(path)
    cfg = path / "config.json"
    return Run(path, report.read_metrics(metrics), before, after,
               _read_json(cfg) if cfg.is_file() else {})


def load_evals(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(before, after) held-out metrics, numbers only, from either layout the experiments write."""
    if (run_dir / "eval.json").is_file():
        both = _read_json(run_dir / "eval.json")
        return _numbers(both.get("before", {})), _numbers(both.get("after", {}))
    out = []
    for name in ("eval_before.json", "eval_after.json"):
        d = _read_json(run_dir / name) if (run_dir / name).is_file() else {}
        out.append(_numbers(d.get("metrics", d)))  # safety runs keep the answers beside them
    return out[0], out[1]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _num(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _series(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if key in r]


def run_report(run: Run) -> str:
    """Markdown summary of one run (the curves image sits beside it as curves.png)."""
    steps = [r["step"] for r in run.rows if "step" in r]
    lines = [f"# {run.name}", "", f"Run directory: `{run.path}` · {len(run.rows)} logged steps"
             + (f" (last step {max(steps)})" if steps else ""), ""]
    if run.before or run.after:
        lines += ["## Held-out metrics", "", report.summary_table(run.before, run.after)]
    keys = report.curve_keys(run.rows)
    if keys:
        lines += ["## Training curves", "", "| metric | first | last |", "|---|---|---|"]
        lines += [f"| {k} | {_num(_series(run.rows, k)[0])} | {_num(_series(run.rows, k)[-1])} |"
                  for k in keys]
        lines += ["", "![curves](curves.png)", ""]
    if run.config:
        lines += ["## Config", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v)} |" for k, v in run.config.items()]
        lines.append("")
    return "\n".join(lines)


def compare_table(runs: list[Run]) -> str:
    """Markdown: one row per metric (held-out after training, then last logged training value),
    one column per run."""
    names = _names(runs)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(runs)]
    held = list(dict.fromkeys(k for r in runs for k in r.after))
    for k in held:
        lines.append(f"| {k} (held-out, after) | "
                     + " | ".join(_num(r.after.get(k)) for r in runs) + " |")
    curves = list(dict.fromkeys(k for r in runs for k in report.curve_keys(r.rows)))
    for k in curves:
        last = [(_series(r.rows, k) or [None])[-1] for r in runs]
        lines.append(f"| {k} (last) | " + " | ".join(_num(v) for v in last) + " |")
    steps = [max((row.get("step", 0) for row in r.rows), default=0) for r in runs]
    lines.append("| steps | " + " | ".join(str(s) for s in steps) + " |")
    return "\n".join(lines) + "\n"


def _names(runs: list[Run]) -> list[str]:
    names = [r.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]


def main(argv: list[str]) -> dict[str, Path]:
    """-> the files written."""
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return {}
    out = Path("report")
    dirs = []
    for a in argv:
        if a.startswith("out="):
            out = Path(a[4:])
        elif "=" in a:
            raise UserError(f"argument {a!r}: the only key is out=PATH")
        else:
            dirs.append(a)
    if not dirs:
        raise UserError("no run directory given: python -m align_jax.report RUN_DIR [...]")
    runs = [load_run(d) for d in dirs]
    if len(runs) == 1:
        run = runs[0]
        written = {"md": run.path / "report.md"}
        png = report.plot_overlay({"": run.rows}, run.path / "curves.png", title=run.name)
        written["md"].write_text(run_report(run))
    else:
        stem = out.with_suffix("") if out.suffix in (".png", ".md") else out
        stem.parent.mkdir(parents=True, exist_ok=True)
        written = {"md": stem.with_name(stem.name + ".md")}
        png = report.plot_overlay({n: r.rows for n, r in zip(_names(runs), runs)},
                                  stem.with_name(stem.name + ".png"))
        written["md"].write_text(
            f"# {len(runs)} runs compared\n\n" + compare_table(runs)
            + (f"\n![curves]({png.name})\n" if png else ""))
    if png:
        written["png"] = png
    for p in written.values():
        print(f"[align_jax] wrote {p}")
    return written


if __name__ == "__main__":
    from align_jax.cli import run_main

    run_main(main)
