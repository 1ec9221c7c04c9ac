"""`python -m align_jax.report`: one run → curves.png + report.md; several → one overlaid PNG and a
table of final metrics. Tiny hand-written run directories in the three layouts the experiments
write (safety: eval_*.json with "metrics"; preference: flat eval_*.json; general: eval.json)."""
import json
import struct
import subprocess
import sys

import matplotlib.figure
import pytest

from align_jax import report as cli_report
from align_jax.errors import DataError
from align_jax.train.report import curve_keys, read_metrics

ROWS_A = [
    {"step": 1, "reward/sim": 0.1, "reward/sim_std": 0.01, "len/mean": 10.0, "kl_to_init": 0.0,
     "train/loss": 1.0},
    {"step": 2, "reward/sim": 0.2, "reward/sim_std": 0.01, "len/mean": 12.0, "train/loss": 0.8},
    {"step": 3, "reward/sim": 0.3, "reward/sim_std": 0.02, "len/mean": 11.0, "kl_to_init": 0.05,
     "train/loss": 0.5},
]
ROWS_B = [
    {"step": 1, "train/loss": 0.69, "train/rewards/accuracies": 0.5, "train/grad_norm": 3.0,
     "time/step_s": 1.0},
    {"step": 2, "train/loss": 0.60, "train/rewards/accuracies": 1.0, "train/grad_norm": 2.0},
]
ROWS_C = [{"step": 1, "reward/sim": 0.5, "len/mean": 4.0}]


def _write(d, rows, files):
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, obj in files.items():
        (d / name).write_text(json.dumps(obj))
    return d


@pytest.fixture
def runs(tmp_path):
    a = _write(tmp_path / "A", ROWS_A, {
        "eval_before.json": {"metrics": {"sim_mean": 0.30, "refusal_rate": 0.5}, "answers": ["a"]},
        "eval_after.json": {"metrics": {"sim_mean": 0.35, "refusal_rate": 0.25}, "answers": ["b"]},
        "config.json": {"steps": 3, "lr": 0.0004, "model": None}})
    b = _write(tmp_path / "B", ROWS_B, {
        "eval_before.json": {"loss": 0.6931, "rewards/accuracies": 0.0, "examples": 2.0},
        "eval_after.json": {"loss": 0.65, "rewards/accuracies": 1.0, "examples": 2.0}})
    c = _write(tmp_path / "C", ROWS_C, {"eval.json": {"before": {"sim_mean": 0.2},
                                                      "after": {"sim_mean": 0.25}}})
    return a, b, c


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


@pytest.fixture
def drawn(monkeypatch):
    """{panel title: sorted labels of its lines} of every figure saved."""
    panels = {}
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **kw):
        for ax in fig.axes:
            if ax.get_title():
                panels[ax.get_title()] = sorted(ln.get_label() for ln in ax.lines
                                                if not ln.get_label().startswith("_"))
        return save(fig, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return panels


def test_curve_keys_per_loop():
    assert curve_keys(ROWS_A) == ["reward/sim", "len/mean", "kl_to_init", "train/loss"]
    assert curve_keys(ROWS_B) == ["train/loss", "train/rewards/accuracies", "train/grad_norm"]
    assert curve_keys(ROWS_C) == ["reward/sim", "len/mean"]


def test_one_run_redraws_curves_and_writes_summary(runs, drawn):
    a = runs[0]
    written = cli_report.main([str(a)])
    assert written == {"md": a / "report.md", "png": a / "curves.png"}
    assert (a / "report.md").read_text() == f"""# A

Run directory: `{a}` · 3 logged steps (last step 3)

## Held-out metrics

| metric | before | after |
|---|---|---|
| sim_mean | 0.3000 | 0.3500 |
| refusal_rate | 0.5000 | 0.2500 |

## Training curves

| metric | first | last |
|---|---|---|
| reward/sim | 0.1000 | 0.3000 |
| len/mean | 10.0000 | 11.0000 |
| kl_to_init | 0.0000 | 0.0500 |
| train/loss | 1.0000 | 0.5000 |

![curves](curves.png)

## Config

| key | value |
|---|---|
| steps | 3 |
| lr | 0.0004 |
| model | null |
"""
    # four panels: 3 columns x 2 rows of 4.2 x 3.0 inches at 110 dpi; one unlabelled run each
    assert _png_size(a / "curves.png") == (1386, 660)
    # one run: the legend names the raw line (< 5 points: no moving average yet)
    assert drawn == {"reward/sim": ["raw"], "len/mean": ["raw"], "kl_to_init": ["raw"],
                     "train/loss": ["raw"]}


def test_several_runs_overlay_and_table(runs, tmp_path, drawn):
    out = tmp_path / "cmp" / "x"
    written = cli_report.main([*map(str, runs), f"out={out}"])
    assert written == {"md": out.with_name("x.md"), "png": out.with_name("x.png")}
    assert written["md"].read_text() == """# 3 runs compared

| metric | A | B | C |
|---|---|---|---|
| sim_mean (held-out, after) | 0.3500 | – | 0.2500 |
| refusal_rate (held-out, after) | 0.2500 | – | – |
| loss (held-out, after) | – | 0.6500 | – |
| rewards/accuracies (held-out, after) | – | 1.0000 | – |
| examples (held-out, after) | – | 2.0000 | – |
| reward/sim (last) | 0.3000 | – | 0.5000 |
| len/mean (last) | 11.0000 | – | 4.0000 |
| kl_to_init (last) | 0.0500 | – | – |
| train/loss (last) | 0.5000 | 0.6000 | – |
| train/rewards/accuracies (last) | – | 1.0000 | – |
| train/grad_norm (last) | – | 2.0000 | – |
| steps | 3 | 2 | 1 |

![curves](x.png)
"""
    assert drawn == {"reward/sim": ["A: raw", "C: raw"], "len/mean": ["A: raw", "C: raw"],
                     "kl_to_init": ["A: raw"], "train/loss": ["A: raw", "B: raw"],
                     "train/rewards/accuracies": ["B: raw"], "train/grad_norm": ["B: raw"]}
    assert _png_size(written["png"]) == (1386, 660)  # six panels: 3 x 2
    assert not any((r / "report.md").exists() for r in runs)  # comparing leaves the runs as is


def test_several_runs_default_to_the_working_directory(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = cli_report.main([str(runs[0]), str(runs[1])])
    assert {k: p.resolve() for k, p in written.items()} == {
        "md": tmp_path / "report.md", "png": tmp_path / "report.png"}
    assert "| metric | A | B |\n" in (tmp_path / "report.md").read_text()


def test_broken_metrics_line_names_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not a JSON line"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_module_entry_point_reports_a_non_run_dir_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "align_jax.report", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr == f"error: {tmp_path}: no metrics.jsonl (not a run directory?)\n"
