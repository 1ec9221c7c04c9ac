"""Mesh from config, ONE logical-axis rules table, parameter/batch placement, multi-host set-up.

Every parameter carries logical axis names as NNX Variable metadata (``nnx.Param(x, axes=(...))``);
activations are constrained with :func:`constrain`. Only :data:`RULES` knows the mesh axes, so
changing the parallelism strategy is a one-table edit (MaxText / t5x style).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from align_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated). Order matters only for
# readability; a mesh axis is used at most once per array (checked in `logical_to_spec`).
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("lora_rank", None),
    ("classes", None),
)
_RULES = dict(RULES)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape over (data, fsdp, tensor); -1 fills with the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    @classmethod
    def parse(cls, spec: "str | Sequence[int] | MeshConfig | None") -> "MeshConfig":
        """Accepts "8,1,1", (2,2,2), a MeshConfig, or None (all devices on `data`)."""
        if spec is None:
            return cls()
        if isinstance(spec, MeshConfig):
            return spec
        if isinstance(spec, str):
            parts = [p for p in spec.replace("x", ",").split(",") if p.strip()]
            try:
                spec = [int(p) for p in parts]
            except ValueError:
                raise ConfigError(f"mesh={spec!r}: expected 3 integers data,fsdp,tensor "
                                  "(-1 = fill with the remaining devices)") from None
        vals = list(spec)
        if len(vals) != 3 or vals.count(-1) > 1 or any(v == 0 or v < -1 for v in vals):
            raise ConfigError(f"mesh={vals!r}: expected 3 sizes data,fsdp,tensor, each >= 1 "
                              "except at most one -1 (fill)")
        return cls(*vals)


def make_mesh(cfg: "MeshConfig | str | Sequence[int] | None" = None, devices=None) -> Mesh:
    cfg = MeshConfig.parse(cfg)
    devices = list(jax.devices() if devices is None else devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    n_fill = sizes.count(-1)
    if n_fill > 1:
        raise ConfigError(f"mesh={sizes}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if n_fill:
        if len(devices) % known:
            raise ConfigError(f"mesh={sizes}: {len(devices)} devices do not divide by the fixed "
                              f"sizes (product {known})")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ConfigError(f"mesh={sizes} needs {math.prod(sizes)} devices, have {len(devices)}")
    arr = np.asarray(devices).reshape(sizes)
    return Mesh(arr, MESH_AXES)


def logical_to_spec(names: Sequence[str | None] | None, mesh: Mesh | None = None) -> P:
    """Map logical axis names to a PartitionSpec through RULES.

    A mesh axis of size 1 is dropped, and an axis already used by an earlier dim is not reused
    (e.g. `batch` and `embed` both want `fsdp` in activations: the first wins)."""
    if names is None:
        return P()
    used: set[str] = set()
    out = []
    for n in names:
        target = _RULES.get(n) if n is not None else None
        if n is not None and n not in _RULES:
            raise KeyError(f"logical axis {n!r} has no rule; known: {sorted(_RULES)}")
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def _divisible_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Replicate a dim whose size the mesh axes do not divide (tiny test configs, odd vocab)."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        size = math.prod(mesh.shape[a] for a in axes)
        out.append(entry if axes and dim % size == 0 else None)
    return P(*out)


def named_sharding(names, shape, mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, _divisible_spec(logical_to_spec(names, mesh), shape, mesh))


def _is_var(x) -> bool:
    from flax import nnx

    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: Mesh):
    """NamedShardings for an NNX State (or any pytree of Variables) from their `axes` metadata."""

    def one(v):
        if _is_var(v):
            names = v.get_metadata().get("axes")
            value = v.get_value() if hasattr(v, "get_value") else v.value
            return v.replace(named_sharding(names, np.shape(value), mesh))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, state, is_leaf=_is_var)


def put(tree, shardings):
    """``jax.device_put`` leaf by leaf onto ``shardings`` (one Sharding, or a tree of them), in a
    way that also works multi-host.

    A jax array committed to this process's devices cannot be device_put onto a mesh spanning
    other processes ("must represent addressable devices"); numpy can (every process passes the
    same value). So such arrays go through the host there — and on the CPU backend always, where
    host memory IS device memory and it avoids compiling one resharding program per (shape,
    sharding), which dominates start-up on simulated 8-device meshes. PRNG key arrays go as their
    key data."""
    multihost = jax.process_count() > 1

    def one(x, s):
        if isinstance(x, jax.Array):
            if x.sharding == s:
                return x
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(one(jax.random.key_data(x), s),
                                                impl=jax.random.key_impl(x))
            if x.is_fully_addressable and (multihost or all(d.platform == "cpu"
                                                            for d in x.devices())):
                x = np.asarray(x)
        return jax.device_put(x, s)

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, shardings), tree)
    return jax.tree.map(one, tree, shardings)


def shard_state(state, mesh: Mesh):
    """Place an NNX State on the mesh according to the rules table."""
    return put(state, state_shardings(state, mesh))


def shard_model(model, mesh: Mesh):
    """Shard an NNX module's variables in place (returns the module)."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, shard_state(state, mesh))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh))


