"""Optimizers and learning-rate schedules (optax), built from a few config values.

Order of the chain: clip the (accumulated) gradient by global norm -> optimizer with weight decay.
With ``grad_accum=k`` the whole chain sits inside ``optax.MultiSteps``: gradients of k consecutive
calls are averaged, then clipped and applied once, and the schedule advances once per real update
(its count lives in the inner optimizer state), so ``lr`` is the same function of *optimizer* steps
whatever k is.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

# Parameters whose leaf name matches this are not weight-decayed (HF Trainer's convention: norms
# and biases are excluded; embeddings and matrices are decayed).
NO_DECAY_PATTERN = r"(.*norm.*|b[qkvo]|b_gate|b_up|b_down|bias)"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer knobs, declared once; every loop and experiment nests this."""

    name: str = "adamw"  # adamw | adafactor | rmsprop | sgd
    lr: float = 1e-5  # peak learning rate
    schedule: str = "constant"  # cosine | linear | constant (decays over the run's steps)
    warmup_steps: int = 0  # linear warm-up updates
    weight_decay: float = 0.0  # decoupled weight decay
    grad_clip: float | None = 1.0  # global gradient-norm clip; None = off
    grad_accum: int = 1  # micro-batches averaged per optimizer update

    def make(self, total_steps: int) -> "Optimizer":
        return make_optimizer(self.name, self.lr, self.schedule, self.warmup_steps, total_steps,
                              self.weight_decay, self.grad_clip, self.grad_accum)


class Optimizer(NamedTuple):
    """An optax GradientTransformation (``init``/``update``) that also carries its schedule (for
    the ``lr`` metric) and accumulation factor. Usable wherever optax expects a transformation."""

    init: Callable
    update: Callable
    schedule: Callable | None = None
    grad_accum: int = 1


def make_schedule(lr: float, schedule: str = "cosine", warmup_steps: int = 0,
                  total_steps: int | None = None, end_lr_ratio: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then

    * ``cosine``: lr_end + (lr - lr_end) * 0.5 * (1 + cos(pi * s / D)), D = total - warmup
    * ``linear``: lr + (lr_end - lr) * s / D
    * ``constant``: lr

    with s = step - warmup clipped to [0, D] and lr_end = end_lr_ratio * lr."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"schedule={schedule!r}; expected cosine, linear or constant")
    warmup_steps = int(warmup_steps)
    if schedule != "constant" and not total_steps:
        raise ValueError(f"schedule={schedule!r} needs total_steps")
    decay_steps = max(int(total_steps or 0) - warmup_steps, 1)
    end = lr * end_lr_ratio

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        warm = lr * step / max(warmup_steps, 1)
        frac = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        if schedule == "cosine":
            after = end + (lr - end) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
        elif schedule == "linear":
            after = lr + (end - lr) * frac
        else:
            after = jnp.full_like(frac, lr)
        return jnp.where(step < warmup_steps, warm, after)

    return fn


def _leaf_name(path) -> str:
    """Last named key of a pytree path (skips NNX Variables' `.value` attribute)."""
    for k in reversed(path):
        name = getattr(k, "key", None) or getattr(k, "name", None)
        if isinstance(name, str) and name != "value":
            return name
    return ""


def decay_mask(params, no_decay_pattern: str = NO_DECAY_PATTERN):
    """Pytree of bools (True = weight-decay this leaf)."""
    rx = re.compile(no_decay_pattern)
    return jax.tree_util.tree_map_with_path(
        lambda p, _: rx.fullmatch(_leaf_name(p)) is None, params)


def make_optimizer(name: str = "adamw", lr: float = 1e-5, schedule: str = "cosine",
                   warmup_steps: int = 0, total_steps: int | None = None,
                   weight_decay: float = 0.0, grad_clip: float | None = 1.0, grad_accum: int = 1,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   end_lr_ratio: float = 0.0,
                   no_decay_pattern: str | None = NO_DECAY_PATTERN) -> Optimizer:
    """An optax optimizer. ``name``: adamw | adafactor | rmsprop | sgd.

    ``grad_clip`` (None/0 = off) clips the global gradient norm before the update; the norm is
    computed over the trainable params only. ``no_decay_pattern`` (None = decay everything)
    selects leaf names excluded from weight decay. ``grad_accum=k`` wraps everything in
    ``optax.MultiSteps`` (call the step k times per update; see module docstring)."""
    sched = make_schedule(lr, schedule, warmup_steps, total_steps, end_lr_ratio)
    mask = (None if no_decay_pattern is None
            else (lambda p: decay_mask(p, no_decay_pattern)))
    if name == "adamw":
        opt = optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
    elif name == "adafactor":
        opt = optax.adafactor(sched, weight_decay_rate=weight_decay or None,
                              weight_decay_mask=mask, clipping_threshold=None)
    elif name in ("rmsprop", "sgd"):
        base = (optax.rmsprop(sched, decay=b2, eps=eps) if name == "rmsprop"
                else optax.sgd(sched, momentum=None))
        # Decoupled decay (lr * wd * w), applied like AdamW's.
        opt = (optax.chain(base, _decoupled_decay(weight_decay, sched, mask)) if weight_decay
               else base)
    else:
        raise ValueError(f"optimizer {name!r}; expected adamw, adafactor, rmsprop or sgd")
    if grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
    if grad_accum > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=grad_accum)
    return Optimizer(opt.init, opt.update, sched, int(grad_accum))


def _decoupled_decay(wd: float, sched: Callable, mask) -> optax.GradientTransformation:
    """updates -= lr(step) * wd * params (step counted by this transform)."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        lr = sched(state.count)
        m = mask(params) if mask is not None else jax.tree.map(lambda _: True, params)
        updates = jax.tree.map(lambda u, p, k: u - lr * wd * p if k else u, updates, params, m)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def lr_metric(optimizer, opt_state, step):
    """Learning rate used by the update made at train step `step` (None without a schedule)."""
    sched = getattr(optimizer, "schedule", None)
    if sched is None:
        return None
    # Under MultiSteps the schedule runs on real updates (its inner count), not on micro-steps.
    if isinstance(opt_state, optax.MultiStepsState):
        return sched(opt_state.gradient_step)
    return sched(step)
