"""python experiments/ap_select.py [data=FILE] [data_format=…] [explicit=…] [selector=ap] [top=0.4] [w=1.0] [out_dir=…]

Alignment-potential data selection (arXiv 2503.01864, ALGORITHMS.md §4): keep the preference
pairs whose explicit margin is large but whose implicit margin — how far the model ABOUT TO BE
TRAINED already separates chosen from rejected — is small:

    m_ex = score(y_w) − score(y_l)        explicit=dataset | rm:PATH | sim:NAME | auto
    m_im = |avg_lp(y_w) − avg_lp(y_l)|    one jitted, sharded, length-bucketed pass, cached on disk
    M_AP = z(m_ex) − w·z(m_im)            z over the WHOLE dataset; the top `top` fraction is kept

    python experiments/ap_select.py                                  # bundled pairs, SmolLM2
    python experiments/ap_select.py data=uf.jsonl explicit=dataset   # UltraFeedback scores
    python experiments/ap_select.py explicit=rm:runs/reward_model/export selector=random

Selectors (the paper's baselines too): ap, explicit (largest m_ex), implicit_large, implicit_small,
random (seeded). `explicit=auto` uses the records' score_chosen/score_rejected when every record
has them, else sim:embedding_cosine of each response against `reference_field` (auto: the
record's `reference`, else the prompt — the bundled pairs ship neither scores nor references).
The implicit margin tokenises with the preference trainer's own pair_batch and the same
max_prompt_len / max_completion_len / chat template as experiments/dpo.py, so pass the values
training will use.

Default run time (2 CPU cores): 9 min 25 s at load ≈ 9 (docs/methods.md), 1 min 5 s when
the implicit margins are cached.

Outputs in runs/ap_select-<timestamp>/ (or out_dir=): selected.jsonl (the chosen input rows
unchanged + margin_explicit, margin_implicit, alignment_potential; best first), margins.png
(histograms of the three scores, selected pairs overlaid, the cut marked), config.json,
summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

# Runnable as a plain script from a checkout (`python experiments/ap_select.py`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from align_jax.algorithms import ap_margins  # noqa: E402
from align_jax.algorithms.preference import load_policy  # noqa: E402
from align_jax.cli import config_dict, parse_overrides, run_main  # noqa: E402
from align_jax.data import bundled_path, selection  # noqa: E402
from align_jax.experiment import PreferenceExperiment  # noqa: E402
from align_jax.train import report  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    model: str | None = None  # the policy about to be trained; None = SmolLM2-135M-Instruct GGUF
    dtype: str = "float32"
    data: str | None = None  # None = the bundled preference pairs; else JSONL / Parquet / HF dir
    data_format: str = "auto"
    explicit: str = "auto"  # auto | dataset | rm:PATH | sim:NAME (a registered similarity scorer)
    reference_field: str = "auto"  # sim: record field scored against; auto | prompt | FIELD
    selector: str = "ap"  # ap | explicit | implicit_large | implicit_small | random
    top: float = 0.4  # fraction of pairs kept
    w: float = 1.0  # weight of z(m_im) in M_AP (2.5 in the paper's self-play)
    seed: int = 0  # random selector
    max_prompt_len: int = 64  # as in training: prompt tokens kept (left-truncated)
    max_completion_len: int = 64  # as in training: response tokens kept (right-truncated)
    pad_multiple: int = 32  # length buckets of the implicit pass
    batch_size: int = 8  # pairs per implicit-margin forward (global)
    chunk_size: int | None = None  # log-prob chunking over the sequence (big vocabularies)
    mesh: str = "-1,1,1"
    cache_dir: str | None = None  # None = $ALIGN_JAX_CACHE or ~/.cache/align_jax
    use_cache: bool = True  # false: re-score the implicit margin even if it is cached
    progress: bool = True  # progress bar of the implicit-margin pass
    out_dir: str | None = None


CUT_PANEL = {"ap": 2, "explicit": 0, "implicit_large": 1, "implicit_small": 1}


def plot_margins(m_ex, m_im, m_ap, idx, selector: str, out_png: Path) -> None:
    """Three histograms (all pairs, selected pairs over them); the selector's cut as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    names = ("margin_explicit", "margin_implicit", "alignment_potential")
    for k, (ax, x, name) in enumerate(zip(axes, (m_ex, m_im, m_ap), names)):
        bins = np.histogram_bin_edges(x, bins=30)
        ax.hist(x, bins=bins, color="0.75", label="all")
        ax.hist(x[idx], bins=bins, color="tab:blue", alpha=0.8, label=f"{selector} top")
        if CUT_PANEL.get(selector) == k:
            ax.axvline(x[idx[-1]], color="tab:red", ls="--", label="cut")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> dict:
    from align_jax import sharding

    cfg = parse_overrides(Config(), argv)
    t0 = time.perf_counter()
    if cfg.selector not in selection.SELECTORS:  # fail before any model is loaded
        selection.selector_scores(cfg.selector, [0.0], [0.0])
    selection.num_selected(1, cfg.top)  # validates top early
    source = cfg.data or bundled_path("preference")
    pairs, records = selection.load_pair_rows(source, cfg.data_format)
    explicit = ap_margins.resolve_explicit(cfg.explicit, records)
    print(f"[align_jax] {len(pairs)} pairs from {source}; explicit margin: {explicit}")
    sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh(cfg.mesh)
    m_ex = ap_margins.explicit_margins(explicit, pairs, records,
                                       reference_field=cfg.reference_field, mesh=mesh)
    run_dir = report.make_run_dir("ap_select", cfg.out_dir)
    report.write_json(run_dir / "config.json", config_dict(cfg))
    model, tok = load_policy(cfg.model, dtype=cfg.dtype, mesh=mesh)
    # the trainer's own tokenise config, built from the same knobs
    tok_cfg = PreferenceExperiment(max_prompt_len=cfg.max_prompt_len,
                                   max_completion_len=cfg.max_completion_len,
                                   pad_multiple=cfg.pad_multiple).tokenize_config()
    res = ap_margins.implicit_margins(model, tok, pairs, tok_cfg, batch_size=cfg.batch_size,
                                      mesh=mesh, chunk_size=cfg.chunk_size,
                                      cache_dir=cfg.cache_dir, use_cache=cfg.use_cache,
                                      progress=cfg.progress)
    print(f"[align_jax] implicit margins {'reused' if res.hit else 'computed'}: {res.path}")
    m_im = res.arrays["margin_implicit"].astype(np.float64)
    m_ap = selection.alignment_potential(m_ex, m_im, cfg.w)
    score = selection.selector_scores(cfg.selector, m_ex, m_im, w=cfg.w, seed=cfg.seed)
    idx = selection.select_top(score, cfg.top)
    rows = selection.selected_rows(records, idx, m_ex, m_im, m_ap)
    with open(run_dir / "selected.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    plot_margins(m_ex, m_im, m_ap, idx, cfg.selector, run_dir / "margins.png")
    summary = {"pairs": len(pairs), "selected": len(idx), "selector": cfg.selector,
               "explicit": explicit, "w": cfg.w, "implicit_cache_hit": res.hit,
               "wall_s": round(time.perf_counter() - t0, 2), "run_dir": str(run_dir)}
    report.write_json(run_dir / "summary.json", summary)
    print(f"[align_jax] kept {len(idx)}/{len(pairs)} pairs by {cfg.selector}: "
          f"{run_dir / 'selected.jsonl'}")
    return summary


if __name__ == "__main__":
    run_main(main)
