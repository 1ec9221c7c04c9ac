"""What every training loop does around its steps, in one place: lock the run directory, write
the data report, restore the newest checkpoint that restores, truncate the metrics log to it,
and after each step log it, apply the divergence guard, checkpoint it.

    session = TrainingSession(run_dir, save_every=..., keep=...)   # lock first
    try:
        state, start = session.resume(state, loader)
        for step in range(start, total):
            state, stats = ...
            session.end_step(step + 1, stats, state, final=step + 1 == total)
    finally:
        session.close()

Order inside ``end_step`` matters: the metrics row is written first (a diverging step is
visible in metrics.jsonl), the guard may then stop the run BEFORE that step is checkpointed
(the last checkpoint stays the last good one), and only then is the step saved.
"""

from __future__ import annotations

from pathlib import Path

from align_jax.data import load_report
from align_jax.train import runlock
from align_jax.train.checkpoint import Checkpointer, resume
from align_jax.train.guard import NonFiniteGuard
from align_jax.train.metrics import MetricsLogger


class TrainingSession:
    """Created before anything is written below ``run_dir`` (it takes the run lock and writes the
    data report); :meth:`resume` then restores the newest checkpoint that restores and opens the
    metrics log; :meth:`end_step` after each step; :meth:`close` (or ``with``) at the end."""

    def __init__(self, run_dir, *, save_every: int, keep: int | None,
                 max_nonfinite_steps: int = 3, base: dict | None = None):
        self.run_dir = Path(run_dir)
        self.base = base  # a LoRA run's base model record (train.base_model), saved and checked
        self._lock = runlock.hold(self.run_dir)
        self._lock.__enter__()
        self.ckpt = self.logger = self.loader = None
        try:
            load_report.write(self.run_dir)
            self.ckpt = Checkpointer(self.run_dir / "checkpoints", save_every=save_every,
                                     keep=keep)
        except BaseException:
            self.close()
            raise
        self.guard = NonFiniteGuard(max_nonfinite_steps)

    def resume(self, state, loader) -> tuple:
        """-> (state, start step): the newest checkpoint's state and loader position, or the
        given state and 0."""
        self.loader = loader
        state, start, _ = resume(self.ckpt, state, loader, base=self.base)
        # rows logged after the restored step (or by a run killed before its first checkpoint)
        # are dropped, so every step appears once
        self.logger = MetricsLogger(self.run_dir, resume_step=start)
        return state, start

    def end_step(self, step: int, stats: dict, state, final: bool = False) -> None:
        self.logger.log(step, stats)
        self.guard.observe(step, stats, self.ckpt.latest_step)
        extra = {"loader": self.loader.state_dict()}
        if self.base is not None:
            extra["base"] = self.base
        self.ckpt.save(step, state, extra=extra, force=final)

    def close(self) -> None:
        try:
            if self.ckpt is not None:
                self.ckpt.close()
        finally:
            if self.logger is not None:
                self.logger.close()
            self._lock.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
