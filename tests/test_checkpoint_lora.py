"""LoRA checkpoints hold the adapters and their optimizer state only, plus a record of the base
model (source, content fingerprint); resuming onto a different base is refused.

Oracles: the trainable-parameter count (every stored array is an adapter, one of its two Adam
moments, or a scalar counter / the rng), the base weights' byte size, a bit-flip of one base
weight (changes the fingerprint), the same weights on 1 and 8 devices (same fingerprint)."""

import jax
import numpy as np
import pytest

from align_jax.algorithms.preference import TrainConfig, attach_reference, train_preference
from align_jax.algorithms.preference_step import make_loss_fn
from align_jax.data import PreferencePair, TokenizeConfig
from align_jax.data.pref_data import PrefData
from align_jax.errors import ConfigError
from align_jax.losses import PrefConfig
from align_jax.models import load_causal_lm
from align_jax.sharding import make_mesh
from align_jax.train.base_model import fingerprint
from align_jax.train.optim import OptimConfig
from align_jax.train.state import param_count, split_model, tree_shardings, place
from align_jax.train.step import FAST_COMPILE
from fault_utils import pair_rows, tiny_policy, word_tokenizer  # noqa: F401

TCFG = TokenizeConfig(max_prompt_len=4, max_completion_len=8, pad_multiple=16, pad_to_max=True)


def _train(policy_dir, run_dir, steps, cache_dir):
    model, _ = load_causal_lm(policy_dir, lora_rank=2, lora_targets=("wq", "wv"))
    data = PrefData("pair", [PreferencePair(**r) for r in pair_rows(8)], word_tokenizer(), TCFG)
    data = attach_reference(model, data, PrefConfig(), "cache", cache_dir=cache_dir,
                            compiler_options=FAST_COMPILE)
    cfg = TrainConfig(steps=steps, batch_size=4, optim=OptimConfig(lr=1e-3), save_every=1,
                      keep_checkpoints=5, progress=False)
    return model, train_preference(model, data, make_loss_fn(PrefConfig(), completion_len=8), cfg,
                                   run_dir, compiler_options=FAST_COMPILE)


def _other_base(src, dst):
    """The same architecture with one weight changed: a different base model."""
    import torch
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        m.model.layers[0].mlp.down_proj.weight[0, 0] += 0.5
    m.save_pretrained(dst)
    word_tokenizer().save_pretrained(dst)
    return dst


def _extra(ckpt_dir, step):
    import orbax.checkpoint as ocp

    from align_jax.train.checkpoint import Checkpointer

    with Checkpointer(ckpt_dir) as ck:
        return ck.mngr.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"]


def _step_dir_bytes(d):
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def test_lora_checkpoint_holds_no_base_weights_and_refuses_another_base(tiny_policy, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    model, res = _train(tiny_policy, run_dir, 2, cache)
    bundle, adapters = split_model(model)
    n_adapter = param_count(adapters)
    n_base = param_count(bundle.frozen)
    assert 0 < n_adapter < n_base // 10

    from fault_utils import restore_flat

    stored = restore_flat(run_dir / "checkpoints", 2)
    big = {k: v.size for k, v in stored.items() if v.size > 2}  # not counters / the rng
    assert all("lora" in k for k in big), sorted(big)
    # params + Adam's two moments, nothing else
    assert sum(big.values()) == 3 * n_adapter, (sum(big.values()), n_adapter)
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(bundle.frozen))
    assert _step_dir_bytes(run_dir / "checkpoints" / "2") < base_bytes  # orbax metadata included

    extra = _extra(run_dir / "checkpoints", 2)
    assert extra["base"] == {"source": str(tiny_policy), "fingerprint": fingerprint(bundle.frozen)}

    # the same base resumes (and continues); another base is refused, naming both
    other = _other_base(tiny_policy, tmp_path / "other_base")
    with pytest.raises(ConfigError) as e:
        _train(other, run_dir, 3, cache)
    msg = str(e.value)
    assert str(tiny_policy) in msg and str(other) in msg and "fingerprint" in msg, msg
    _, res3 = _train(tiny_policy, run_dir, 3, cache)
    assert int(res3.state.step) == 3
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 2, 3]


def test_fingerprint_sees_every_bit_and_not_the_sharding(tiny_policy):
    model, _ = load_causal_lm(tiny_policy, lora_rank=2)
    frozen = split_model(model)[0].frozen
    fp = fingerprint(frozen)
    assert fp == fingerprint(jax.tree.map(np.array, frozen))  # host copy: same content
    mesh = make_mesh("1,4,2")
    assert fingerprint(place(frozen, tree_shardings(frozen, mesh))) == fp
    leaves, treedef = jax.tree.flatten(frozen)
    flipped = np.array(leaves[-1])
    flipped.reshape(-1).view(np.uint32)[7] ^= 1  # the lowest mantissa bit of one weight
    assert fingerprint(jax.tree.unflatten(treedef, leaves[:-1] + [flipped])) != fp
    # same values in another order is another model
    swapped = np.array(leaves[-1])[::-1].copy()
    assert fingerprint(jax.tree.unflatten(treedef, leaves[:-1] + [swapped])) != fp
