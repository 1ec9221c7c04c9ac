"""Functional train state: trainable params + optimizer state + step + rng, as one pytree.

An NNX module crosses the jit boundary as (graphdef, trainable State, frozen State):

* :class:`TrainState` (a pytree, donated into the step, checkpointed) holds only what changes.
* :class:`ModelBundle` (static graphdef + the frozen State, e.g. the LoRA base weights) sits beside
  it; the frozen arrays are passed to the jitted step as a plain (non-donated) argument, never
  closed over, so they are not baked into the compiled program as constants.

LoRA: when the model holds :class:`~align_jax.models.llama.LoRAParam` adapters, only they are
trainable; the base weights are frozen, get no gradient and no optimizer state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from align_jax.models.llama import LoRAParam
from align_jax import sharding as shd
from align_jax.sharding import named_sharding


@struct.dataclass
class TrainState:
    params: Any  # nnx.State of the trainable Variables
    opt_state: Any
    step: jax.Array  # [] int32, applied step() calls (micro-steps under grad_accum; a call the
    # divergence guard skipped does not count, so the lr metric follows the optimizer)
    rng: jax.Array  # raw uint32 PRNG key [2] (raw, so checkpoints can store it)


def has_lora(model) -> bool:
    return any(isinstance(v, LoRAParam) for _, v in nnx.to_flat_state(nnx.state(model)))


def trainable_filter(model):
    """LoRAParam when the model has adapters (base frozen), else every nnx.Param."""
    return LoRAParam if has_lora(model) else nnx.Param


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """Static graphdef + frozen (non-trainable) state; rebuilds the module from trainable params."""

    graphdef: Any
    frozen: Any  # nnx.State (may be empty)

    def merge(self, params, frozen=None, lora_off: bool = False):
        """The module with `params` (+ frozen state). ``lora_off`` zeroes the adapters: the base
        model, e.g. the DPO reference when LoRA is trained."""
        if lora_off:
            params = lora_off_params(params)
        return nnx.merge(self.graphdef, params, self.frozen if frozen is None else frozen)

    def replace_frozen(self, frozen) -> "ModelBundle":
        return dataclasses.replace(self, frozen=frozen)


def split_model(model, trainable=None) -> tuple[ModelBundle, Any]:
    """-> (ModelBundle, trainable params State)."""
    trainable = trainable_filter(model) if trainable is None else trainable
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    return ModelBundle(graphdef, frozen), params


def lora_off_params(params):
    """Same pytree with every LoRAParam value zeroed (adapter delta A@B*scale becomes exactly 0),
    gradients stopped. Non-LoRA leaves pass through unchanged."""

    def one(v):
        if isinstance(v, LoRAParam):
            return jax.tree.map(lambda x: jnp.zeros_like(jax.lax.stop_gradient(x)), v)
        return v

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_train_state(model, optimizer, seed_or_key: int | jax.Array = 0, mesh: Mesh | None = None,
                       trainable=None) -> tuple[TrainState, ModelBundle]:
    """Split the module, init the optimizer and place everything on `mesh` (rules-table sharding).

    Optimizer moments are NNX Variables with the params' ``axes`` metadata, so they are sharded
    exactly like their parameter (FSDP shards the optimizer state too)."""
    bundle, params = split_model(model, trainable)
    key = (jax.random.PRNGKey(seed_or_key) if isinstance(seed_or_key, int)
           else jnp.asarray(seed_or_key))
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    if mesh is not None:
        params = place(params, tree_shardings(params, mesh))
        bundle = bundle.replace_frozen(place(bundle.frozen, tree_shardings(bundle.frozen, mesh)))
    # Eager init (zeros_like keeps each param's sharding), then exact rules-table placement; a
    # jitted init would cost one more compile per mesh for what is a handful of zero fills.
    opt_state = optimizer.init(params)
    state = TrainState(params=params, opt_state=opt_state, step=jnp.zeros([], jnp.int32), rng=key)
    if mesh is not None:
        state = place(state, tree_shardings(state, mesh))
    return state, bundle


def place(tree, shardings):
    """device_put leaf by leaf onto `shardings` (same structure); multi-host safe, and through
    numpy on the CPU backend (:func:`align_jax.sharding.put`)."""
    return shd.put(tree, shardings)


def tree_shardings(tree, mesh: Mesh):
    """NamedShardings for any pytree holding NNX Variables (params, optax states, TrainState).

    A Variable whose value has the rank of its ``axes`` metadata is sharded by the rules table;
    anything else (step counters, rng, Adafactor's factored row/column statistics whose rank is
    lower than their parameter's) is replicated."""
    rep = NamedSharding(mesh, P())

    def one(v):
        if isinstance(v, nnx.Variable):
            names = v.get_metadata().get("axes")
            value = v.get_value()
            if names is not None and hasattr(value, "shape") and len(names) == len(value.shape):
                return v.replace(named_sharding(names, value.shape, mesh))
            return jax.tree.map(lambda _: rep, v)
        return rep

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_train_state(state: TrainState, mesh: Mesh | None = None):
    """ShapeDtypeStructs (with target shardings on `mesh`) for restoring a checkpoint into."""
    shapes = jax.eval_shape(lambda s: s, state)
    if mesh is None:
        return jax.tree.map(
            lambda x, a: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                              sharding=getattr(a, "sharding", None)),
            shapes, state)
    sh = tree_shardings(state, mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, sh)


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
