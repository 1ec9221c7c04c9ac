"""Preference-learning step glue: model forwards → log-probs → the pure losses of ``align_jax.losses``.

Each ``make_*_loss_fn`` returns ``loss_fn(models, batch, rng) -> (loss, metrics)`` for
:func:`align_jax.train.step.make_train_step` / ``make_eval_step``, so ONE jitted step serves every
member of a family (``PrefConfig.loss="ipo"``, ``("sigmoid", "sft")``, ...):

* pairwise (DPO family): chosen and rejected rows are CONCATENATED into one [2B, T] forward; the
  per-token log-probs give the sums/counts of :class:`PairLogps`, the LD-DPO tails (a masked
  cumsum, always) and, only with ``use_weighting``, the WPO weights (they need whole logits rows).
  ``completion_len`` (see :class:`Fwd`) applies the LM head to the response positions only.
* KTO (unpaired): the main rows with gradient, the mismatched-pair KL rows in a separate forward under
  ``stop_gradient`` (TRL computes them under ``no_grad``: no backward cost); reference on both in one
  forward.
* RPO: the pairwise forward → log-ratios + the batch's prompt embeddings ``emb [B, E]`` → ``rpo_loss``
  over explicit groups (``RPOConfig.group_size``), so the value does not depend on the mesh.
* listwise: [B, K, T] flattened to [B·K, T] for one forward.

Where the reference log-probs come from (a static, trace-time choice):
1. the batch carries them (``ref_*`` keys; precomputed once per dataset, see ``reference_cache``);
2. else ``models`` is a :class:`PolicyRef` (built by :class:`RefModelBundle`): a frozen copy of the
   initial weights, forwarded per batch;
3. else the policy has LoRA adapters: the reference is the SAME module with the adapters zeroed
   (``lora_off_params``), no second copy of the weights;
4. else a clear error. Losses registered with ``needs_reference=False`` (simpo, cpo, orpo, sft; PRO)
   never look for one.

Batches are the dicts of ``align_jax.data.tokenize`` (``loss_mask`` not shifted: log-probs come from
logits[:, :-1] vs ids[:, 1:] with ``loss_mask[:, 1:]``, see ``align_jax.train.logprobs``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from align_jax.losses.kto import KTOConfig, UnpairedLogps, unpaired_loss
from align_jax.losses.listwise import ListLogps, ListwiseConfig, listwise_loss
from align_jax.losses.preference import (PairLogps, PrefConfig, log_sum_sq_probs, preference_loss,
                                         shared_tail_logps, wpo_log_weights)
from align_jax.losses.registry import LossSpec, loss_spec
from align_jax.losses.rpo import RPOConfig, RPOInputs, rpo_loss
from align_jax.train.logprobs import shifted_mask, token_logps, token_logps_from_logits
from align_jax.train.state import ModelBundle, has_lora, lora_off_params

# Keys a batch carries when the reference log-probs were precomputed, per batch kind.
REF_KEYS = {
    "pair": ("ref_chosen_logps", "ref_rejected_logps", "ref_chosen_tail_logps",
             "ref_rejected_tail_logps"),
    "unpaired": ("ref_logps", "ref_kl_logps"),
    "ranked": ("ref_logps",),
}


def loss_specs(cfg) -> list[LossSpec]:
    """The registry entries of every loss a family config names: ``cfg.loss_names`` looked up in
    the config's family (``cfg.family``); unknown names fail with the registered ones."""
    return [loss_spec(n, cfg.family) for n in cfg.loss_names]


def needs_reference(cfg) -> bool:
    """Whether a loss config needs reference log-probs at all (each entry declares it)."""
    return any(spec.needs_reference for spec in loss_specs(cfg))


def needs_kl_pairs(cfg) -> bool:
    """Whether an unpaired loss reads the mismatched (KL) pairs of its batch (KTO's z0)."""
    return any(spec.meta.get("uses_kl_pairs", False) for spec in loss_specs(cfg))


# ----------------------------------------------------------------------------- models


class PolicyRef(NamedTuple):
    """What :class:`RefModelBundle` hands the loss: the trained policy and the frozen reference."""

    policy: Any
    reference: Any


