"""Divergence guard: a step whose loss, gradient or new weights are not finite is not applied;
a run that keeps producing them stops with one line instead of training (and exporting) NaNs.

Two halves, used by every training loop:

* in the jitted step (:func:`finite_update`): ``ok = isfinite(loss) & isfinite(grad_norm) &
  all(isfinite(new params))``, and the new params / optimizer state / step counter are a
  ``jnp.where`` select between the update and the old values. A select (not a Python branch or
  a ``lax.cond`` on two closures) keeps the step one straight-line program, so the donated state
  buffers are still reused in place. The rng advances either way (the next batch gets fresh
  randomness). ``skipped_nonfinite`` (1 for a skipped call) is added to the step's metrics.
* on the host (:class:`NonFiniteGuard`): counts skipped steps from the logged metrics, warns on
  each, and after ``max_consecutive`` in a row raises :class:`~align_jax.errors.DivergenceError`
  naming the step, the last finite metrics and the last good checkpoint. The loops call it after
  logging the step and before checkpointing it, so the stop never writes a checkpoint and the
  experiment never reaches its export.

It also warns when the gradient norm is exactly 0.0 for ``zero_grad_steps`` steps in a row: the
updates then change nothing. Seen with ``lr=1000`` (DPO): after two huge updates the residual
stream exceeds ~1.8e19, ``mean(x²)`` in RMSNorm overflows float32 to +inf, ``rsqrt(inf) = 0``
zeroes every hidden state, the logits are exactly 0 (a uniform distribution), the loss is
finite and every gradient is exactly 0. Also the symptom of all-equal advantages.
"""

from __future__ import annotations

import logging
from typing import Mapping

import jax
import jax.numpy as jnp

from align_jax.errors import DivergenceError

log = logging.getLogger(__name__)

SKIP_KEY = "skipped_nonfinite"


def all_finite(tree) -> jax.Array:
    """Scalar bool: every element of every floating leaf is finite (jittable)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def finite_update(ok: jax.Array, new, old):
    """``new`` where ``ok`` else ``old``, leaf by leaf (same structure; jittable)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def _fmt(stats: Mapping[str, float], keys=("loss", "grad_norm")) -> str:
    out = []
    for k in keys:
        v = stats.get(f"train/{k}")
        if v is not None:
            out.append(f"{k}={v:.6g}")
    return ", ".join(out) or "no metrics"


class NonFiniteGuard:
    """Host side of the guard. ``observe(step, stats, latest_checkpoint)`` after each logged
    step; ``stats`` holds the loop's ``train/…`` means (``train/skipped_nonfinite`` > 0 when
    any call of that update was skipped)."""

    def __init__(self, max_consecutive: int = 3, zero_grad_steps: int = 3):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive={max_consecutive}: must be >= 1")
        self.max_consecutive = max_consecutive
        self.zero_grad_steps = zero_grad_steps
        self.skipped = 0  # total skipped updates
        self.consecutive = 0
        self.last_finite: tuple[int, dict] | None = None
        self._zero_run = 0

    def observe(self, step: int, stats: Mapping[str, float], latest_checkpoint=None) -> None:
        """Raise DivergenceError after ``max_consecutive`` skipped updates in a row.
        ``latest_checkpoint``: a callable -> the newest saved step (or None), for the message."""
        if stats.get(f"train/{SKIP_KEY}", 0.0) > 0:
            self.skipped += 1
            self.consecutive += 1
            log.warning("step %d: non-finite loss/gradient/weights (%s); update not applied "
                        "(%d in a row, %d skipped so far)", step, _fmt(stats),
                        self.consecutive, self.skipped)
            if self.consecutive >= self.max_consecutive:
                raise DivergenceError(self._message(step, stats, latest_checkpoint))
            return
        self.consecutive = 0
        self.last_finite = (step, dict(stats))
        self._zero_grads(step, stats.get("train/grad_norm"))

    def _zero_grads(self, step: int, grad_norm) -> None:
        self._zero_run = self._zero_run + 1 if grad_norm == 0.0 else 0
        if self.zero_grad_steps and self._zero_run == self.zero_grad_steps:
            msg = (f"[align_jax] warning: grad_norm has been exactly 0.0 for {self._zero_run} "
                   f"steps (up to step {step}): the updates change nothing. Causes: all "
                   "advantages equal (k=1, temperature=0, identical rewards), or activations that "
                   "overflowed float32 after a too-large lr (RMSNorm's mean(x²)=inf zeroes the "
                   "hidden states, so the logits are exactly 0)")
            print(msg)

    def _message(self, step: int, stats, latest_checkpoint) -> str:
        first = step - self.consecutive + 1
        if self.last_finite is None:
            finite = "no step had finite metrics"
        else:
            s, m = self.last_finite
            finite = f"last finite step {s}: {_fmt(m)}"
        ckpt = latest_checkpoint() if callable(latest_checkpoint) else latest_checkpoint
        kept = (f"last good checkpoint: step {ckpt}" if ckpt is not None
                else "no checkpoint was written")
        return (f"training diverged: {self.consecutive} consecutive steps ({first}-{step}) had a "
                f"non-finite loss, gradient or weights (step {step}: {_fmt(stats)}) and were not "
                f"applied; {finite}; {kept}; nothing exported. Lower lr (or set "
                f"max_nonfinite_steps) and rerun")

