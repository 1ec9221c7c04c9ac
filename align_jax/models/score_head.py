"""Decoder + linear score head = HF's ``…ForSequenceClassification`` for every decoder family
(Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3: all transformers' GenericForSequenceClassification):
``score`` is a bias-free Linear [hidden → num_labels] applied to the final-norm hidden state of the
LAST NON-PADDING token.

"Last non-padding" is transformers' rule (modeling_layers.GenericForSequenceClassification.forward):
the rightmost position whose id != ``config.pad_token_id`` — the attention mask is NOT consulted,
and with ``pad_token_id=None`` it is the last position. A reward model was trained with that rule,
so we score with it: the rightmost position that is inside the attention mask AND not the pad id
(the same position as transformers' for right-padded batches; with no pad id, the last real token).
Note the consequence when pad == EOS: a trailing EOS is skipped and the token before it is scored.

Import/export reuse ``hf_io``'s maps; the head is ``score.weight`` [num_labels, hidden] in HF files
and [hidden, num_labels] here (axes ``embed``, ``classes``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.errors import DivergenceError
from align_jax.models import hf_io
from align_jax.models.config import FAMILIES, DecoderConfig
from align_jax.models.llama import Decoder, LoRAParam


def last_token_index(ids_bt, mask_bt, pad_token_id: int | None):
    """[B] index of the scored token (see module docstring); 0 for an all-padding row, as
    transformers' argmax over zeros gives."""
    ok = mask_bt.astype(bool)
    if pad_token_id is not None:
        ok = ok & (ids_bt != pad_token_id)
    T = ids_bt.shape[1]
    return jnp.maximum(jnp.max(jnp.where(ok, jnp.arange(T)[None, :], -1), axis=1), 0)


class ScoredDecoder(nnx.Module):
    """``model(ids, mask) -> float32 scores [B, num_labels]``.

    With LoRA adapters in the backbone the head is a :class:`LoRAParam` too, so the trainable
    filter (``train.state.trainable_filter``: adapters only when there are adapters) trains it with
    them, as PEFT's ``modules_to_save=["score"]`` does for sequence classification."""

    def __init__(self, backbone: Decoder, num_labels: int = 1, *, pad_token_id: int | None = None,
                 head: np.ndarray | None = None, rngs: nnx.Rngs | None = None):
        self.backbone = backbone
        self.num_labels = int(num_labels)
        self.pad_token_id = pad_token_id  # static: part of the graph, as in the HF config
        cfg = backbone.cfg
        if head is None:  # transformers' init: normal(0, initializer_range=0.02)
            head = nnx.initializers.normal(0.02)((rngs or nnx.Rngs(0)).params(),
                                                 (cfg.hidden_size, self.num_labels), jnp.float32)
        kind = LoRAParam if cfg.lora_rank else nnx.Param
        self.score = kind(jnp.asarray(head, cfg.param_dtype), axes=("embed", "classes"))

    @property
    def cfg(self) -> DecoderConfig:
        return self.backbone.cfg

    def __call__(self, input_ids, attention_mask, prefix=None):
        """``prefix=(prefix_ids [P, Lp], prefix_mask, row_prefix [B])``: the rows are the
        continuations of those prefixes (``models.shared_prefix``); the scored token is in them."""
        body = self.backbone
        if prefix is not None:
            from align_jax.models.shared_prefix import continuation

            body = continuation(self.backbone, *prefix)
        h_btd, _ = body.hidden_states(input_ids, attention_mask)
        idx = last_token_index(input_ids, attention_mask, self.pad_token_id)
        h_bd = jnp.take_along_axis(h_btd, idx[:, None, None], axis=1)[:, 0]
        w = self.score[...].astype(self.cfg.dtype)
        return jnp.einsum("bd,dl->bl", h_bd, w, preferred_element_type=jnp.float32)


def hf_architecture(model_type: str) -> str:
    return FAMILIES[model_type][0].replace("ForCausalLM", "ForSequenceClassification")


def load_scored_decoder(path: str | os.PathLike, mesh=None, **cfg_overrides) -> ScoredDecoder:
    """A HF ``…ForSequenceClassification`` dir (config.json + safetensors) as a ScoredDecoder;
    with a ``mesh`` every weight goes straight to its shards (rules table), as the policy's."""
    path = Path(path)
    d = json.loads((path / "config.json").read_text())
    cfg = DecoderConfig.from_hf(d, **cfg_overrides)
    tensors = hf_io.read_safetensors_dir(path)
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    if "score.weight" not in tensors:
        raise KeyError(f"{path}: no 'score.weight' tensor (not a sequence-classification model)")
    head = np.asarray(tensors.pop("score.weight"), np.float32).T  # [hidden, num_labels]
    tensors.pop("lm_head.weight", None)
    cfg = cfg.replace(tie_word_embeddings=True)  # no LM head here: the embedding stands in
    backbone = hf_io.build_decoder(cfg, hf_io.hf_to_params(tensors, cfg), mesh=mesh)
    model = ScoredDecoder(backbone, head.shape[1], pad_token_id=d.get("pad_token_id"), head=head)
    if mesh is not None:
        from align_jax.sharding import named_sharding, put

        model.score.set_value(put(model.score.get_value(), named_sharding(
            ("embed", "classes"), model.score.get_value().shape, mesh)))
    return model


def save_scored_decoder(model: ScoredDecoder, out_dir: str | os.PathLike) -> Path:
    """HF ``…ForSequenceClassification`` dir (float32 safetensors + config.json; LoRA merged)
    that ``transformers.AutoModelForSequenceClassification.from_pretrained`` loads. Written to
    temp names and renamed, so a killed export leaves no torn file."""
    from safetensors.numpy import save_file

    from align_jax.paths import resolve_dir

    cfg = model.cfg.replace(lora_rank=0)
    flat = hf_io.merged_flat_params(model.backbone)
    tensors = {k: v.astype(np.float32) for k, v in hf_io.params_to_hf(flat, cfg).items()
               if k != "lm_head.weight"}
    tensors["score.weight"] = np.ascontiguousarray(
        np.asarray(jax.device_get(model.score.get_value()), np.float32).T)
    bad = sorted(k for k, v in tensors.items() if not np.isfinite(v).all())
    if bad:
        raise DivergenceError(f"refusing to export non-finite weights ({bad[0]}, ...)")
    out = resolve_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_cfg = cfg.to_hf()
    hf_cfg.update(architectures=[hf_architecture(cfg.model_type)], torch_dtype="float32",
                  pad_token_id=model.pad_token_id,
                  id2label={str(i): f"LABEL_{i}" for i in range(model.num_labels)},
                  label2id={f"LABEL_{i}": i for i in range(model.num_labels)})
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    hf_io._atomic_write(out / "config.json", json.dumps(hf_cfg, indent=1))
    return out