@dataclasses.dataclass(frozen=True)
class RefModelBundle(ModelBundle):
    """A :class:`ModelBundle` whose frozen state also holds a copy of the reference weights:
    ``frozen = {"model": <policy's frozen state>, "ref": <reference params>}``. ``merge`` returns a
    :class:`PolicyRef`; the reference is a jitted-step ARGUMENT (sharded by the rules table, never
    donated, never differentiated), not a constant baked into the program."""

    @classmethod
    def wrap(cls, bundle: ModelBundle, ref_params) -> "RefModelBundle":
        return cls(bundle.graphdef, {"model": bundle.frozen, "ref": ref_params})

    def merge(self, params, frozen=None, lora_off: bool = False):
        fz = self.frozen if frozen is None else frozen
        policy = ModelBundle.merge(self, params, fz["model"], lora_off)
        return PolicyRef(policy, nnx.merge(self.graphdef, fz["ref"], fz["model"]))

    def policy(self, params):
        """The policy module alone (export, sampling)."""
        return ModelBundle.merge(self, params, self.frozen["model"])


def policy_of(models):
    return models.policy if isinstance(models, PolicyRef) else models


def lora_reference(model):
    """The module with every LoRA adapter zeroed (= the base model), sharing the base weights."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, lora_off_params(state))


def detached(model):
    """The module with every weight under stop_gradient (forward-only use inside a loss)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def _reference_model(models, what: str):
    if isinstance(models, PolicyRef):
        return models.reference
    if has_lora(models):
        return lora_reference(models)
    raise ValueError(
        f"{what} needs reference log-probs: precompute them (reference='cache'), pass a "
        "RefModelBundle (reference='batch'), or train LoRA adapters (reference = adapters off)")


# ----------------------------------------------------------------------------- forwards


@dataclasses.dataclass(frozen=True)
class Fwd:
    """How log-probs are computed (static knobs).

    ``chunk_size``: LM head over sequence chunks (big vocabularies; see ``train.logprobs``).
    ``completion_len``: apply the LM head only to the first ``completion_len`` response positions of
    each row (gathered in order) instead of all T-1 positions — prompt positions are never scored,
    so with prompts as long as responses this halves the LM-head FLOPs and logits memory (TRL's
    fused LM head does the same). Set it to the tokeniser's ``max_completion_len`` (responses are
    truncated to it); a longer response is reported as ``tokens/overflow`` (the loop raises)."""

    chunk_size: int | None = None
    completion_len: int | None = None


class TokLogps(NamedTuple):
    logp: jax.Array  # [N, W] per-token log-probs, 0 outside the response
    mask: jax.Array  # [N, W] float, 1 on response tokens (in order)
    lss: jax.Array | None  # [N, W] log Σ_v p_v² (WPO) or None
    overflow: jax.Array  # [N] response tokens left out of the window (0 unless misconfigured)


def _cat(a, b):
    return jnp.concatenate([a, b], axis=0)


def _window_logps(model, ids_bt, attn_bt, mask_bt, width: int, wpo: bool) -> TokLogps:
    h_btd, _ = model.hidden_states(ids_bt, attn_bt)
    m = mask_bt > 0
    # stable argsort of "not a response token": the response positions first, in order
    idx = jnp.argsort(jnp.logical_not(m).astype(jnp.int32), axis=1, stable=True)[:, :width]
    mask_w = jnp.take_along_axis(mask_bt, idx, axis=1)
    h_w = jnp.take_along_axis(h_btd[:, :-1], idx[..., None], axis=1)
    tgt_w = jnp.take_along_axis(ids_bt[:, 1:], idx, axis=1)
    logits = model.logits_from_hidden(h_w).astype(jnp.float32)
    logp = jnp.take_along_axis(logits, tgt_w[..., None], -1)[..., 0] - jax.nn.logsumexp(logits, -1)
    logp = jnp.where(mask_w > 0, logp, 0.0)
    lss = log_sum_sq_probs(logits) if wpo else None
    return TokLogps(logp, mask_w, lss, mask_bt.sum(-1) - mask_w.sum(-1))


def forward_logps(model, ids_bt, attn_bt, loss_mask_bt, fwd: Fwd = Fwd(),
                  wpo: bool = False) -> TokLogps:
    """Per-token log-probs of the response tokens (see :class:`Fwd` for the layout options).

    WPO's log Σ_v p_v² needs whole logits rows, so the WPO path does not chunk."""
    mask_bt = shifted_mask(loss_mask_bt, attn_bt)
    zero = jnp.zeros(mask_bt.shape[:1], mask_bt.dtype)
    if fwd.completion_len is not None and fwd.completion_len < mask_bt.shape[1]:
        return _window_logps(model, ids_bt, attn_bt, mask_bt, fwd.completion_len, wpo)
    if not wpo:
        logp = token_logps(model, ids_bt, attn_bt, loss_mask_bt, chunk_size=fwd.chunk_size)
        return TokLogps(logp, mask_bt, None, zero)
    logits = model(ids_bt, attn_bt)
    logp_bt = token_logps_from_logits(logits, ids_bt, loss_mask_bt, attn_bt)
    return TokLogps(logp_bt, mask_bt, log_sum_sq_probs(logits[:, :-1]), zero)


