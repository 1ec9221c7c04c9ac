"""Metrics as (sum, count) pairs, a host-side accumulator, and a JSONL + TensorBoard logger.

Why (sum, count): a mean over micro-batches, devices or hosts is only exact if every partial
result carries its own denominator (token means differ per micro-batch). Jitted code returns
pairs; the host adds pairs and divides once, at logging time.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def to_sum_count(metrics: Mapping[str, Any]) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Normalise a metrics dict (jittable): a ``(sum, count)`` tuple is kept, a scalar becomes
    ``(x, 1)``, an array becomes ``(x.sum(), x.size)`` (a per-example metric)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (tuple, list)) and len(v) == 2:
            s, c = v
            out[k] = (jnp.asarray(s, jnp.float32), jnp.asarray(c, jnp.float32))
        else:
            x = jnp.asarray(v, jnp.float32)
            out[k] = (jnp.sum(x), jnp.asarray(x.size, jnp.float32))
    return out


def add_sum_count(a: Mapping, b: Mapping) -> dict:
    """Elementwise sum of two (sum, count) dicts; keys in only one are kept (jittable)."""
    out = dict(a)
    for k, (s, c) in b.items():
        out[k] = (out[k][0] + s, out[k][1] + c) if k in out else (s, c)
    return out


def compute(metrics: Mapping) -> dict[str, float]:
    """Host floats sum / count (NaN where count == 0)."""
    host = jax.device_get(dict(metrics))
    return {k: (float(s) / float(c) if float(c) else math.nan) for k, (s, c) in host.items()}


class MetricAccumulator:
    """Adds (sum, count) dicts across steps without a device sync; ``compute()`` syncs once."""

    def __init__(self):
        self._acc: dict = {}

    def update(self, metrics: Mapping) -> None:
        self._acc = add_sum_count(self._acc, to_sum_count(metrics))

    def compute(self) -> dict[str, float]:
        return compute(self._acc)

    def reset(self) -> dict[str, float]:
        """Return the current means and start over."""
        out = self.compute()
        self._acc = {}
        return out

    def __bool__(self) -> bool:
        return bool(self._acc)


class MetricsLogger:
    """Appends ``{"step": s, "time": t, **scalars}`` lines to ``<logdir>/metrics.jsonl`` (flushed
    every write, so a killed run keeps its log) and writes TensorBoard scalars (tensorboardX).

    ``resume_step``: when resuming from a checkpoint at step s, lines with step > s (logged after
    that checkpoint by the killed run) are dropped first, so the log has no duplicate steps.
    Only process 0 writes on a multi-host run."""

    def __init__(self, logdir: str | os.PathLike, tensorboard: bool = True,
                 resume_step: int | None = None, filename: str = "metrics.jsonl"):
        self.logdir = Path(logdir)
        self.active = jax.process_index() == 0
        self.path = self.logdir / filename
        self._tb = None
        if not self.active:
            self._fh = None
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._fh = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.logdir / "tb"))
            except ImportError:  # logging must not kill a run; JSONL still has everything
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a kill
            if int(rec.get("step", -1)) <= step:
                keep.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, step: int, scalars: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
        """Write scalars (floats, numpy/jax scalars, or (sum, count) pairs) for `step`."""
        vals = {}
        for k, v in scalars.items():
            if isinstance(v, (tuple, list)) and len(v) == 2:
                s, c = (float(np.asarray(x)) for x in jax.device_get(v))
                v = s / c if c else math.nan
            vals[prefix + k] = float(np.asarray(jax.device_get(v)))
        if self.active:
            rec = {"step": int(step), "time": time.time(), **vals}
            self._fh.write(json.dumps(rec, allow_nan=True) + "\n")
            self._fh.flush()
            if self._tb is not None:
                for k, v in vals.items():
                    self._tb.add_scalar(k, v, int(step))
                self._tb.flush()
        return vals

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics.jsonl (a torn last line is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
