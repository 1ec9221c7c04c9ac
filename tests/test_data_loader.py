"""Loader: deterministic order by (seed, epoch), exact resume from state_dict, per-host slicing."""
import numpy as np
import pytest

from align_jax.data import DataLoader, epoch_permutation

N = 23


def take(loader, n):
    return [list(next(loader)) for _ in range(n)]


def make(**kw):
    kw = {"batch_size": 4, "seed": 7, "process_index": 0, "process_count": 1, **kw}
    return DataLoader(list(range(N)), **kw)


def test_deterministic_and_seed_epoch_dependent():
    a, b = take(make(), 12), take(make(), 12)
    assert a == b
    assert take(make(seed=8), 5) != a[:5]
    spe = N // 4  # 5 batches per epoch with drop_last
    epoch0, epoch1 = a[:spe], a[spe:2 * spe]
    assert epoch0 != epoch1  # reshuffled each epoch
    # each epoch visits distinct examples, in the (seed, epoch) permutation order
    assert sum(epoch0, []) == list(epoch_permutation(N, 7, 0)[:spe * 4])
    assert sum(epoch1, []) == list(epoch_permutation(N, 7, 1)[:spe * 4])


def test_no_shuffle_and_partial_last_batch():
    loader = make(shuffle=False, drop_last=False, num_epochs=1)
    batches = list(loader)
    assert batches[0] == [0, 1, 2, 3] and batches[-1] == [20, 21, 22]
    assert sum(batches, []) == list(range(N)) and loader.steps_per_epoch == 6


@pytest.mark.parametrize("k", [0, 3, 5, 7])  # incl. exactly at and across the epoch boundary
def test_resume_from_state_dict_gives_same_following_batches(k):
    ref = make()
    take(ref, k)
    state = ref.state_dict()
    expected = take(ref, 8)
    resumed = make()
    resumed.load_state_dict(dict(state))  # e.g. after a JSON round trip in a checkpoint
    assert take(resumed, 8) == expected


def test_load_state_dict_rejects_mismatch():
    state = make().state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        make(batch_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples"):
        DataLoader(list(range(N + 1)), 4, seed=7, process_index=0,
                   process_count=1).load_state_dict(state)


def test_num_epochs_stops():
    assert len(list(make(num_epochs=2))) == 2 * (N // 4)


def test_multi_host_slices_partition_the_global_batch():
    hosts = [make(batch_size=8, process_index=h, process_count=4) for h in range(4)]
    single = make(batch_size=8)
    for _ in range(5):
        parts = [next(h) for h in hosts]
        assert all(len(p) == 2 for p in parts)
        assert sum(parts, []) == next(single)  # hosts in order = the global batch
    with pytest.raises(ValueError, match="divisible"):
        make(batch_size=6, process_count=4)


def test_resume_with_different_host_count_keeps_global_order():
    one = make(batch_size=8)
    take(one, 2)
    state = one.state_dict()
    two = [make(batch_size=8, process_index=h, process_count=2) for h in range(2)]
    for h in two:
        h.load_state_dict(state)
    assert sum((next(h) for h in two), []) == next(one)


def test_collate_fn_and_defaults_from_jax():
    loader = DataLoader(list(range(10)), 2, collate_fn=np.asarray)  # jax: 1 process on CPU
    assert loader.process_count == 1 and isinstance(next(loader), np.ndarray)
    with pytest.raises(ValueError, match="no batch"):
        DataLoader([1, 2], 4, process_index=0, process_count=1)


def test_balanced_order_takes_groups_in_turn():
    from align_jax.data.loader import balanced_order

    groups = ["r"] * 6 + ["b"] * 3  # the smaller group runs out first, the larger continues
    order = balanced_order(groups, seed=3, epoch=0)
    assert sorted(order.tolist()) == list(range(9))  # a permutation: nobody lost or repeated
    labels = [groups[i] for i in order]
    assert labels == ["r", "b", "r", "b", "r", "b", "r", "r", "r"]
    assert order.tolist() == balanced_order(groups, seed=3, epoch=0).tolist()  # deterministic
    assert order.tolist() != balanced_order(groups, seed=3, epoch=1).tolist()  # reshuffled
    assert [groups[i] for i in balanced_order(groups, 0, 0, shuffle=False)] == labels
    assert balanced_order(groups, 0, 0, shuffle=False).tolist()[:4] == [0, 6, 1, 7]
    # the loader: every batch of 2 holds one of each while both groups last
    loader = DataLoader(list(range(9)), 2, seed=1, groups=groups, drop_last=True)
    for _ in range(3):
        assert sorted(groups[i] for i in next(loader)) == ["b", "r"]
    with pytest.raises(Exception, match="3 labels for 9"):
        DataLoader(list(range(9)), 2, groups=groups[:3])
