"""Training the LD-Align guide auto-encoder (``models.latent_ae``) in the one loop, and using it.

The guide trains by reconstruction on the SFT references y plus policy samples y′ of the same
prompts (L = −[log ψ(y|x,ϕ(x,y)) + log ψ(y′|x,ϕ(x,y′))], a token mean over a batch drawn from
both kinds) with its own progress bar, checkpoints and resume (``run_loop`` in ``<run>/guide``).
Afterwards it writes ``curves.png`` (reconstruction loss), ``latents.png`` (2-D PCA of the
reference vs sample latents) and ``export/guide_params.npz`` (its trainable parameters: the
projection, the prefix map and the decoder's LoRA adapters).

:func:`make_latent_fn` gives ϕ as a jitted batch function; the rounds use it for the distances.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from align_jax.algorithms.preference import make_preference_update
from align_jax.data.loader import DataLoader
from align_jax.data.tokenize import TokenizeConfig
from align_jax.models.latent_ae import GUIDE_TRAINABLE, guide_batch, reconstruction_loss_fn
from align_jax.sharding import place_batch, use_mesh
from align_jax.train import report
from align_jax.train.loop import LoopConfig, run_loop
from align_jax.train.optim import OptimConfig
from align_jax.train.state import create_train_state
from align_jax.train.step import make_train_step


@dataclasses.dataclass(frozen=True)
class GuideTrainConfig(LoopConfig):
    """The guide's loop: its own steps, batch and optimizer (LoRA + maps: a high lr)."""

    steps: int = 30  # reconstruction updates
    batch_size: int = 8  # (x, y) rows per update, references and samples mixed
    save_every: int = 10
    optim: OptimConfig = OptimConfig(lr=1e-3)


class GuideSource:
    """Batches of (prompt, response) rows in the loader's (seed, epoch) order, one fixed length."""

    def __init__(self, rows, dec_tok, enc_tok, tcfg: TokenizeConfig, enc_max_len: int,
                 cfg: GuideTrainConfig, mesh=None):
        self.rows, self.mesh = list(rows), mesh
        make = lambda idx: guide_batch(  # noqa: E731
            dec_tok, enc_tok, [self.rows[i][0] for i in idx], [self.rows[i][1] for i in idx],
            tcfg, enc_max_len, self.length)
        self.length = None
        self.length = max(make(range(s, min(s + 64, len(self.rows))))["input_ids"].shape[1]
                          for s in range(0, len(self.rows), 64))
        self.loader = DataLoader(list(range(len(self.rows))), min(cfg.batch_size, len(self.rows)),
                                 seed=cfg.seed, shuffle=True, collate_fn=make)

    def next(self, state, step: int):
        return [place_batch(next(self.loader), self.mesh)], {}


def train_guide(guide, rows: Sequence[tuple], kinds: Sequence[str], dec_tok, enc_tok,
                tcfg: TokenizeConfig, cfg: GuideTrainConfig, run_dir, *, mesh=None):
    """Train ``guide`` on ``rows`` [(prompt, response)] (``kinds``: "reference" | "sample" per
    row, for the latent plot) in ``run_dir`` (resumed if it holds checkpoints) -> trained guide."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    opt = cfg.optim.make(cfg.steps)
    state, bundle = create_train_state(guide, opt, cfg.seed, mesh, trainable=GUIDE_TRAINABLE)
    step_fn = make_train_step(reconstruction_loss_fn(), opt, bundle, mesh)
    source = GuideSource(rows, dec_tok, enc_tok, tcfg, guide.cfg.encoder_max_len, cfg, mesh)
    state = run_loop(state, source, make_preference_update(step_fn), run_dir, cfg, label="guide",
                     postfix=lambda s: {"nll": f"{s['train/nll']:.3f}"})
    guide = bundle.merge(state.params)
    if (run_dir / "metrics.jsonl").exists():
        report.plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png",
                           keys=["train/nll"], title="LD-Align guide: reconstruction NLL / token")
    z = make_latent_fn(guide, enc_tok, mesh=mesh)([r[0] for r in rows], [r[1] for r in rows])
    plot_latents(z, kinds, run_dir / "latents.png")
    export = run_dir / "export"
    export.mkdir(exist_ok=True)
    flat = {"/".join(map(str, k)): np.asarray(v.get_value())
            for k, v in nnx.to_flat_state(state.params)}
    np.savez(export / "guide_params.npz", **flat)
    return guide


def make_latent_fn(guide, enc_tok, batch_size: int = 16, mesh=None):
    """``phi(prompts, responses) -> np.ndarray [N, d]``: ϕ(x, y) in fixed-shape batches."""
    from align_jax.data import prompt_text
    from align_jax.models.latent_ae import encoder_inputs

    graphdef, state = nnx.split(guide)
    max_len = guide.cfg.encoder_max_len

    @jax.jit
    def enc(state, ids, mask, types):
        with use_mesh(mesh):
            return nnx.merge(graphdef, state).encode(ids, mask, types)

    def phi(prompts, responses) -> np.ndarray:
        out = []
        n = len(responses)
        for s in range(0, n, batch_size):
            p = [prompt_text(x) for x in prompts[s:s + batch_size]]
            r = list(responses[s:s + batch_size])
            pad = batch_size - len(r)  # one compiled shape
            b = encoder_inputs(enc_tok, p + p[:1] * pad, r + r[:1] * pad, max_len)
            out.append(np.asarray(enc(state, b["enc_input_ids"], b["enc_attention_mask"],
                                      b["enc_token_type_ids"]))[: len(r)])
        return np.concatenate(out, 0) if out else np.zeros((0, guide.cfg.latent_dim), np.float32)

    return phi


def pca_2d(z: np.ndarray) -> np.ndarray:
    """The rows of ``z`` on their first two principal components."""
    zc = np.asarray(z, np.float64) - np.asarray(z, np.float64).mean(0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    proj = zc @ vt[:2].T
    return np.pad(proj, [(0, 0), (0, 2 - proj.shape[1])])


def plot_latents(z: np.ndarray, kinds: Sequence[str], out_png) -> Path:
    """Scatter of the 2-D PCA of the latents, one colour per kind (reference / sample)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = pca_2d(z)
    kinds = np.asarray(kinds)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for kind, color in (("reference", "tab:blue"), ("sample", "tab:orange")):
        sel = kinds == kind
        ax.scatter(xy[sel, 0], xy[sel, 1], s=14, c=color, label=f"{kind} ({int(sel.sum())})",
                   alpha=0.8)
    ax.set_title("LD-Align guide latents ϕ(x, y), 2-D PCA")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
