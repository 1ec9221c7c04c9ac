"""End-of-run artefacts: run directory naming, a PNG of the training curves, and a Markdown
before/after sample table."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

from align_jax.paths import resolve_dir


def make_run_dir(experiment: str, out_dir: str | None = None, root: str = "runs") -> Path:
    """`out_dir` when given (re-using it resumes), else a NEW runs/<experiment>-<timestamp>/
    (`-2`, `-3`, … when a run of the same experiment took that second's name: a sweep that starts
    several runs at once must not have the later ones resume, or stop at, the first one's lock);
    always returned absolute (see `align_jax.paths`), so checkpoints and exports below it are too.
    The directory's run lock is taken here, before anything is written into it, and held until
    the process exits (a second run on it stops at once: `align_jax.train.runlock`)."""
    from align_jax.train import runlock

    if out_dir:
        path = resolve_dir(out_dir)
        path.mkdir(parents=True, exist_ok=True)
    else:
        base = resolve_dir(Path(root) / f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}")
        base.parent.mkdir(parents=True, exist_ok=True)
        path, k = base, 1
        while True:
            try:
                path.mkdir()  # atomic: exactly one process creates each name
                break
            except FileExistsError:
                k += 1
                path = base.with_name(f"{base.name}-{k}")
    runlock.acquire(path)
    return path


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


# The panels of a run's curves. On-policy runs (they log reward/*): every reward, then these.
ONLINE_CURVE_KEYS = ("len/mean", "kl_to_init", "train/loss", "train/entropy")
# The offline preference loop (DPO family, KTO, RPO, listwise), in this order where logged.
PREFERENCE_CURVE_KEYS = ("train/loss", "train/rewards/accuracies", "train/rewards/margins",
                         "train/rewards/chosen", "train/rewards/rejected",
                         "train/rewards/top1_accuracy", "train/rpo/row_loss", "train/kl",
                         "train/grad_norm", "eval/rewards/accuracies")


def read_metrics(metrics_jsonl: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl (DataError naming file and line for a broken one)."""
    from align_jax.errors import DataError

    rows = []
    for i, line in enumerate(Path(metrics_jsonl).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{metrics_jsonl}:{i}: not a JSON line ({e})") from None
    return rows


def curve_keys(rows: Sequence[Mapping]) -> list[str]:
    seen = {k for r in rows for k in r}  # some metrics (KL) are logged every N steps only
    if any(k.startswith("reward/") for k in seen):
        keys = sorted(k for k in seen if k.startswith("reward/") and not k.endswith("_std"))
        return keys + [k for k in ONLINE_CURVE_KEYS if k in seen]
    return [k for k in PREFERENCE_CURVE_KEYS if k in seen]


def plot_curves(metrics_jsonl: str | Path, out_png: str | Path,
                keys: Sequence[str] | None = None, title: str = "") -> Path | None:
    """One panel per metric key (default: `curve_keys`) over steps."""
    rows = read_metrics(metrics_jsonl)
    if not rows:
        return None
    return plot_overlay({"": rows}, out_png, keys, title)


def plot_overlay(runs: Mapping[str, Sequence[Mapping]], out_png: str | Path,
                 keys: Sequence[str] | None = None, title: str = "") -> Path | None:
    """One panel per key, one colour per run; the legend names each line (the run's name, if not
    "", and whether it is the raw values or their moving average). Default keys: every run's
    `curve_keys`, in order of first appearance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if keys is None:
        keys = list(dict.fromkeys(k for rows in runs.values() for k in curve_keys(rows)))
    keys = [k for k in keys if any(k in r for rows in runs.values() for r in rows)]
    if not keys:
        return None
    n = len(keys)
    cols = min(3, n)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        for i, (name, rows) in enumerate(runs.items()):
            xs = [r["step"] for r in rows if k in r]
            ys = [r[k] for r in rows if k in r]
            if xs:
                _draw(ax, xs, ys, name, f"C{i}")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def _draw(ax, xs, ys, label: str, color: str) -> None:
    """The raw values (thin, faint) and, from 5 points on, their trailing moving average (thick),
    each named in the legend."""
    name = f"{label}: " if label else ""
    ax.plot(xs, ys, lw=1.2, alpha=0.5, color=color, label=f"{name}raw")
    if len(ys) >= 5:  # a moving average makes the trend readable at K=2 noise levels
        w = max(len(ys) // 8, 2)
        sm = [sum(ys[max(0, i - w + 1):i + 1]) / len(ys[max(0, i - w + 1):i + 1])
              for i in range(len(ys))]
        ax.plot(xs, sm, lw=2, color=color, label=f"{name}mean of last {w}")


def _cell(text: str, limit: int = 220) -> str:
    t = " ".join(str(text).split())
    t = t if len(t) <= limit else t[: limit - 1] + "…"
    return t.replace("|", "\\|")


def sample_table(prompts: Sequence[str], before: Sequence[str], after: Sequence[str],
                 extra_cols: Mapping[str, Sequence] | None = None,
                 references: Sequence[str] | None = None) -> str:
    """Markdown table: prompt | reference | before | after (| extra columns); the reference
    column reads "–" for rows without one (``references`` None: a method with no reference)."""
    extra_cols = dict(extra_cols or {})
    head = ["prompt", "reference", "before", "after", *extra_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, p in enumerate(prompts):
        ref = references[i] if references is not None and references[i] else "–"
        row = [_cell(p, 120), _cell(ref), _cell(before[i]), _cell(after[i])]
        row += [_cell(f"{v[i]:.3f}" if isinstance(v[i], float) else v[i]) for v in extra_cols.values()]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def fmt_value(v) -> str:
    """A metric as printed: counts as integers, a reason string (``undefined (one class)``) as
    is, a NaN without a reason as ``undefined``, anything else with 4 decimals."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and v != v):
        return "undefined"
    return f"{v:.4f}"


def fmt_metrics(m: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in m.items())


def summary_table(before: Mapping[str, float], after: Mapping[str, float]) -> str:
    """Markdown: metric | before | after (timing and token counts left out)."""
    lines = ["| metric | before | after |", "|---|---|---|"]
    for k in (k for k in before if not k.startswith(("time", "tokens/"))):
        now = fmt_value(after[k]) if k in after else "–"
        lines.append(f"| {k} | {fmt_value(before[k])} | {now} |")
    return "\n".join(lines) + "\n"


def progress_bar(total: int, start: int, name: str, enabled: bool = True):
    """tqdm bar for a training loop (process 0 only), or None when disabled."""
    import jax

    if not enabled or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True)


def seed_table(runs: Sequence[Mapping]) -> str:
    """Markdown: metric | before mean ± sd | after mean ± sd | after per seed, over runs
    [{"seed": s, "before": {...}, "after": {...}}] (sd = sample standard deviation, n − 1)."""
    import numpy as np

    def ms(vals):  # over the seeds where the metric is defined (a number, not NaN)
        v = np.asarray([x for x in vals if _defined(x)], np.float64)
        if not len(v):
            return "undefined"
        sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        n = "" if len(v) == len(vals) else f" ({len(v)} of {len(vals)} seeds)"
        return f"{v.mean():.3f} ± {sd:.3f}{n}"

    def one(x):
        return f"{x:.3f}" if _defined(x) else fmt_value(x)

    seeds = [r["seed"] for r in runs]
    head = ["metric", "before", "after"] + [f"after (seed {s})" for s in seeds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in runs[0]["after"]:
        b = [r["before"].get(k, float("nan")) for r in runs]
        a = [r["after"].get(k, float("nan")) for r in runs]
        lines.append("| " + " | ".join([k, ms(b), ms(a)] + [one(x) for x in a]) + " |")
    return "\n".join(lines) + "\n"


def _defined(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
