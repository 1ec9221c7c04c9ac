"""Shared-prefix forwards (models.shared_prefix): a prefix run once (its keys / values kept)
and the rows that continue it give the hidden states of the plain forward over prefix + row —
on Llama and on Gemma 2 (sliding window shorter than the prefix, soft-caps); the host-side
split and its cost in padded positions on hand-computed cases. The reward-model and
implicit-margin paths that use it are checked against transformers / the plain pass in
test_reward_model.py and test_selection.py."""
import numpy as np
import pytest
import transformers
from flax import nnx

from align_jax.models import load_causal_lm
from align_jax.models.shared_prefix import (continuation, pad_prefixes, padded_tokens,
                                            prefix_rows, split_rows)
from test_decoder_families import hf_config
from test_decoder_hf import _save_random

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def _padded(rows, length):
    ids = np.zeros((len(rows), length), np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_continuation_equals_plain_forward(family, tmp_path):
    cfg = transformers.LlamaConfig(**TINY) if family == "llama" else hf_config("gemma2")
    _save_random(cfg, tmp_path)
    model, _ = load_causal_lm(tmp_path)
    rng = np.random.default_rng(0)
    prefixes = [rng.integers(3, 97, n).tolist() for n in (5, 9, 0)]  # an empty prefix too
    suffixes = [rng.integers(3, 97, n).tolist() for n in (3, 6, 1, 4, 7)]
    row_prefix = np.array([0, 1, 1, 0, 2], np.int32)
    rows = [prefixes[p] + s for p, s in zip(row_prefix, suffixes)]

    @nnx.jit
    def plain(m, ids, mask):
        return m.hidden_states(ids, mask)[0]

    @nnx.jit
    def shared(m, pids, pmask, rp, ids, mask):
        return continuation(m, pids, pmask, rp).hidden_states(ids, mask)[0]

    want = np.asarray(plain(model, *_padded(rows, 16)))
    got = np.asarray(shared(model, *_padded(prefixes, 12), row_prefix, *_padded(suffixes, 8)))
    for i, (p, s) in enumerate(zip(row_prefix, suffixes)):
        n = len(prefixes[p])
        np.testing.assert_allclose(got[i, :len(s)], want[i, n:n + len(s)], atol=1e-5)


def test_split_rows_and_cost_hand_case():
    rows = [[1, 2, 3, 4], [1, 2, 3, 9, 9], [1, 2, 7], [5, 6, 7, 8]]
    split = split_rows(rows, groups=["a", "a", "a", "b"], caps=[3, 4, 1, 3])
    # group a: common prefix [1, 2] capped by row 2's cap 1; group b alone: up to its cap 3
    assert split.prefixes == [[1], [5, 6, 7]]
    assert split.row_prefix.tolist() == [0, 0, 0, 1]
    assert split.suffixes == [[2, 3, 4], [2, 3, 9, 9], [2, 7], [8]]
    assert all(split.prefixes[p] + s == r
               for p, s, r in zip(split.row_prefix, split.suffixes, rows))
    # a row never gives its last token to the prefix, whatever the cap
    assert split_rows([[4, 4], [4, 4]], [0, 0], [9, 9]).suffixes == [[4], [4]]
    assert prefix_rows(3, 16) == 4 and prefix_rows(3, 16, shards=8) == 8
    assert prefix_rows(9, 8) == 8
    # one batch of all four rows (batch 4): 2 prefix rows x 16 + 4 rows x 16 positions
    assert padded_tokens(split, [[0, 1, 2, 3]], 4) == 2 * 16 + 4 * 16
    ids, mask, where = pad_prefixes(split, [3, 0], 4, pad_id=0)
    assert ids.shape == (2, 16) and where.tolist() == [0, 1]
    assert ids[0, :3].tolist() == [5, 6, 7] and mask[0].sum() == 3 and mask[1].sum() == 1
