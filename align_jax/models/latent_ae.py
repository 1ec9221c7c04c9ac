"""The LD-Align guide: a latent auto-encoder over (prompt, response) pairs (arXiv 2404.06390).

* encoder ϕ(x, y) → z ∈ R^d: a BERT-family encoder (default all-MiniLM-L6-v2) reads the sentence
  pair ``[CLS] x [SEP] y [SEP]``, its last layer is mean-pooled over the real tokens, and a learned
  linear map projects the pooled vector to ``latent_dim``. The encoder weights stay frozen (the
  pooled features are a fixed sentence embedding; the projection learns which directions matter).
* decoder ψ(y | x, z): a causal LM of the policy family (default SmolLM2-135M) that reads
  ``[k prefix vectors][prompt][response]``; the prefix vectors are a learned affine map of z
  (``prefix_len`` × the decoder's hidden size), and the decoder itself trains LoRA adapters.

Reconstruction loss (LD-Align's L = −[log ψ(y|x,ϕ(x,y)) + log ψ(y′|x,ϕ(x,y′))], over a batch that
mixes references y and policy samples y′): :func:`reconstruction_loss_fn`, a token mean.
Distance: :func:`latent_distance` (``norm`` = l2 | l1 | linf).

Trainable parameters are the :class:`GuideParam` (projection, prefix map) and the decoder's
LoRA adapters: ``create_train_state(guide, opt, trainable=GUIDE_TRAINABLE)``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.data.tokenize import TokenizeConfig, sequence_batch
from align_jax.models.llama import LoRAParam
from align_jax.models.ops import embed_tokens
from align_jax.train.logprobs import shifted_mask, token_logps_from_logits

NORMS = {"l2": 2, "l1": 1, "linf": jnp.inf}


@dataclasses.dataclass(frozen=True)
class GuideConfig:
    """Shape of the guide (its own training knobs live in ``algorithms.latent_guide``)."""

    latent_dim: int = 64  # d: size of ϕ(x, y)
    prefix_len: int = 4  # k: prefix vectors the latent becomes in the decoder's input
    encoder_max_len: int = 128  # encoder tokens per (x, y) pair (longest-first truncation)
    lora_rank: int = 8  # decoder LoRA rank (0: decoder frozen, only the maps train)
    lora_alpha: float = 16.0


class GuideParam(nnx.Param):
    """A trainable parameter of the guide's own maps (projection, prefix)."""


GUIDE_TRAINABLE = nnx.Any(LoRAParam, GuideParam)


class LatentGuide(nnx.Module):
    """ϕ (frozen ``encoder`` + learned projection) and ψ (``decoder`` with latent prefix)."""

    def __init__(self, encoder, decoder, cfg: GuideConfig, *, rngs: nnx.Rngs):
        self.encoder, self.decoder, self.cfg = encoder, decoder, cfg
        e, d = encoder.config.hidden_size, cfg.latent_dim
        h, k = decoder.cfg.hidden_size, cfg.prefix_len
        # N(0, 1/d) entries: a Johnson–Lindenstrauss projection, so distances are meaningful
        # (≈ the pooled embedding's) before any training
        self.proj_w = GuideParam(jax.random.normal(rngs.params(), (e, d)) / np.sqrt(d),
                                 axes=(None, None))
        self.proj_b = GuideParam(jnp.zeros((d,)), axes=(None,))
        self.prefix_w = GuideParam(0.02 * jax.random.normal(rngs.params(), (d, k * h)),
                                   axes=(None, None))
        self.prefix_b = GuideParam(jnp.zeros((k * h,)), axes=(None,))

    def encode(self, ids_bt, mask_bt, types_bt=None):
        """ϕ(x, y) [B, d] from the encoder's pair tokens."""
        h = self.encoder(ids_bt, mask_bt, types_bt, all_layers=False)
        h = jax.lax.stop_gradient(h).astype(jnp.float32)  # the encoder is frozen
        m = mask_bt.astype(jnp.float32)[..., None]
        pooled = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        return pooled @ self.proj_w[...] + self.proj_b[...]

    def recon_logps(self, z_bd, ids_bt, attn_bt, loss_mask_bt):
        """Per-token log ψ(y_t | x, z, y_<t) [B, T-1] (0 off the response) and its mask."""
        dec, k = self.decoder, self.cfg.prefix_len
        b, t = ids_bt.shape
        prefix = (z_bd @ self.prefix_w[...] + self.prefix_b[...]).reshape(b, k, -1)
        tok = embed_tokens(dec.cfg, dec.embed[...], ids_bt)
        emb = jnp.concatenate([prefix.astype(tok.dtype), tok], axis=1)
        ids = jnp.concatenate([jnp.zeros((b, k), ids_bt.dtype), ids_bt], axis=1)
        attn = jnp.concatenate([jnp.ones((b, k), attn_bt.dtype), attn_bt], axis=1)
        h, _ = dec.hidden_states(ids, attn, inputs_embeds=emb)
        logits = dec.logits_from_hidden(h[:, k:]).astype(jnp.float32)
        return (token_logps_from_logits(logits, ids_bt, loss_mask_bt, attn_bt),
                shifted_mask(loss_mask_bt, attn_bt))


