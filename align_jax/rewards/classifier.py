"""Sequence-classification scorers from HF checkpoints: our JAX encoder + the checkpoint's score
head, e.g. a cost/safety model for the RefAlign safety variant at paper scale.

Supported heads (HF naming): `BertForSequenceClassification` (pooler dense+tanh on [CLS] →
`classifier`) and `RobertaForSequenceClassification` (`classifier.dense`+tanh on <s> →
`classifier.out_proj`). `load_sequence_classifier(dir)(texts) -> logits [B, num_labels]`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from align_jax.models.encoder import _read_safetensors, load_encoder, resolve_encoder_dir


def _head_weights(sd: dict, arch: str, source: str) -> dict[str, np.ndarray]:
    def get(*names):
        for n in names:
            if n in sd:
                return np.asarray(sd[n], np.float32)
        raise KeyError(f"{source}: checkpoint has none of {names} (architecture {arch})")

    if arch.startswith("Roberta") or arch.startswith("XLMRoberta"):
        return {"dense_w": get("classifier.dense.weight"), "dense_b": get("classifier.dense.bias"),
                "out_w": get("classifier.out_proj.weight"), "out_b": get("classifier.out_proj.bias")}
    return {"dense_w": get("bert.pooler.dense.weight", "pooler.dense.weight"),
            "dense_b": get("bert.pooler.dense.bias", "pooler.dense.bias"),
            "out_w": get("classifier.weight"), "out_b": get("classifier.bias")}


class SequenceClassifier:
    """texts -> float32 logits [B, num_labels] (batched, padded to power-of-two lengths)."""

    def __init__(self, encoder, tokenizer, head: dict[str, np.ndarray], batch_size: int = 32,
                 max_length: int = 512):
        self.encoder, self.tokenizer = encoder, tokenizer
        self.head = {k: jnp.asarray(v) for k, v in head.items()}
        self.batch_size, self.max_length = batch_size, max_length

        @jax.jit
        def logits(ids, mask, tt):
            h = self.encoder(ids, mask, tt, all_layers=False)[:, 0]  # [CLS] / <s>
            x = jnp.tanh(h @ self.head["dense_w"].T + self.head["dense_b"])
            return x @ self.head["out_w"].T + self.head["out_b"]

        self._logits = logits

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i:i + self.batch_size]), truncation=True,
                                 max_length=self.max_length)
            n = len(enc["input_ids"])
            T = 1 << max(3, (max(len(x) for x in enc["input_ids"]) - 1).bit_length())
            ids = np.zeros((n, T), np.int32)
            mask = np.zeros((n, T), np.int32)
            tt = np.zeros((n, T), np.int32)
            pad = self.tokenizer.pad_token_id or 0
            ids[:] = pad
            for r, seq in enumerate(enc["input_ids"]):
                ids[r, :len(seq)], mask[r, :len(seq)] = seq, 1
            out.append(np.asarray(self._logits(ids, mask, tt)))
        return np.concatenate(out, 0).astype(np.float32)


def load_sequence_classifier(path_or_id: str | Path, batch_size: int = 32) -> SequenceClassifier:
    model_dir = resolve_encoder_dir(path_or_id)
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    arch = (cfg.get("architectures") or ["BertForSequenceClassification"])[0]
    if not arch.endswith("ForSequenceClassification"):
        raise ValueError(f"{model_dir}/config.json: 'architectures'={arch!r} is not a "
                         "*ForSequenceClassification checkpoint")
    encoder, tokenizer = load_encoder(model_dir)
    head = _head_weights(_read_safetensors(Path(model_dir)), arch, str(model_dir))
    return SequenceClassifier(encoder, tokenizer, head, batch_size)