def _sum_count(t: TokLogps):
    return (t.logp * t.mask).sum(-1), t.mask.sum(-1)


def pair_forward(model, batch, fwd: Fwd = Fwd(), wpo: bool = False):
    """Chosen and rejected in ONE [2B, T] forward -> dict of [B] arrays: sums, counts, LD-DPO tails,
    window overflow and (``wpo``) WPO log-weights of both sides."""
    ids = _cat(batch["chosen_input_ids"], batch["rejected_input_ids"])
    attn = _cat(batch["chosen_attention_mask"], batch["rejected_attention_mask"])
    lm = _cat(batch["chosen_loss_mask"], batch["rejected_loss_mask"])
    t = forward_logps(model, ids, attn, lm, fwd, wpo=wpo)
    s, n = _sum_count(t)
    b = batch["chosen_input_ids"].shape[0]
    out = {"chosen_logps": s[:b], "rejected_logps": s[b:], "chosen_len": n[:b], "rejected_len": n[b:],
           "overflow": t.overflow[:b] + t.overflow[b:]}
    # LD-DPO's shared length is min(|y_w|, |y_l|): each side's tail is what exceeds the other side.
    other = jnp.concatenate([n[b:], n[:b]])
    _, tail = shared_tail_logps(t.logp, t.mask, other)
    out["chosen_tail_logps"], out["rejected_tail_logps"] = tail[:b], tail[b:]
    if wpo:
        lw = wpo_log_weights(t.logp, t.lss, t.mask)
        out["chosen_logw"], out["rejected_logw"] = lw[:b], lw[b:]
    return out


def reference_pair_values(ref_model, batch, fwd: Fwd = Fwd()):
    """Reference sums and LD-DPO tails of a pair batch (no gradient) — the values the disk cache
    stores under the same ``ref_*`` names."""
    f = pair_forward(ref_model, batch, fwd)
    return jax.lax.stop_gradient({
        "ref_chosen_logps": f["chosen_logps"], "ref_rejected_logps": f["rejected_logps"],
        "ref_chosen_tail_logps": f["chosen_tail_logps"],
        "ref_rejected_tail_logps": f["rejected_tail_logps"]})


def unpaired_forward(model, batch, fwd: Fwd = Fwd(), kl: bool = False):
    """Sums [B] of the examples (and, ``kl``, of their mismatched pairs) in one forward."""
    ids, attn, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    b = ids.shape[0]
    if kl:
        ids, attn, lm = (_cat(ids, batch["kl_input_ids"]), _cat(attn, batch["kl_attention_mask"]),
                         _cat(lm, batch["kl_loss_mask"]))
    t = forward_logps(model, ids, attn, lm, fwd)
    s, _ = _sum_count(t)
    return s[:b], (s[b:] if kl else None), t.overflow


def reference_unpaired_values(ref_model, batch, fwd: Fwd = Fwd(), kl: bool = True):
    """Reference sums of the examples and (``kl``) of their mismatched pairs, one forward."""
    s, kl_s, _ = unpaired_forward(ref_model, batch, fwd, kl)
    return jax.lax.stop_gradient({"ref_logps": s,
                                  "ref_kl_logps": kl_s if kl else jnp.zeros_like(s)})


def _flat_bk(x):
    return x.reshape((-1,) + x.shape[2:])


def ranked_forward(model, batch, fwd: Fwd = Fwd()):
    """[B, K, T] lists flattened to [B·K, T] -> (sums [B, K], counts [B, K], overflow [B·K])."""
    b, k = batch["input_ids"].shape[:2]
    t = forward_logps(model, _flat_bk(batch["input_ids"]), _flat_bk(batch["attention_mask"]),
                      _flat_bk(batch["loss_mask"]), fwd)
    s, n = _sum_count(t)
    return s.reshape(b, k), n.reshape(b, k), t.overflow


def reference_ranked_values(ref_model, batch, fwd: Fwd = Fwd()):
    s, _, _ = ranked_forward(ref_model, batch, fwd)
    return jax.lax.stop_gradient({"ref_logps": s})


