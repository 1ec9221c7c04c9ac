"""Relative Preference Optimization (RPO, arXiv 2402.10958) — contrastive matrix over a group.

    rpo_loss(inp: RPOInputs, cfg: RPOConfig) -> (loss scalar, metrics: dict[str, array [N]])

For a group of G examples: c_i = r(y_w,i), l_j = r(y_l,j) (log-ratio SUMS against the reference),
M_ij = c_i − l_j, d_ij = 1 − e_i·e'_j (prompt embeddings, L2-normalised here, no gradient),
ω_ij = softmax_j(−d_ij/τ) over the valid columns, and

    loss_group = mean_{valid i} mean_{valid j} −log σ(β·ω_ij·M_ij)      (weight INSIDE the sigmoid).

Rows are chosen items, columns rejected items, each with its own validity mask and embedding:
* paired   – row i and column i come from the same prompt (rejected_emb = emb, masks equal);
* unpaired – rows = desirable items, columns = undesirable items (pass every item's log-ratio in both
  vectors with masks valid&label / valid&~label); a group with no row or no column is empty (0);
* diagonal – diag_weight·(−log σ(β·M_ii)) + (1−diag_weight)·mean_{j≠i} −log σ(β·ω_ij·M_ij), per row;
  ω_ij = 1 unless ``diagonal_use_weights`` (the authors' rpo-diagonal uses no embedding weights).

Group semantics: the batch of N is reshaped to [N/G, G] (consecutive examples form a group) and the
result is the mean over NON-EMPTY groups. The authors computed the matrix per device (8 of a global
64), i.e. G = per-device batch; making G explicit keeps the value independent of the mesh.
(In their unpaired DDP run an empty device still counted as a zero in the gradient average; we
exclude empty groups instead, so padding the batch to a multiple of G does not dilute the loss.)
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from .accuracy import pair_accuracy
from .registry import register_loss

Array = jax.Array


class RPOInputs(NamedTuple):
    chosen_logratios: Array  # [N] c_i = lp_θ(y_w) − lp_ref(y_w)
    rejected_logratios: Array  # [N] l_j
    emb: Array | None  # [N, E] prompt embeddings of the rows (None → ω = 1)
    chosen_valid: Array | None = None  # [N] bool, None = all valid
    rejected_valid: Array | None = None  # [N] bool, None = chosen_valid
    rejected_emb: Array | None = None  # [N, E] prompt embeddings of the columns, None = emb


@dataclasses.dataclass(frozen=True)
class RPOConfig:
    family: ClassVar[str] = "rpo"  # registry family of the names in `loss`
    variant: str = "paired"  # "paired" | "unpaired" | "diagonal" (registered as rpo_<variant>)
    beta: float = 0.1  # β inside the sigmoid
    tau: float = 0.5  # distance temperature of ω
    group_size: int | None = None  # G: pairs per contrastive matrix; None = the whole batch
    diag_weight: float = 0.8  # diagonal variant: weight of the matched pair (DPO) term
    diagonal_use_weights: bool = False  # diagonal variant: ω-weight the off-diagonal terms too

    @property
    def loss_names(self) -> tuple[str, ...]:
        return (f"rpo_{self.variant}",)  # the registered variant


def _normalise(e: Array) -> Array:
    e = jax.lax.stop_gradient(e.astype(jnp.promote_types(e.dtype, jnp.float32)))
    return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def _groups(x: Array, g: int) -> Array:
    return x.reshape((x.shape[0] // g, g) + x.shape[1:])


def _omega(e_row: Array, e_col: Array, col_ok: Array, tau: float) -> Array:
    """Masked softmax over columns of −(1 − cos)/τ; [n, G, G]."""
    d = 1.0 - jnp.einsum("nie,nje->nij", e_row, e_col)
    # finite fill (not -inf) so a group without valid columns gives a harmless uniform row, not NaN
    logits = jnp.where(col_ok[:, None, :], -d / tau, -1e30)
    return jnp.where(col_ok[:, None, :], jax.nn.softmax(logits, axis=-1), 0.0)


def rpo_loss(inp: RPOInputs, cfg: RPOConfig) -> tuple[Array, dict[str, Array]]:
    """RPO over groups of ``cfg.group_size`` consecutive examples (see module doc)."""
    if cfg.variant not in ("paired", "unpaired", "diagonal"):
        raise ValueError(f"RPO variant must be paired|unpaired|diagonal, got {cfg.variant!r}")
    c, l = inp.chosen_logratios, inp.rejected_logratios
    n = c.shape[0]
    g = n if cfg.group_size is None else cfg.group_size
    if n % g:
        raise ValueError(f"RPO batch {n} is not a multiple of group_size {g}")
    row_ok = jnp.ones((n,), bool) if inp.chosen_valid is None else inp.chosen_valid.astype(bool)
    col_ok = row_ok if inp.rejected_valid is None else inp.rejected_valid.astype(bool)

    cg, lg, rg, kg = _groups(c, g), _groups(l, g), _groups(row_ok, g), _groups(col_ok, g)
    m = cg[:, :, None] - lg[:, None, :]  # [n_groups, G, G]
    use_w = inp.emb is not None and (cfg.variant != "diagonal" or cfg.diagonal_use_weights)
    if use_w:
        e_row = _normalise(inp.emb)
        e_col = e_row if inp.rejected_emb is None else _normalise(inp.rejected_emb)
        w = _omega(_groups(e_row, g), _groups(e_col, g), kg, cfg.tau).astype(m.dtype)
    else:
        w = jnp.ones_like(m)
    ell = -jax.nn.log_sigmoid(cfg.beta * w * m)  # [n_groups, G, G]

    pair_ok = rg[:, :, None] & kg[:, None, :]
    if cfg.variant == "diagonal":
        eye = jnp.eye(g, dtype=bool)[None]
        off_ok = pair_ok & ~eye
        n_off = off_ok.sum(-1)
        off = jnp.where(off_ok, ell, 0.0).sum(-1) / jnp.maximum(n_off, 1)
        diag = jnp.diagonal(ell, axis1=1, axis2=2)
        row_loss = cfg.diag_weight * diag + (1.0 - cfg.diag_weight) * off
        row_ok_g = rg & kg  # the diagonal pair must be complete
    else:
        n_col = kg.sum(-1, keepdims=True)  # [n_groups, 1]
        row_loss = jnp.where(pair_ok, ell, 0.0).sum(-1) / jnp.maximum(n_col, 1)
        row_ok_g = rg & (n_col > 0)
    row_loss = jnp.where(row_ok_g, row_loss, 0.0)
    n_rows = row_ok_g.sum(-1)
    group_loss = row_loss.sum(-1) / jnp.maximum(n_rows, 1)
    nonempty = n_rows > 0
    loss = jnp.where(nonempty, group_loss, 0.0).sum() / jnp.maximum(nonempty.sum(), 1)

    rc = jax.lax.stop_gradient(cfg.beta * c)
    rr = jax.lax.stop_gradient(cfg.beta * l)
    metrics = {
        "rpo/row_loss": jax.lax.stop_gradient(row_loss.reshape(n)),
        "rpo/row_valid": row_ok_g.reshape(n).astype(c.dtype),
        "rewards/chosen": rc * row_ok.astype(c.dtype),
        "rewards/rejected": rr * col_ok.astype(c.dtype),
        "rewards/margins": (rc - rr) * (row_ok & col_ok).astype(c.dtype),
        "rewards/accuracies": pair_accuracy(rc, rr).astype(c.dtype)  # a tie counts 0.5
        * (row_ok & col_ok).astype(c.dtype),
    }
    return loss, metrics


def _variant(name: str, variant: str, data: str = "pairs"):
    def fn(inp: RPOInputs, cfg: RPOConfig) -> tuple[Array, dict[str, Array]]:
        return rpo_loss(inp, dataclasses.replace(cfg, variant=variant))

    fn.__name__ = f"{name}_loss"
    fn.__doc__ = f"RPO, {variant} variant (overrides cfg.variant)."
    return register_loss(name, "rpo", data=data)(fn)


rpo_paired_loss = _variant("rpo_paired", "paired")
rpo_unpaired_loss = _variant("rpo_unpaired", "unpaired", data="unpaired")
rpo_diagonal_loss = _variant("rpo_diagonal", "diagonal")
