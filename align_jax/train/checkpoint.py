"""Checkpoints: an orbax ``CheckpointManager`` wrapper (every N steps, keep last K, atomic,
sharded).

Each step directory holds two items written in ONE orbax save (so they are committed together):
``state`` (the TrainState pytree, sharded arrays via tensorstore/OCDBT) and ``extra`` (a JSON of
host state: data-loader position, config, ...).

Atomicity: orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames when done (or, on
object stores, writes ``commit_success.txt`` last). In both modes ``commit_success.txt`` exists in
a finished step dir. On a local filesystem orbax would still list a bare ``<step>/`` dir without
it (left by a crash mid-copy, a manual copy, a different tool), so on start-up such dirs are
renamed to ``<step>.incomplete-<n>`` (kept for inspection, invisible to orbax) and
:meth:`Checkpointer.restore_latest` only ever sees complete steps.

The pytree is stored as a flat dict keyed by its tree paths, so any pytree (NNX States of
Variables, optax NamedTuples) round-trips; restoring needs an abstract target of the same
structure (ShapeDtypeStructs whose ``sharding`` says where each restored array goes).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from align_jax.paths import resolve_dir

log = logging.getLogger(__name__)

COMMIT_MARKER = "commit_success.txt"


def _flat_key(i: int, path) -> str:
    # Index prefix keeps keys unique after sanitising; the path part keeps them readable.
    return f"p{i:05d}_" + re.sub(r"[^A-Za-z0-9]+", "_", jax.tree_util.keystr(path)).strip("_")


def to_flat_dict(tree) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_flat_key(i, p): x for i, (p, x) in enumerate(leaves)}


def from_flat_dict(flat: dict[str, Any], like):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    keys = [_flat_key(i, p) for i, (p, _) in enumerate(leaves)]
    missing = [k for k in keys if k not in flat]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} entries of the target, e.g. {missing[:3]}")
    return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


def _abstract(x):
    sh = getattr(x, "sharding", None)
    if sh is None:  # orbax needs a target sharding for every array
        sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)


def quarantine_incomplete(directory) -> list[str]:
    """Rename step dirs lacking orbax's commit marker out of orbax's sight. Returns their names."""
    directory = epath.Path(directory)
    moved = []
    if jax.process_index() == 0 and directory.exists():
        for p in directory.iterdir():
            if p.is_dir() and p.name.isdigit() and not (p / COMMIT_MARKER).exists():
                n = 0
                while (directory / f"{p.name}.incomplete-{n}").exists():
                    n += 1
                target = directory / f"{p.name}.incomplete-{n}"
                log.warning("checkpoint %s is incomplete (no %s); moved to %s",
                            p, COMMIT_MARKER, target.name)
                p.rename(target)
                moved.append(p.name)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("align_jax.checkpoint.quarantine")
    return moved


class Checkpointer:
    """``save(step, state, extra)`` every ``save_every`` steps, keeping the last ``keep``.

    ``async_save``: orbax copies arrays to host before ``save`` returns and writes in the
    background, so training (with donated buffers) can go on; call :meth:`wait` / :meth:`close`
    before the process exits."""

    def __init__(self, directory: str | os.PathLike, save_every: int = 1000, keep: int | None = 3,
                 async_save: bool = True):
        self.directory = epath.Path(resolve_dir(directory))  # orbax needs absolute paths
        self.skipped = quarantine_incomplete(self.directory)
        # Every `save_every` steps, plus orbax's save-on-preemption; not orbax's default "always
        # save the first step seen" (a resumed run would otherwise save off-interval).
        cm = ocp.checkpoint_managers
        policy = cm.AnySavePolicy([cm.FixedIntervalPolicy(save_every),
                                   cm.PreemptionCheckpointingPolicy()])
        opts = ocp.CheckpointManagerOptions(
            save_decision_policy=policy, max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        self.mngr = ocp.CheckpointManager(self.directory, item_names=("state", "extra"),
                                          options=opts)

    def save(self, step: int, state, extra: dict | None = None, force: bool = False) -> bool:
        """Save if `step` is on the interval (or `force`). Returns whether a save started."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(to_flat_dict(state)),
                                  extra=ocp.args.JsonSave(dict(extra or {})))
        return bool(self.mngr.save(int(step), args=args, force=force))

    def all_steps(self) -> list[int]:
        return sorted(self.mngr.all_steps())

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def restore(self, step: int, abstract_state):
        """-> (state, extra) of `step`, arrays placed per the abstract target's shardings."""
        target = jax.tree.map(_abstract, to_flat_dict(abstract_state))
        out = self.mngr.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()))
        return from_flat_dict(dict(out["state"]), abstract_state), dict(out["extra"] or {})

    def restore_latest(self, abstract_state):
        """-> (state, extra, step) of the newest complete checkpoint, or None when there is none."""
        self.mngr.reload()
        step = self.latest_step()
        if step is None:
            return None
        state, extra = self.restore(step, abstract_state)
        return state, extra, step

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def resume(ckpt: Checkpointer, state, loader, run_dir=None):
    """Restore the newest complete checkpoint (state + data-loader position) if there is one.
    -> (state, start_step, resumed). Used by every training loop so resume works the same."""
    restored = ckpt.restore_latest(state)
    if restored is None:
        return state, 0, False
    state, extra, start = restored
    if loader is not None and "loader" in extra:
        loader.load_state_dict(extra["loader"])
    print(f"[align_jax] resumed from {ckpt.directory} at step {start}")
    return state, start, True
