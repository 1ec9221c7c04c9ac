"""Deterministic, resumable, multi-host batch iteration over an in-memory example list.

Order: epoch e visits the examples in ``permutation(seed, e)`` (identical on every host, and
independent of the host count), cut into consecutive global batches of ``batch_size``. On a
multi-host run each host takes its contiguous ``batch_size // process_count`` slice of every
global batch and collates only that, so hosts step in lockstep and together cover the global
batch exactly once (assemble with ``jax.make_array_from_process_local_data``).

Position = (epoch, index of the next global batch in that epoch). ``state_dict()`` taken after
k batches and loaded into a fresh loader makes it yield batch k+1 next, so a killed run resumes
on the same batch. Save it together with the train state.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from align_jax.errors import ConfigError

logger = logging.getLogger(__name__)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The visiting order of one epoch: a function of (seed, epoch) only."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch]))).permutation(
        num_examples
    )


def balanced_order(groups: Sequence, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """One epoch's visiting order that takes the groups in turn: g1, g2, g1, g2, … (each group in
    its own shuffled order); when a group runs out the others continue. So every batch of size
    ≥ #groups holds each group until the smallest is used up, instead of whatever a plain shuffle
    happens to put together (e.g. RefAlign safety: a risky AND a benign prompt in every step, so
    each update sees both the reward for refusing and the penalty for over-refusing)."""
    labels = list(dict.fromkeys(groups))  # first-seen order: deterministic, no sorting of types
    members = [np.array([i for i, g in enumerate(groups) if g == lab]) for lab in labels]
    if shuffle:
        members = [m[epoch_permutation(len(m), seed + 7919 * j, epoch)]
                   for j, m in enumerate(members)]
    out = []
    for pos in range(max(len(m) for m in members)):
        out.extend(int(m[pos]) for m in members if pos < len(m))
    return np.array(out, np.int64)


def _default_process() -> tuple[int, int]:
    import jax  # lazy: data code must stay importable (and cheap) without touching devices

    return jax.process_index(), jax.process_count()


class DataLoader:
    """Iterate batches of ``examples``: ``collate_fn(list_of_examples)`` (default: the list).

    Args:
      batch_size: GLOBAL batch size (all hosts together); must divide by ``process_count``.
      shuffle: permute each epoch with :func:`epoch_permutation`; else dataset order.
      drop_last: drop the final partial batch of an epoch (fixed shapes for jit). If False the
        partial batch is yielded (split as evenly as possible across hosts).
      num_epochs: stop after this many epochs; None = repeat forever.
      groups: one label per example; if given, each epoch takes the groups in turn
        (:func:`balanced_order`) so batches mix them evenly.
      process_index / process_count: default ``jax.process_index()`` / ``jax.process_count()``.
    """

    def __init__(
        self,
        examples: Sequence[Any],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        num_epochs: int | None = None,
        collate_fn: Callable[[list], Any] | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        groups: Sequence | None = None,
    ):
        if process_index is None or process_count is None:
            pi, pc = _default_process()
            process_index = pi if process_index is None else process_index
            process_count = pc if process_count is None else process_count
        if batch_size <= 0 or batch_size % process_count:
            raise ConfigError(f"batch_size={batch_size} must be positive and divisible by "
                             f"process_count={process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if len(examples) == 0:
            raise ConfigError("no examples to train on (empty dataset, or every record was "
                              "skipped/filtered)")
        if drop_last and len(examples) < batch_size:
            raise ConfigError(f"drop_last=True with {len(examples)} examples < batch_size="
                             f"{batch_size} would yield no batch at all")
        if groups is not None and len(groups) != len(examples):
            raise ConfigError(f"groups has {len(groups)} labels for {len(examples)} examples")
        self.examples = examples
        self.groups = None if groups is None else list(groups)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_epochs = num_epochs
        self.collate_fn = collate_fn
        self.process_index = process_index
        self.process_count = process_count
        self.epoch = 0
        self.index = 0
        self._perm_epoch: int | None = None
        self._perm: np.ndarray | None = None
        if drop_last and len(examples) % batch_size:
            logger.info("drop_last: %d of %d examples are left out of each epoch (a different "
                        "subset each epoch when shuffling)", len(examples) % batch_size,
                        len(examples))

    @property
    def steps_per_epoch(self) -> int:
        n, b = len(self.examples), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            n = len(self.examples)
            if self.groups is not None:
                self._perm = balanced_order(self.groups, self.seed, epoch, self.shuffle)
            else:
                self._perm = epoch_permutation(n, self.seed, epoch) if self.shuffle else np.arange(n)
            self._perm_epoch = epoch
        return self._perm

    def global_indices(self, epoch: int, index: int) -> np.ndarray:
        """Dataset indices of global batch ``index`` of ``epoch`` (all hosts)."""
        return self._order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]

    def local_indices(self, epoch: int, index: int) -> np.ndarray:
        """This host's share of global batch ``index`` of ``epoch``."""
        idx = self.global_indices(epoch, index)
        if len(idx) == self.batch_size:
            per = self.local_batch_size
            return idx[self.process_index * per:(self.process_index + 1) * per]
        return np.array_split(idx, self.process_count)[self.process_index]

    def __iter__(self):
        return self

    def __next__(self):
        if self.index >= self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        idx = self.local_indices(self.epoch, self.index)
        self.index += 1
        batch = [self.examples[int(i)] for i in idx]
        return self.collate_fn(batch) if self.collate_fn is not None else batch

    def state_dict(self) -> dict[str, int]:
        """Position plus what must match on resume (a changed dataset or batch size would make
        'the same batch' meaningless, so :meth:`load_state_dict` checks them)."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "batch_size": self.batch_size, "num_examples": len(self.examples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, mine in (("seed", self.seed), ("batch_size", self.batch_size),
                          ("num_examples", len(self.examples))):
            if key in state and int(state[key]) != mine:
                raise ConfigError(f"the checkpoint's data loader has {key}={state[key]} but this "
                                  f"run has {key}={mine}: cannot resume on the same batch (the "
                                  "data or batch size changed; use a new out_dir)")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
