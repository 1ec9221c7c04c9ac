"""Jitted train/eval step builders. No trainer class: a step is a function of (state, batch).

``loss_fn(model, batch, rng) -> (loss, metrics)`` sees a plain NNX module (merged from the bundle's
graphdef, the trainable params being differentiated and the frozen state). ``metrics`` values may
be scalars, per-example arrays or explicit ``(sum, count)`` pairs; the step returns every metric as
a ``(sum, count)`` pair (see :mod:`align_jax.train.metrics`) plus ``loss``, ``grad_norm`` (global
norm of the raw gradient, before clipping/accumulation), ``lr`` and ``skipped_nonfinite`` (1 when
the update was not applied because the loss, gradient or new weights were not finite; see
:mod:`align_jax.train.guard`).

Sharding: in/out shardings of the state come from the rules table (:func:`tree_shardings`), the
batch is sharded on its leading dim over (data, fsdp), and the function body is traced under
``use_mesh(mesh)`` so the model's activation constraints apply. The state is donated: the caller
must not reuse the state it passed in.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from align_jax.sharding import batch_sharding, use_mesh
from align_jax.train.guard import SKIP_KEY, all_finite, finite_update
from align_jax.train.metrics import to_sum_count
from align_jax.train.optim import lr_metric
from align_jax.train.state import ModelBundle, TrainState, tree_shardings

# XLA:CPU options for tests/smoke runs on tiny shapes: no LLVM optimisation, no fusion emitters.
# ~8x faster compiles of a train step; results differ from the default build only in rounding
# (~1e-7 relative), and a given build is deterministic. Not for real runs (slow kernels).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]


def _batch_shardings(batch, mesh: Mesh):
    return jax.tree.map(lambda x: batch_sharding(mesh, jnp.ndim(x)) if jnp.ndim(x) else
                        NamedSharding(mesh, P()), batch)


class _Compiled:
    """jit built lazily at the first call, when the state/batch pytree structures are known
    (shardings need them). One compile per batch structure/shape, as with plain jit."""

    def __init__(self, fn, mesh, donate_state: bool, state_out: bool, compiler_options=None):
        self.fn, self.mesh, self.donate, self.state_out = fn, mesh, donate_state, state_out
        self.compiler_options = compiler_options
        self._jit = {}

    def __call__(self, state, frozen, batch):
        return self._get(state, frozen, batch)(state, frozen, batch)

    def lower(self, state, frozen, batch):
        """The jitted program lowered for these (possibly abstract) inputs (``align_jax.aot``)."""
        return self._get(state, frozen, batch).lower(state, frozen, batch)

    def _get(self, state, frozen, batch):
        key = (jax.tree.structure(batch), jax.tree.structure(state))
        if key not in self._jit:
            kw = {}
            if self.mesh is not None:
                s_sh = tree_shardings(state, self.mesh)
                f_sh = tree_shardings(frozen, self.mesh)
                rep = NamedSharding(self.mesh, P())
                kw["in_shardings"] = (s_sh, f_sh, _batch_shardings(batch, self.mesh))
                kw["out_shardings"] = (s_sh, rep) if self.state_out else rep
            if self.compiler_options:
                kw["compiler_options"] = dict(self.compiler_options)
            self._jit[key] = jax.jit(self.fn, donate_argnums=(0,) if self.donate else (), **kw)
        return self._jit[key]


def make_train_step(loss_fn: LossFn, optimizer, bundle: ModelBundle, mesh: Mesh | None = None,
                    donate: bool = True, compiler_options: dict | None = None):
    """-> ``step(state, batch) -> (new_state, metrics)``; metrics are (sum, count) pairs of scalars.

    Differentiates w.r.t. ``state.params`` only; the bundle's frozen state gets no gradient.
    ``optimizer`` is an optax transformation (``make_optimizer`` output also logs ``lr``).
    ``compiler_options`` go to ``jax.jit`` (tests pass ``FAST_COMPILE``: tiny shapes, where XLA's
    CPU backend optimisation costs far more than it saves)."""

    def body(state: TrainState, frozen, batch):
        with use_mesh(mesh):
            rng, sub = jax.random.split(state.rng)

            def f(params):
                model = bundle.merge(params, frozen)
                loss, metrics = loss_fn(model, batch, sub)
                return loss, metrics

            (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(state.params)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            grad_norm = optax.tree.norm(grads)
            # divergence guard (train/guard.py): a non-finite step leaves params, optimizer state
            # and step counter as they were; the rng moves on
            ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
            params, opt_state, count = finite_update(
                ok, (params, opt_state, state.step + 1), (state.params, state.opt_state, state.step))
            out = to_sum_count(metrics)
            one = jnp.ones([], jnp.float32)
            out["loss"] = (loss.astype(jnp.float32), one)
            out["grad_norm"] = (grad_norm.astype(jnp.float32), one)
            out[SKIP_KEY] = (1.0 - ok.astype(jnp.float32), one)
            lr = lr_metric(optimizer, state.opt_state, state.step)
            if lr is not None:
                out["lr"] = (jnp.asarray(lr, jnp.float32), one)
            new = TrainState(params=params, opt_state=opt_state, step=count, rng=rng)
            return new, out

    compiled = _Compiled(body, mesh, donate, state_out=True, compiler_options=compiler_options)

    def step(state: TrainState, batch):
        return compiled(state, bundle.frozen, batch)

    step.jitted = compiled  # for inspection (e.g. lowering in tests/benchmarks)
    step.lower = lambda state, batch: compiled.lower(state, bundle.frozen, batch)
    return step


def make_eval_step(eval_fn: LossFn, bundle: ModelBundle, mesh: Mesh | None = None,
                   compiler_options: dict | None = None):
    """-> ``eval_step(state, batch) -> metrics`` ((sum, count) pairs), no gradient, no update.
    ``eval_fn`` has the loss_fn signature; its loss is reported as ``loss``. The rng passed is
    ``fold_in(state.rng, 1)`` so evaluation never consumes the training stream."""

    def body(state: TrainState, frozen, batch):
        with use_mesh(mesh):
            model = bundle.merge(state.params, frozen)
            loss, metrics = eval_fn(model, batch, jax.random.fold_in(state.rng, 1))
            out = to_sum_count(metrics)
            out["loss"] = (jnp.asarray(loss, jnp.float32), jnp.ones([], jnp.float32))
            return out

    compiled = _Compiled(body, mesh, donate_state=False, state_out=False,
                         compiler_options=compiler_options)

    def eval_step(state: TrainState, batch):
        return compiled(state, bundle.frozen, batch)

    return eval_step


# ---- a standard loss, used by SFT and the tests -----------------------------------------------
def lm_loss_fn(chunk_size: int | None = None) -> LossFn:
    """Token-mean NLL over response tokens. batch: input_ids, attention_mask, loss_mask ([B,T]).

    The mean is over all scored tokens of the batch passed in (sum / count), so a micro-batch's
    loss is its own token mean; metrics carry (sum, count) for exact cross-batch means."""
    from align_jax.train.logprobs import shifted_mask, token_logps

    def loss_fn(model, batch, rng):
        del rng
        mask_bt = shifted_mask(batch.get("loss_mask"), batch["attention_mask"])
        logp_bt = token_logps(model, batch["input_ids"], batch["attention_mask"],
                              batch.get("loss_mask"), chunk_size=chunk_size)
        nll_sum = -jnp.sum(logp_bt)
        count = jnp.sum(mask_bt)
        loss = nll_sum / jnp.maximum(count, 1.0)
        return loss, {"nll": (nll_sum, count), "tokens": (count, jnp.ones([], jnp.float32))}

    return loss_fn