def reference_values(ref_model, batch, kind: str, chunk_size: int | None = None):
    """Dispatch by batch kind ("pair" | "unpaired" | "ranked"), used by the cache pass (all T-1
    positions: exact whatever the response lengths)."""
    fwd = Fwd(chunk_size=chunk_size)
    if kind == "pair":
        return reference_pair_values(ref_model, batch, fwd)
    if kind == "unpaired":
        return reference_unpaired_values(ref_model, batch, fwd, kl="kl_input_ids" in batch)
    if kind == "ranked":
        return reference_ranked_values(ref_model, batch, fwd)
    raise ValueError(f"unknown batch kind {kind!r}; expected pair, unpaired or ranked")


def _batch_refs(batch, kind: str):
    """The precomputed reference values if the batch carries them, else None."""
    keys = REF_KEYS[kind]
    return {k: batch[k] for k in keys if k in batch} if keys[0] in batch else None


def _pair_refs(models, batch, fwd, what):
    ref = _batch_refs(batch, "pair")
    if ref is None:
        ref = reference_pair_values(_reference_model(models, what), batch, fwd)
    return ref


def _overflow_metric(*overflows):
    return (sum(jnp.sum(o) for o in overflows if o is not None), jnp.ones([], jnp.float32))


# ----------------------------------------------------------------------------- loss functions


def make_pair_loss_fn(cfg: PrefConfig, chunk_size: int | None = None,
                      completion_len: int | None = None):
    """Any pairwise member(s) of ``cfg.loss``; batch = ``pair_batch`` (+ optional ``ref_*`` [B])."""
    use_ref = needs_reference(cfg)
    fwd = Fwd(chunk_size, completion_len)

    def loss_fn(models, batch, rng):
        del rng
        pol = pair_forward(policy_of(models), batch, fwd, wpo=cfg.use_weighting)
        ref = _pair_refs(models, batch, fwd, f"loss {cfg.loss!r}") if use_ref else {}
        inp = PairLogps(
            chosen_logps=pol["chosen_logps"], rejected_logps=pol["rejected_logps"],
            ref_chosen_logps=ref.get("ref_chosen_logps"),
            ref_rejected_logps=ref.get("ref_rejected_logps"),
            chosen_len=pol["chosen_len"], rejected_len=pol["rejected_len"],
            chosen_tail_logps=pol["chosen_tail_logps"],
            rejected_tail_logps=pol["rejected_tail_logps"],
            ref_chosen_tail_logps=ref.get("ref_chosen_tail_logps"),
            ref_rejected_tail_logps=ref.get("ref_rejected_tail_logps"),
            chosen_logw=pol.get("chosen_logw"), rejected_logw=pol.get("rejected_logw"),
            bco_delta=batch.get("bco_delta"), pair_weight=batch.get("pair_weight"))
        losses_b, metrics = preference_loss(inp, cfg)
        metrics = dict(metrics)
        metrics["len/chosen"] = pol["chosen_len"]
        metrics["len/rejected"] = pol["rejected_len"]
        metrics["tokens/overflow"] = _overflow_metric(pol["overflow"])
        return losses_b.mean(), metrics

    return loss_fn


def make_kto_loss_fn(cfg: KTOConfig, chunk_size: int | None = None,
                     completion_len: int | None = None):
    """KTO / APO-zero (unpaired). batch = ``unpaired_batch`` keys (+ ``kl_*`` rows for "kto", the
    mismatched pairs) (+ optional ``ref_logps``/``ref_kl_logps`` [B])."""
    use_kl = needs_kl_pairs(cfg)
    fwd = Fwd(chunk_size, completion_len)

    def loss_fn(models, batch, rng):
        del rng
        policy = policy_of(models)
        s, _, over = unpaired_forward(policy, batch, fwd)
        kl_s = None
        if use_kl:
            # z0 is detached anyway: a separate forward under stop_gradient has no backward to pay
            kl_batch = {k[3:]: v for k, v in batch.items() if k.startswith("kl_")}
            kl_s, _, _ = unpaired_forward(detached(policy), kl_batch, fwd)
            kl_s = jax.lax.stop_gradient(kl_s)
        ref = _batch_refs(batch, "unpaired")
        if ref is None:
            ref = reference_unpaired_values(_reference_model(models, f"loss {cfg.loss!r}"), batch,
                                            fwd, kl=use_kl)
        inp = UnpairedLogps(logps=s, ref_logps=ref["ref_logps"], labels=batch["labels"],
                            kl_logps=kl_s, ref_kl_logps=ref.get("ref_kl_logps") if use_kl else None)
        losses_b, m = unpaired_loss(inp, cfg)
        # Per-side means need their own denominators: (Σ value, Σ count) pairs.
        fc, fr = m["count/chosen"], m["count/rejected"]
        metrics = {"rewards/chosen": (m["rewards/chosen"].sum(), fc.sum()),
                   "rewards/rejected": (m["rewards/rejected"].sum(), fr.sum()),
                   "logps/chosen": (m["logps/chosen"].sum(), fc.sum()),
                   "logps/rejected": (m["logps/rejected"].sum(), fr.sum()),
                   "desirable_frac": fc, "kl": m["kl"], "tokens/overflow": _overflow_metric(over)}
        return losses_b.mean(), metrics

    return loss_fn


