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

A step that is there but does not restore (a truncated file, a disk error) is moved aside to
``<step>.corrupt-<n>`` with a warning and the next-newest is tried (:meth:`restore_latest`); only
when none restores does resuming stop, with one line. A step whose stored tree does not match
the target (the config changed between runs) is a :class:`~align_jax.errors.ConfigError` and is
left where it is. Every save is verified once written (commit marker, orbax's metadata matches
the saved tree, no empty file), so a torn write is caught at save time, not at resume.

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
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from align_jax.errors import CheckpointError, ConfigError
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


def _move_aside(directory, name: str, tag: str, why: str) -> str:
    """Rename ``directory/name`` to ``name.<tag>-<n>`` (kept for inspection, invisible to orbax,
    which only lists integer names). Returns the new name. Process 0 only."""
    directory = epath.Path(directory)
    n = 0
    while (directory / f"{name}.{tag}-{n}").exists():
        n += 1
    target = f"{name}.{tag}-{n}"
    log.warning("checkpoint %s %s; moved to %s", directory / name, why, target)
    (directory / name).rename(directory / target)
    return target


def _sync(tag: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(tag)


def quarantine_incomplete(directory) -> list[str]:
    """Rename step dirs lacking orbax's commit marker out of orbax's sight. Returns their names."""
    directory = epath.Path(directory)
    moved = []
    if jax.process_index() == 0 and directory.exists():
        for p in directory.iterdir():
            if p.is_dir() and p.name.isdigit() and not (p / COMMIT_MARKER).exists():
                _move_aside(directory, p.name, "incomplete", f"is incomplete (no {COMMIT_MARKER})")
                moved.append(p.name)
    _sync("align_jax.checkpoint.quarantine")
    return moved


def _files(path: epath.Path):
    """Every file below ``path`` (epath has no recursive glob: it would be an RPC storm on GCS;
    a step dir holds a dozen files)."""
    for p in path.iterdir():
        if p.is_dir():
            yield from _files(p)
        else:
            yield p


def _shape_dtype(x) -> tuple:
    return tuple(int(d) for d in x.shape), str(jax.numpy.dtype(x.dtype))


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
        # explicit handlers: item metadata (used to verify saves and to check a step before
        # restoring it) is readable by a manager that has not saved anything itself
        self.mngr = ocp.CheckpointManager(
            self.directory, options=opts,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "extra": ocp.JsonCheckpointHandler()})
        self._pending: tuple[int, dict] | None = None  # last save, verified once it is written

    def save(self, step: int, state, extra: dict | None = None, force: bool = False) -> bool:
        """Save if `step` is on the interval (or `force`). Returns whether a save started."""
        self._verify_pending()
        flat = to_flat_dict(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(flat),
                                  extra=ocp.args.JsonSave(dict(extra or {})))
        started = bool(self.mngr.save(int(step), args=args, force=force))
        if started:
            self._pending = (int(step), {k: _shape_dtype(v) for k, v in flat.items()})
        return started

    def verify(self, step: int, expected: dict | None = None) -> str | None:
        """Cheap check of a written step: commit marker, readable orbax metadata whose keys,
        shapes and dtypes are ``expected`` ({flat key: (shape, dtype)}), no empty file.
        -> None when fine, else what is wrong. No array data is read."""
        path = self.directory / str(step)
        if not (path / COMMIT_MARKER).exists():
            return f"no {COMMIT_MARKER}"
        empty = sorted(str(f.relative_to(path)) for f in _files(path) if f.stat().length == 0)
        if empty:
            return f"empty file(s) {', '.join(empty[:3])}"
        try:
            got = self._stored(step)
        except Exception as e:  # noqa: BLE001  (any unreadable metadata means a bad step)
            return f"unreadable metadata ({_why(e)})"
        if expected is not None and got != expected:
            diff = sorted(set(got.items()) ^ set(expected.items()))
            return f"metadata differs from what was saved (e.g. {diff[0][0]})"
        return None

    def _stored(self, step: int) -> dict:
        """{flat key: (shape, dtype)} of a step's state, from orbax's metadata only."""
        meta = self.mngr.item_metadata(int(step))["state"]
        return {k: _shape_dtype(v) for k, v in meta.items()}

    def _verify_pending(self) -> None:
        """Wait for the last save, then verify it; a torn write stops the run here."""
        if self._pending is None:
            return
        step, expected = self._pending
        self._pending = None
        self.mngr.wait_until_finished()
        # process 0 verifies and moves; every process learns the verdict (and stops together)
        why = self.verify(step, expected) if jax.process_index() == 0 else None
        moved = (_move_aside(self.directory, str(step), "corrupt", f"failed verification: {why}")
                 if why is not None else None)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            bad = bool(multihost_utils.broadcast_one_to_all(np.int32(why is not None)))
            why = why or ("see process 0" if bad else None)
        if why is not None:
            self.mngr.reload()
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} failed verification right after it was "
                f"written ({why}); moved to {moved}. Check the disk, then rerun to resume from "
                f"the previous checkpoint")

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
        """-> (state, extra, step) of the newest checkpoint that restores, or None when there is
        none. A step that fails to restore is moved aside (``<step>.corrupt-<n>``, with a warning)
        and the next-newest is tried; CheckpointError when steps existed but none restored."""
        self.mngr.reload()
        expected = {k: _shape_dtype(v) for k, v in to_flat_dict(abstract_state).items()}
        failed = []
        for step in reversed(self.all_steps()):
            self._check_matches(step, expected)
            try:
                state, extra = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001  (any failure: try the previous step)
                why = _why(e)
                if jax.process_index() == 0:
                    _move_aside(self.directory, str(step), "corrupt", f"does not restore ({why})")
                _sync("align_jax.checkpoint.fallback")
                self.mngr.reload()
                failed.append(f"{step} ({why})")
                continue
            if failed:
                print(f"[align_jax] warning: checkpoint(s) {', '.join(failed)} did not restore "
                      f"and were moved aside; resuming from step {step}")
            return state, extra, step
        if failed:
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores: step {'; step '.join(failed)}. They "
                "were moved aside as <step>.corrupt-<n>; rerunning starts from step 0")
        return None

    def _check_matches(self, step: int, expected: dict) -> None:
        """A step whose stored tree differs from the target came from another config: say so
        instead of treating it as corrupt (it is left where it is)."""
        try:
            got = self._stored(step)
        except Exception:  # noqa: BLE001  (unreadable: the restore attempt reports it)
            return
        if got != expected:
            k = sorted(set(got) ^ set(expected)) or sorted(
                k for k in got if got[k] != expected[k])
            raise ConfigError(
                f"checkpoint {self.directory / str(step)} holds a different model/optimizer state "
                f"than this config builds (first difference: {k[0]}; {len(got)} vs "
                f"{len(expected)} arrays): the config changed since it was written. Use a new "
                "out_dir, or the original config to resume")

    def wait(self) -> None:
        self.mngr.wait_until_finished()
        self._verify_pending()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _why(e: BaseException, limit: int = 200) -> str:
    """``Type: message`` of the root cause (orbax wraps tensorstore's informative error, e.g.
    ``OUT_OF_RANGE … value of size 0``, in a generic one), on one line."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    text = f"{type(e).__name__}: " + " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def resume(ckpt: Checkpointer, state, loader, run_dir=None, base: dict | None = None):
    """Restore the newest complete checkpoint (state + data-loader position) if there is one.
    -> (state, start_step, resumed). Used by every training loop so resume works the same.
    ``base``: this run's LoRA base (``train.base_model.base_identity``); a checkpoint trained on
    another base is refused (ConfigError naming both)."""
    from align_jax.train.base_model import check_same_base

    restored = ckpt.restore_latest(state)
    if restored is None:
        return state, 0, False
    state, extra, start = restored
    check_same_base(extra.get("base"), base, ckpt.directory / str(start))
    if loader is not None and "loader" in extra:
        loader.load_state_dict(extra["loader"])
    print(f"[align_jax] resumed from {ckpt.directory} at step {start}")
    return state, start, True
