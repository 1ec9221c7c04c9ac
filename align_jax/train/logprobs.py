"""Token and sequence log-probabilities of a causal LM, chunked over the sequence.

Alignment (labels shifted by one, as in TRL/HF): for ids of length T the output has T-1 columns and

    logps_bt[:, t] = log p(ids[:, t+1] | ids[:, :t+1])        t = 0 .. T-2

so it lines up with ``mask_bt = loss_mask[:, 1:]``: a response token at position j
(loss_mask[:, j] = 1) is scored by column j-1. Columns whose target is not a response token are returned as exactly 0, so
``logps_bt.sum(-1)`` is already the response log-likelihood. Everything is float32 log_softmax.

Memory: a 128k vocab makes [B,T,V] float32 logits the biggest tensor of a step. With ``chunk_size``
the final hidden states are split into sequence chunks and each chunk's logits are made, reduced to
(logp, entropy) and dropped inside a ``lax.map``; the chunk body is rematerialised
(``jax.checkpoint``) so the backward pass keeps only [B,C,D] hidden chunks, never [B,T,V] logits.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class SeqLogps(NamedTuple):
    sum_b: jax.Array  # sum of response-token log-probs (TRL's "logps")
    mean_b: jax.Array  # sum / max(count, 1)
    count_b: jax.Array  # number of response tokens (float32)


def shifted_mask(loss_mask_bt, attention_mask_bt=None):
    """The [B, T-1] mask that multiplies ``token_logps``: target token is a scored response token.
    ``loss_mask=None`` scores every real (non-padding) token after the first."""
    m = attention_mask_bt if loss_mask_bt is None else loss_mask_bt
    if m is None:
        raise ValueError("need a loss_mask or an attention_mask")
    return m[:, 1:].astype(jnp.float32)


def _logp_and_entropy(logits_btv, targets_bt):
    """float32 log_softmax gathered at targets, and the entropy of the full distribution."""
    logits = logits_btv.astype(jnp.float32)
    lse_bt = jax.nn.logsumexp(logits, axis=-1)
    tgt_bt = jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]
    logp_bt = tgt_bt - lse_bt
    # H = lse - E_p[logit]; p computed from the same logits so it is exact in float32.
    p = jnp.exp(logits - lse_bt[..., None])
    ent_bt = lse_bt - jnp.sum(p * logits, axis=-1)
    return logp_bt, ent_bt


def token_logps_from_logits(logits_btv, input_ids_bt, loss_mask_bt=None, attention_mask_bt=None,
                            return_entropy: bool = False):
    """Pure variant over given logits [B,T,V] (same alignment/masking as :func:`token_logps`)."""
    mask_bt = shifted_mask(loss_mask_bt, attention_mask_bt)
    logp_bt, ent_bt = _logp_and_entropy(logits_btv[:, :-1], input_ids_bt[:, 1:])
    logp_bt = logp_bt * mask_bt
    return (logp_bt, ent_bt * mask_bt) if return_entropy else logp_bt


def token_logps(model, input_ids_bt, attention_mask_bt=None, loss_mask_bt=None,
                chunk_size: int | None = None, return_entropy: bool = False, positions=None):
    """Per-token log-probs [B, T-1] of ``input_ids[:, 1:]`` under ``model`` (see module docstring).

    ``model`` is an ``align_jax.models.llama.Decoder`` (anything with ``hidden_states`` and
    ``logits_from_hidden``). ``chunk_size=None`` computes all T-1 positions in one piece.
    With ``return_entropy`` returns ``(logps_bt, entropy_bt)``, both zero outside the mask."""
    mask_bt = shifted_mask(loss_mask_bt, attention_mask_bt)
    h_btd, _ = model.hidden_states(input_ids_bt, attention_mask_bt, positions=positions)
    h_btd = h_btd[:, :-1]
    tgt_bt = input_ids_bt[:, 1:]
    B, T1, D = h_btd.shape
    if chunk_size is None or chunk_size >= T1:
        logp_bt, ent_bt = _logp_and_entropy(model.logits_from_hidden(h_btd), tgt_bt)
    else:
        n = -(-T1 // chunk_size)
        pad = n * chunk_size - T1
        # Pad the sequence to whole chunks; padded columns are cut off below.
        h = jnp.pad(h_btd, ((0, 0), (0, pad), (0, 0)))
        tgt = jnp.pad(tgt_bt, ((0, 0), (0, pad)))
        h_nbcd = h.reshape(B, n, chunk_size, D).swapaxes(0, 1)
        tgt_nbc = tgt.reshape(B, n, chunk_size).swapaxes(0, 1)

        @jax.checkpoint
        def one(args):
            h_c, t_c = args
            return _logp_and_entropy(model.logits_from_hidden(h_c), t_c)

        logp_nbc, ent_nbc = jax.lax.map(one, (h_nbcd, tgt_nbc))
        logp_bt = logp_nbc.swapaxes(0, 1).reshape(B, n * chunk_size)[:, :T1]
        ent_bt = ent_nbc.swapaxes(0, 1).reshape(B, n * chunk_size)[:, :T1]
    logp_bt = logp_bt * mask_bt
    return (logp_bt, ent_bt * mask_bt) if return_entropy else logp_bt


def reduce_sequence(logp_bt, mask_bt) -> SeqLogps:
    """(sum, mean, count) over the masked tokens of each row."""
    mask_bt = mask_bt.astype(jnp.float32)
    s = jnp.sum(logp_bt * mask_bt, axis=-1)
    c = jnp.sum(mask_bt, axis=-1)
    return SeqLogps(s, s / jnp.maximum(c, 1.0), c)


def sequence_logps(model, input_ids_bt, attention_mask_bt=None, loss_mask_bt=None,
                   chunk_size: int | None = None, positions=None) -> SeqLogps:
    """Response log-likelihood per row: ``SeqLogps(sum_b, mean_b, count_b)`` over loss_mask tokens
    (prompt and padding excluded; the first token is never a target)."""
    logp_bt = token_logps(model, input_ids_bt, attention_mask_bt, loss_mask_bt,
                          chunk_size=chunk_size, positions=positions)
    return reduce_sequence(logp_bt, shifted_mask(loss_mask_bt, attention_mask_bt))


def sequence_logps_from_logits(logits_btv, input_ids_bt, loss_mask_bt=None,
                               attention_mask_bt=None) -> SeqLogps:
    """Pure variant of :func:`sequence_logps` over given logits."""
    logp_bt = token_logps_from_logits(logits_btv, input_ids_bt, loss_mask_bt, attention_mask_bt)
    return reduce_sequence(logp_bt, shifted_mask(loss_mask_bt, attention_mask_bt))


def rollout_logps(model, batch, chunk_size: int | None = None):
    """(log-probs [B, T-1], entropies [B, T-1], response mask [B, T-1]) of a rollout batch
    (``input_ids/attention_mask/loss_mask``): what every on-policy loss starts from."""
    logp_bt, ent_bt = token_logps(model, batch["input_ids"], batch["attention_mask"],
                                  batch["loss_mask"], chunk_size=chunk_size, return_entropy=True)
    return logp_bt, ent_bt, batch["loss_mask"][:, 1:]