def make_rpo_loss_fn(cfg: RPOConfig, chunk_size: int | None = None,
                     completion_len: int | None = None):
    """RPO over groups of ``cfg.group_size`` consecutive examples. Pair batches (+ ``emb [B, E]``)
    for every variant; unpaired batches (``labels``) for the unpaired variant (rows = desirable,
    columns = undesirable items of the group)."""
    fwd = Fwd(chunk_size, completion_len)

    def loss_fn(models, batch, rng):
        del rng
        emb = batch.get("emb")
        if "labels" in batch:  # unpaired data
            s, _, over = unpaired_forward(policy_of(models), batch, fwd)
            ref = _batch_refs(batch, "unpaired")
            if ref is None:
                ref = reference_unpaired_values(_reference_model(models, "RPO"), batch, fwd,
                                                kl=False)
            r = s - ref["ref_logps"]
            lab = batch["labels"].astype(bool)
            inp = RPOInputs(r, r, emb, chosen_valid=lab, rejected_valid=~lab)
        else:
            pol = pair_forward(policy_of(models), batch, fwd)
            ref = _pair_refs(models, batch, fwd, "RPO")
            over = pol["overflow"]
            inp = RPOInputs(pol["chosen_logps"] - ref["ref_chosen_logps"],
                            pol["rejected_logps"] - ref["ref_rejected_logps"], emb)
        loss, m = rpo_loss(inp, cfg)
        metrics = dict(m)
        metrics["rpo/row_loss"] = (m["rpo/row_loss"].sum(), m["rpo/row_valid"].sum())
        metrics["tokens/overflow"] = _overflow_metric(over)
        return loss, metrics

    return loss_fn


def make_listwise_loss_fn(cfg: ListwiseConfig, chunk_size: int | None = None,
                          completion_len: int | None = None):
    """Listwise losses; batch = ``ranked_batch`` ([B, K, T], ``scores``, ``valid_bk``) (+ optional
    ``ref_logps [B, K]``)."""
    use_ref = needs_reference(cfg)
    fwd = Fwd(chunk_size, completion_len)

    def loss_fn(models, batch, rng):
        del rng
        s, n, over = ranked_forward(policy_of(models), batch, fwd)
        ref = None
        if use_ref:
            ref_d = _batch_refs(batch, "ranked")
            if ref_d is None:
                ref_d = reference_ranked_values(_reference_model(models, f"loss {cfg.loss!r}"),
                                                batch, fwd)
            ref = ref_d["ref_logps"]
        inp = ListLogps(logps=s, ref_logps=ref, lengths=n, mask=batch["valid_bk"].astype(bool),
                        scores=batch["scores"])
        losses_b, metrics = listwise_loss(inp, cfg)
        metrics = dict(metrics)
        metrics["tokens/overflow"] = _overflow_metric(over)
        return losses_b.mean(), metrics

    return loss_fn


# One step builder per family: how its inputs are computed from a batch of its data kind.
FAMILY_STEPS = {"pair": make_pair_loss_fn, "unpaired": make_kto_loss_fn,
                "rpo": make_rpo_loss_fn, "listwise": make_listwise_loss_fn}


def make_loss_fn(cfg, chunk_size: int | None = None, completion_len: int | None = None):
    """The loss_fn for a family config: its loss name(s) are looked up in the registry (unknown
    names fail listing the registered ones) and the family's step builder computes the inputs."""
    loss_specs(cfg)
    if cfg.family not in FAMILY_STEPS:
        raise ValueError(f"family {cfg.family!r} has no preference step; preference families: "
                         f"{sorted(FAMILY_STEPS)}")
    return FAMILY_STEPS[cfg.family](cfg, chunk_size, completion_len)
