"""LoRA training: only adapters move, LoRA-off is the base model, the merged export equals
the base+adapter forward."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from align_jax.models import hf_io
from align_jax.models.llama import LoRAParam
from align_jax.train.optim import make_optimizer
from align_jax.train.state import create_train_state, has_lora, param_count
from align_jax.train.step import FAST_COMPILE, lm_loss_fn, make_train_step

TARGETS = ("wq", "wv", "w_down")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import transformers

    torch.manual_seed(1)
    hf_cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    base_dir = tmp_path_factory.mktemp("base")
    hf.save_pretrained(base_dir)
    model = hf_io.load_hf_dir(base_dir, lora_rank=4, lora_alpha=8.0, lora_targets=TARGETS)
    base0 = {k: np.asarray(v) for k, v in hf_io.flat_params(model).items() if "lora_" not in k}
    lora0 = {k: np.asarray(v) for k, v in hf_io.flat_params(model).items() if "lora_" in k}

    rng = np.random.default_rng(2)
    ids = rng.integers(0, 97, (4, 10)).astype(np.int32)
    am = np.ones_like(ids)
    batch = dict(input_ids=ids, attention_mask=am, loss_mask=am)
    opt = make_optimizer("adamw", lr=1e-2, schedule="constant", weight_decay=0.01)
    state, bundle = create_train_state(model, opt, 0)
    opt_elems = param_count(state.opt_state)
    step = make_train_step(lm_loss_fn(), opt, bundle, compiler_options=FAST_COMPILE)
    losses = []
    for _ in range(3):
        state, m = step(state, batch)
        losses.append(float(m["loss"][0]))
    out_dir = tmp_path_factory.mktemp("merged")
    trained_model = bundle.merge(state.params)
    hf_io.save_hf_dir(trained_model, out_dir)
    with torch.no_grad():
        hf_base = hf(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
        hf_merged = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()(
            input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    return dict(state=state, bundle=bundle, base0=base0, lora0=lora0, ids=ids, losses=losses,
                opt_elems=opt_elems, trained=trained_model, hf_base=hf_base,
                hf_merged=hf_merged, out_dir=out_dir)


def test_only_adapters_trainable_and_changed(trained):
    state = trained["state"]
    assert has_lora(trained["trained"])
    leaves = jax.tree.leaves(state.params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert leaves and all(isinstance(v, LoRAParam) for v in leaves)
    n_lora = sum(v.size for v in trained["lora0"].values())
    assert param_count(state.params) == n_lora
    # AdamW state = mu + nu for the adapters (+ scalar counts); no base-sized buffers.
    assert 2 * n_lora <= trained["opt_elems"] <= 2 * n_lora + 8
    flat = {k: np.asarray(v) for k, v in hf_io.flat_params(trained["trained"]).items()}
    for k, v in trained["base0"].items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)  # base bit-identical
    for k, v in trained["lora0"].items():
        assert np.abs(flat[k] - v).max() > 1e-4, k  # every adapter moved
    assert trained["losses"][-1] < trained["losses"][0]


@pytest.fixture(scope="module")
def logits(trained):
    ids = trained["ids"]
    merged = hf_io.build_decoder(trained["trained"].cfg.replace(lora_rank=0),
                                 hf_io.merged_flat_params(trained["trained"]))
    bundle, params = trained["bundle"], trained["state"].params

    def f(params, merged):
        on = bundle.merge(params)(ids)
        off = bundle.merge(params, lora_off=True)(ids)
        return on, off, merged(ids)

    return jax.device_get(jax.jit(f, compiler_options=FAST_COMPILE)(params, merged))


def test_lora_off_is_base_model(trained, logits):
    on, off, _ = logits
    np.testing.assert_allclose(off, trained["hf_base"], atol=1e-5, rtol=1e-5)
    assert np.abs(on - trained["hf_base"]).max() > 1e-3  # adapters do change the output


def test_merged_export_equals_adapter_forward(trained, logits):
    on, _, merged = logits
    np.testing.assert_allclose(merged, on, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(trained["hf_merged"], on, atol=1e-5, rtol=1e-5)