def latent_distance(z_a, z_b, norm: str = "l2"):
    """s = ‖z_a − z_b‖ per row; ``norm`` = l2 | l1 | linf."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}: expected one of {sorted(NORMS)}")
    return jnp.linalg.norm(jnp.asarray(z_a) - jnp.asarray(z_b), ord=NORMS[norm], axis=-1)


def reconstruction_loss_fn():
    """``loss_fn(guide, batch, rng)`` for the one step: token-mean −log ψ(y | x, ϕ(x, y)) over the
    batch (references and samples alike); metrics ``nll`` as (sum, count)."""

    def loss_fn(guide, batch, rng):
        del rng
        z = guide.encode(batch["enc_input_ids"], batch["enc_attention_mask"],
                         batch["enc_token_type_ids"])
        logp, mask = guide.recon_logps(z, batch["input_ids"], batch["attention_mask"],
                                       batch["loss_mask"])
        nll, count = -logp.sum(), mask.sum()
        return nll / jnp.maximum(count, 1.0), {"nll": (nll, count)}

    return loss_fn


def encoder_inputs(enc_tok, prompts: Sequence[str], responses: Sequence[str],
                   max_len: int) -> dict[str, np.ndarray]:
    """The encoder's sentence-pair tokens, padded to ``max_len`` (one compiled shape)."""
    t = enc_tok(list(prompts), list(responses), padding="max_length", truncation="longest_first",
                max_length=max_len, return_tensors="np")
    types = t.get("token_type_ids", np.zeros_like(t["input_ids"]))
    return {"enc_input_ids": t["input_ids"].astype(np.int32),
            "enc_attention_mask": t["attention_mask"].astype(np.int32),
            "enc_token_type_ids": np.asarray(types, np.int32)}


def guide_batch(dec_tok, enc_tok, prompts: Sequence, responses: Sequence[str],
                tcfg: TokenizeConfig, enc_max_len: int, length: int | None = None) -> dict:
    """Decoder rows (chat-templated prompt + response, ``loss_mask`` on the response; right-padded
    to ``length`` if given) and the encoder's pair tokens of the same (x, y)."""
    from align_jax.data import prompt_text
    from align_jax.data.tokenize import pad_id_of

    out = sequence_batch(dec_tok, list(prompts), list(responses), tcfg)
    if length is not None:
        t = out["input_ids"].shape[1]
        if t > length:
            raise ValueError(f"a guide batch has length {t} > the fixed length {length}")
        pad = {"input_ids": pad_id_of(dec_tok), "attention_mask": 0, "loss_mask": 0}
        out = {k: np.pad(v, [(0, 0), (0, length - t)], constant_values=pad[k])
               for k, v in out.items()}
    out.update(encoder_inputs(enc_tok, [prompt_text(p) for p in prompts], responses, enc_max_len))
    return out


def build_guide(decoder, encoder, cfg: GuideConfig, seed: int = 0) -> LatentGuide:
    return LatentGuide(encoder, decoder, cfg, rngs=nnx.Rngs(seed))


def load_guide(cfg: GuideConfig, model: str | None = None, encoder: str | None = None,
               dtype: str = "float32", mesh=None, seed: int = 0):
    """(guide, decoder tokenizer, encoder tokenizer): the decoder from ``model`` (None = the
    offline SmolLM2) with LoRA, the encoder from ``encoder`` (None = MiniLM)."""
    from align_jax.models import load_causal_lm, load_encoder

    kw = dict(lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha) if cfg.lora_rank else {}
    dec, dec_tok = load_causal_lm(model, dtype=dtype, mesh=mesh, **kw)
    enc, enc_tok = load_encoder(encoder)
    return build_guide(dec, enc, cfg, seed), dec_tok, enc_tok