def place_batch(batch, mesh: Mesh | None):
    """Put a host batch (pytree of numpy arrays, leading dim = batch) on the mesh.

    Multi-host: each process passes ITS share of the global batch; the global array is
    assembled with `jax.make_array_from_process_local_data`."""
    if mesh is None:
        return jax.tree.map(jax.numpy.asarray, batch)

    def one(x):
        x = np.asarray(x)
        s = batch_sharding(mesh, x.ndim)
        if jax.process_count() == 1:
            return put(x, s)
        return jax.make_array_from_process_local_data(s, x)

    return jax.tree.map(one, batch)


def local_batch_multiple(mesh: Mesh | None) -> int:
    """Rows THIS process must pass so that the global batch divides the mesh's batch axes
    (their product over the processes; 1 without a mesh)."""
    if mesh is None:
        return 1
    spec = logical_to_spec(("batch",), mesh)[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return max(1, math.prod(mesh.shape[a] for a in axes) // jax.process_count())


def is_multihost(mesh: Mesh | None) -> bool:
    """Sharded over several processes: each feeds its own inputs into ONE global batch (without
    a mesh every process computes on its own)."""
    return mesh is not None and jax.process_count() > 1


def agree(mesh: Mesh | None, *values: int) -> tuple[int, ...]:
    """:func:`process_max` of the values when ``mesh`` spans several processes, else the values:
    the shapes and trip counts every host must use for one global batch."""
    return process_max(*values) if is_multihost(mesh) else tuple(int(v) for v in values)


def process_max(*values: int) -> tuple[int, ...]:
    """Each value's maximum over the processes (identity with one process).

    Multi-host: a global array is assembled from process-local pieces of ONE shape, and every
    process must run the same programs the same number of times; hosts agree on row counts,
    length buckets and loop trip counts with this before they feed data of their own."""
    vals = np.asarray([int(v) for v in values], np.int64)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        vals = np.asarray(multihost_utils.process_allgather(vals)).reshape(
            jax.process_count(), -1).max(axis=0)
    return tuple(int(v) for v in vals)


def local_rows(x, axis: int = 0) -> np.ndarray:
    """This process's rows (along ``axis``, the batch) of a batch-sharded output, on the host,
    in global order.

    The inverse of :func:`place_batch`: with one process, the whole array; with several, the
    rows held by this process's devices (= the rows it fed, since ``make_array_from_process_
    local_data`` lays each process's share on its own devices). Reading a multi-host array
    with ``np.asarray`` fails (it is not fully addressable)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.ndim == 0:
        return np.asarray(jax.device_get(x))
    n = x.shape[axis]
    span = lambda sh: (sh.index[axis].start or 0,  # noqa: E731
                       n if sh.index[axis].stop is None else sh.index[axis].stop)
    offset, rows = {}, 0
    for a, b in sorted({span(sh) for sh in x.addressable_shards}):
        offset[a] = rows
        rows += b - a
    shape = list(x.shape)
    shape[axis] = rows
    out = np.empty(shape, x.dtype)
    for sh in x.addressable_shards:
        a, b = span(sh)
        where = list(sh.index)
        where[axis] = slice(offset[a], offset[a] + b - a)
        out[tuple(where)] = np.asarray(sh.data)
    return out


# ---- activation constraints ------------------------------------------------------------------
_ACTIVE_MESH: list[Mesh] = []


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None) -> Iterator[Mesh | None]:
    """Activate `mesh` for :func:`constrain` while tracing (no-op for None)."""
    if mesh is None:
        yield None
        return
    _ACTIVE_MESH.append(mesh)
    try:
        yield mesh
    finally:
        _ACTIVE_MESH.pop()


def constrain(x, names: Sequence[str | None]):
    """with_sharding_constraint by logical names; a no-op when no mesh is active."""
    if not _ACTIVE_MESH:
        return x
    mesh = _ACTIVE_MESH[-1]
    return jax.lax.with_sharding_constraint(x, named_sharding(names, x.shape, mesh))


def maybe_initialize_distributed() -> bool:
    """Call `jax.distributed.initialize()` on a multi-host run. Returns True when it initialised.

    A TPU VM pod (``TPU_WORKER_HOSTNAMES`` lists several workers): the TPU runtime supplies the
    coordinator and process ids. Anywhere else (GPU hosts, or several CPU processes on one
    machine as ``tests/test_multiprocess.py`` starts them): ``JAX_COORDINATOR_ADDRESS=host:port``
    with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. On the CPU backend the processes talk over
    gloo (jax's CPU default has no cross-process collectives)."""
    env = os.environ
    on_pod = bool(env.get("TPU_WORKER_HOSTNAMES", "").count(",")) or bool(
        env.get("JAX_COORDINATOR_ADDRESS")
    )
    if not on_pod:
        return False
    kw = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        for key, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
            if env.get(key):
                kw[arg] = int(env[key])
    if env.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kw)
    return True
