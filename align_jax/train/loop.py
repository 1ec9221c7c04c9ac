"""THE training loop: a batch source, an update and hooks; checkpoint/resume, metrics and the
progress bar are owned here (through :class:`~align_jax.train.session.TrainingSession`), so every
method — online (rollout → reward → advantage → update) or offline (preference batches) — only
says how it makes a batch and how it updates on it.

    source = MySource(loader, ...)          # .loader (checkpointed position), .next(state, step)
    state = run_loop(state, source, update, run_dir, LoopConfig(steps=...), label="dpo",
                     postfix=lambda stats: {...})

* ``source.next(state, step) -> (batch, stats)``: the step's batch (it may read the current
  policy from ``state``, e.g. to sample) and the stats it measured on the way.
* ``update(state, batch) -> (state, stats)``: the optimizer update(s) on that batch.
* ``hooks``: ``hook(step, state, stats)`` after each update, before the step is logged (in-run
  evaluation adds its ``eval/*`` keys here).

Resume == uninterrupted: ``source.loader``'s position is checkpointed with the train state every
``save_every`` steps; on restart the newest checkpoint that restores is loaded, the metrics log is
truncated to it and the loop continues at the next step. Everything random a step uses must be a
function of (seed, step) or live in the train state (the sources fold the step into their keys).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

from align_jax.train import report
from align_jax.train.session import TrainingSession


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Knobs of the loop itself (the same for every method)."""

    steps: int = 40  # training steps (optimizer updates)
    seed: int = 0  # data order, sampling and train-state rng
    save_every: int = 10  # checkpoint every N steps (and at the last step)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    progress: bool = True  # tqdm progress bar
    max_nonfinite_steps: int = 3  # stop after this many non-finite updates in a row


class BatchSource(Protocol):
    loader: Any  # a DataLoader: its position is checkpointed with the state

    def next(self, state, step: int) -> tuple[Any, dict]:
        ...


Hook = Callable[[int, Any, dict], None]


def run_loop(state, source: BatchSource, update: Callable, run_dir, cfg: LoopConfig, *,
             label: str, postfix: Callable[[Mapping], Mapping[str, str]] | None = None,
             hooks: Iterable[Hook] = (), start_hook: Callable[[], None] | None = None,
             step_callback: Callable[[int, dict], None] | None = None,
             base: dict | None = None):
    """Run ``cfg.steps`` steps of ``source`` → ``update`` in ``run_dir`` (resuming it) -> state.

    ``start_hook`` runs once the run directory is locked, before the checkpoint is restored
    (e.g. the held-out evaluation of the initial policy). ``label`` names the progress bar (the
    method's name); ``postfix(stats)`` gives its right-hand fields. ``base``: a LoRA run's base
    model record (``train.base_model.base_identity``): its checkpoints hold the adapters only,
    and resuming onto another base is refused."""
    session = TrainingSession(run_dir, save_every=cfg.save_every, keep=cfg.keep_checkpoints,
                              max_nonfinite_steps=cfg.max_nonfinite_steps, base=base)
    bar = None
    try:
        if start_hook is not None:
            start_hook()
        state, start = session.resume(state, source.loader)
        bar = report.progress_bar(cfg.steps, start, label, cfg.progress)
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            batch, stats = source.next(state, step)
            state, update_stats = update(state, batch)
            stats.update(update_stats)
            stats.setdefault("time/step_s", time.perf_counter() - t0)
            for hook in hooks:
                hook(step + 1, state, stats)
            session.end_step(step + 1, stats, state, final=step + 1 == cfg.steps)
            if bar is not None:
                bar.update(1)
                if postfix is not None:
                    bar.set_postfix(**postfix(stats))
            if step_callback is not None:
                step_callback(step + 1, stats)
    finally:
        if bar is not None:
            bar.close()
        session.close()
    return state


def every(n: int, fn: Callable[[int, Any], Mapping[str, float]], prefix: str = "eval/") -> Hook:
    """A hook that adds ``fn(step, state)``'s metrics (prefixed) every ``n`` steps (0 = never)."""

    def hook(step: int, state, stats: dict) -> None:
        if n and step % n == 0:
            stats.update({f"{prefix}{k}": v for k, v in fn(step, state).items()})

    return hook


def eval_once(path: str | Path, evaluate: Callable[[], Any]) -> Any:
    """``evaluate()`` written to ``path`` (JSON) — or, when a resumed run already has that file,
    what it holds: the "before" numbers are always the initial policy's."""
    path = Path(path)
    if path.exists():
        return json.loads(path.read_text())
    result = evaluate()
    report.write_json(path, result)
    return result
