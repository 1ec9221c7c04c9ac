"""DPO-family / CPO / SimPO / ORPO / KTO losses against TRL 1.16's OWN loss code.

TRL computes the DPO and KTO losses inline in ``_compute_loss(self, model, inputs, ...)``, so we call
that unbound method with a stand-in ``self`` and stand-in models that return fixed per-token
log-probs (a torch leaf tensor). Our side builds ``PairLogps`` from the same per-token arrays with
the project's helpers (sums, LD-DPO split, WPO weights) and we compare, in float64:
the loss value, the gradient w.r.t. every per-token policy log-prob (jax.grad vs torch autograd),
and TRL's logged reward metrics. CPO/SimPO and ORPO expose loss methods that we call directly.
Members TRL 1.16 lacks (cdpo, dpop, rdpo, bco_pair with δ≠0) are checked against closed forms.
"""
from __future__ import annotations

import os
import types
from collections import defaultdict
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from align_jax.losses import (
    KTOConfig,
    PairLogps,
    PrefConfig,
    UnpairedLogps,
    get_loss,
    ld_dpo_logps,
    preference_loss,
    shared_tail_logps,
    unpaired_loss,
    wpo_log_weights,
)
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we import trl.experimental on purpose
from trl.experimental.cpo.cpo_trainer import CPOTrainer  # noqa: E402
from trl.experimental.orpo.orpo_trainer import ORPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402

B, T = 4, 8  # pairs, padded sequence length (prompt + completion + padding)
TOL = 1e-9  # float64 on both sides: agreement is ~1e-15, so this is still tight


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _batch(seed=0):
    """Per-token log-probs for 2B rows ([chosen; rejected]) with prompt/completion/padding masks."""
    rng = np.random.default_rng(seed)
    cm = np.zeros((2 * B, T), np.int64)
    for i in range(2 * B):
        p = rng.integers(1, 3)
        c = rng.integers(1, T - p + 1)
        cm[i, p : p + c] = 1
    tok = -rng.uniform(0.05, 1.5, (2 * B, T - 1))
    ref = tok + rng.normal(0.0, 0.4, tok.shape)
    ref = np.minimum(ref, -1e-3)
    lsq = -rng.uniform(0.1, 1.0, tok.shape)  # log Σ p² ≤ 0
    return cm, tok, ref, lsq


class _FakeLM:
    """Stands in for the policy/reference: returns the given per-token log-probs on label positions."""

    training = True
    is_gradient_checkpointing = False

    def __init__(self, tok, lsq=None):
        self.tok, self.lsq = tok, lsq

    def __call__(self, input_ids=None, labels=None, **kw):
        shift = (labels[:, 1:] != -100).to(self.tok.dtype)
        z = torch.zeros_like(self.tok)
        return SimpleNamespace(
            log_probs=self.tok * shift,
            entropy=z,
            mean_logits=z,
            is_top1=torch.zeros_like(self.tok, dtype=torch.bool),
            log_sum_sq_probs=self.lsq,
            aux_loss=None,
        )


def _accelerator():
    return SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)


def _trl_dpo(cm, tok, ref, lsq, loss_types, loss_weights=None, dtype=torch.float64, **kw):
    tok_t = torch.tensor(tok, dtype=dtype, requires_grad=True)
    policy = _FakeLM(tok_t, torch.tensor(lsq, dtype=dtype))
    fake = SimpleNamespace(
        model=policy,
        ref_model=_FakeLM(torch.tensor(ref, dtype=dtype)),
        accelerator=_accelerator(),
        aux_loss_enabled=False,
        precompute_ref_logps=False,
        ld_alpha=kw.get("ld_alpha"),
        f_divergence_type=kw.get("f_divergence", "reverse_kl"),
        f_alpha_divergence_coef=kw.get("f_alpha", 0.5),
        loss_types=list(loss_types),
        loss_weights=list(loss_weights or [1.0] * len(loss_types)),
        beta=kw.get("beta", 0.3),
        label_smoothing=kw.get("label_smoothing", 0.0),
        use_weighting=kw.get("use_weighting", False),
        args=SimpleNamespace(discopop_tau=kw.get("discopop_tau", 0.05), gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    ids = torch.ones((2 * B, T), dtype=torch.long)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": torch.tensor(cm)}
    loss = DPOTrainer._compute_loss(fake, policy, inputs, return_outputs=False)
    loss.backward()
    return float(loss.detach()), tok_t.grad.double().numpy(), {k: v[0] for k, v in fake._metrics["train"].items()}


def _ours_dpo(cm, tok, ref, lsq, cfg: PrefConfig):
    m = jnp.asarray(cm[:, 1:]).astype(bool)
    lens = m.sum(1)
    other = jnp.concatenate([lens[B:], lens[:B]])  # each response's partner length (LD-DPO)

    def f(tok_bt):
        ref_bt = jnp.asarray(ref)
        sums = jnp.where(m, tok_bt, 0.0).sum(1)
        rsums = jnp.where(m, ref_bt, 0.0).sum(1)
        _, tail = shared_tail_logps(tok_bt, m, other)
        _, rtail = shared_tail_logps(ref_bt, m, other)
        lw = wpo_log_weights(tok_bt, jnp.asarray(lsq), m)
        inp = PairLogps(
            sums[:B], sums[B:], rsums[:B], rsums[B:], lens[:B], lens[B:],
            tail[:B], tail[B:], rtail[:B], rtail[B:], lw[:B], lw[B:],
        )
        losses, metrics = preference_loss(inp, cfg)
        return losses.mean(), metrics

    # eager on purpose: every case shares the shapes, so op-by-op compiles are reused across cases
    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(tok))
    return float(loss), np.asarray(grad), {k: float(v.mean()) for k, v in metrics.items()}


TRL_DPO_MEMBERS = [
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]

CASES = [dict(loss=(n,), label_smoothing=0.1) for n in TRL_DPO_MEMBERS] + [
    dict(loss=("sigmoid", "sft"), loss_weights=(1.0, 0.5)),  # TRL multi-loss (RPO-style NLL)
    dict(loss=("ipo", "hinge", "nca_pair"), loss_weights=(0.8, 0.2, 1.0)),  # MPO-like mix
    dict(loss=("sigmoid",), ld_alpha=0.5),
    dict(loss=("ipo", "sft"), ld_alpha=0.0, loss_weights=(1.0, 0.3)),
    dict(loss=("sigmoid",), use_weighting=True),
    # (TRL crashes on use_weighting with "sft": in-place multiply of an expanded tensor)
    dict(loss=("apo_zero", "sigmoid_norm"), use_weighting=True, ld_alpha=0.7),
    dict(loss=("sigmoid",), f_divergence="forward_kl"),
    dict(loss=("hinge",), f_divergence="js_divergence"),
    # TRL's alpha_divergence only supports float16/bfloat16/float32 (clamp table): compared in float32
    dict(loss=("ipo",), f_divergence="alpha_divergence", f_alpha=0.3, dtype="float32"),
    dict(loss=("discopop",), beta=0.05, discopop_tau=0.5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "+".join(c["loss"]) + "".join(
    f",{k}={v}" for k, v in c.items() if k not in ("loss", "label_smoothing")))
def test_dpo_family_matches_trl(case):
    cm, tok, ref, lsq = _batch(seed=len(case["loss"]) + 7 * len(case))
    kw = {k: v for k, v in case.items() if k not in ("loss", "loss_weights", "dtype")}
    kw.setdefault("beta", 0.3)
    f32 = case.get("dtype") == "float32"
    if f32:  # both sides see the same float32-representable inputs
        tok, ref, lsq = (x.astype(np.float32).astype(np.float64) for x in (tok, ref, lsq))
    l_trl, g_trl, m_trl = _trl_dpo(cm, tok, ref, lsq, case["loss"], case.get("loss_weights"),
                                   dtype=torch.float32 if f32 else torch.float64, **kw)
    cfg = PrefConfig(loss=case["loss"], loss_weights=case.get("loss_weights"), **kw)
    l_ours, g_ours, m_ours = _ours_dpo(cm, tok, ref, lsq, cfg)
    # TRL's exo_pair builds ε as a float32 tensor, so log ε / log(1−ε) carry float32 rounding there
    tol = 1e-5 if f32 else 1e-6 if "exo_pair" in case["loss"] else TOL
    assert abs(l_trl) > 1e-3  # a trivial zero loss would make the comparison vacuous
    np.testing.assert_allclose(l_ours, l_trl, rtol=tol, atol=tol)
    assert np.abs(g_trl).max() > 1e-4
    np.testing.assert_allclose(g_ours, g_trl, rtol=max(tol, 1e-8), atol=tol)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(m_ours[key], m_trl[key], rtol=tol, atol=tol, err_msg=key)


def test_ld_dpo_logps_helper_matches_trl():
    """The step may also fold LD-DPO in itself: ld_dpo_logps sums + a plain config."""
    cm, tok, ref, lsq = _batch(11)
    l_trl, g_trl, _ = _trl_dpo(cm, tok, ref, lsq, ["sigmoid"], ld_alpha=0.4, beta=0.3)
    m = jnp.asarray(cm[:, 1:]).astype(bool)
    lens = m.sum(1)
    other = jnp.concatenate([lens[B:], lens[:B]])

    def f(tok_bt):
        lp = ld_dpo_logps(tok_bt, m, other, 0.4)
        rlp = ld_dpo_logps(jnp.asarray(ref), m, other, 0.4)
        return preference_loss(PairLogps(lp[:B], lp[B:], rlp[:B], rlp[B:]), PrefConfig(beta=0.3))[0].mean()

    l_ours, g_ours = jax.value_and_grad(f)(jnp.asarray(tok))
    np.testing.assert_allclose(float(l_ours), l_trl, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(np.asarray(g_ours), g_trl, rtol=1e-8, atol=TOL)
    # tokens beyond the shared length get α times the gradient of the shared ones (non-vacuous LD)
    assert np.any((np.abs(g_trl) > 0) & (np.abs(g_trl) < 0.5 * np.abs(g_trl).max()))


def test_registered_single_loss_equals_config_switch():
    cm, tok, ref, lsq = _batch(3)
    m = cm[:, 1:].astype(bool)
    s = jnp.asarray(np.where(m, tok, 0).sum(1))
    rs = jnp.asarray(np.where(m, ref, 0).sum(1))
    n = jnp.asarray(m.sum(1))
    inp = PairLogps(s[:B], s[B:], rs[:B], rs[B:], n[:B], n[B:])
    a, _ = get_loss("ipo")(inp, PrefConfig(beta=0.3))
    b, _ = preference_loss(inp, PrefConfig(loss="ipo", beta=0.3))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="valid names"):
        preference_loss(inp, PrefConfig(loss="not_a_loss"))


# ----------------------------------------------------------------------------- CPO / SimPO / ORPO


def _sums(seed=1):
    rng = np.random.default_rng(seed)
    lens = rng.integers(2, 9, (2, B)).astype(np.float64)
    sums = -rng.uniform(0.2, 1.2, (2, B)) * lens
    return sums, lens


@pytest.mark.parametrize("name,trl_type", [("simpo", "simpo"), ("cpo", "sigmoid")])
def test_cpo_simpo_match_trl(name, trl_type):
    sums, lens = _sums()
    beta, gamma, eps = 2.0, 1.2, 0.1
    st = torch.tensor(sums, requires_grad=True)
    avg = name == "simpo"  # TRL's CPOTrainer averages log-probs for simpo (and ipo)
    c, r = (st[0] / torch.tensor(lens[0]), st[1] / torch.tensor(lens[1])) if avg else (st[0], st[1])
    fake = SimpleNamespace(alpha=0.0, loss_type=trl_type, simpo_gamma=gamma, beta=beta,
                           label_smoothing=eps, accelerator=_accelerator())
    losses, cr, rr = CPOTrainer.cpo_loss(fake, c, r)
    losses.mean().backward()

    def f(s):
        inp = PairLogps(s[0], s[1], None, None, jnp.asarray(lens[0]), jnp.asarray(lens[1]))
        lo, met = preference_loss(inp, PrefConfig(loss=name, beta=beta, gamma=gamma, label_smoothing=eps))
        return lo.mean(), (lo, met)

    (_, (lo, met)), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(sums))
    np.testing.assert_allclose(np.asarray(lo), losses.detach().numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(np.asarray(g), st.grad.numpy(), rtol=1e-8, atol=TOL)
    np.testing.assert_allclose(np.asarray(met["rewards/chosen"]), cr.numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(np.asarray(met["rewards/rejected"]), rr.numpy(), rtol=TOL, atol=TOL)


def test_orpo_matches_trl():
    sums, lens = _sums(2)
    lam = 0.25
    st = torch.tensor(sums, requires_grad=True)
    lt = torch.tensor(lens)
    fake = SimpleNamespace(beta=lam, accelerator=_accelerator())
    ratio_losses, cr, rr, _, _ = ORPOTrainer.odds_ratio_loss(fake, st[0] / lt[0], st[1] / lt[1])
    # TRL: loss = NLL(chosen) − mean(λ·log σ(log odds)); NLL = token mean over the chosen responses
    nll = -st[0].sum() / lt[0].sum()
    trl_loss = nll - ratio_losses.mean()
    trl_loss.backward()
    trl_loss = float(trl_loss.detach())

    def f(s):
        inp = PairLogps(s[0], s[1], None, None, jnp.asarray(lens[0]), jnp.asarray(lens[1]))
        lo, met = preference_loss(inp, PrefConfig(loss="orpo", beta=lam, orpo_lambda=lam))
        return lo.mean(), met

    (lo, met), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(sums))
    # TRL's odds_ratio_loss casts the log-probs to float32 (`.float()`), so agreement is float32-level
    np.testing.assert_allclose(float(lo), trl_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g), st.grad.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(met["rewards/chosen"]), cr.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(met["rewards/rejected"]), rr.numpy(), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- KTO


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_matches_trl(loss_type):
    rng = np.random.default_rng(5)
    n, tk = 6, 7
    labels = np.array([True, False, True, True, False, False])
    cm = np.zeros((n, tk), np.int64)
    kl_cm = np.zeros((n, tk + 2), np.int64)  # KL sequences get another width so the fake model can tell
    for i in range(n):
        cm[i, 1 : 1 + rng.integers(2, tk)] = 1
        kl_cm[i, 2 : 2 + rng.integers(2, tk)] = 1
    tok = -rng.uniform(0.05, 1.5, (n, tk - 1))
    kl_tok = -rng.uniform(0.05, 1.5, (n, tk + 1))
    ref_lp = (np.where(cm[:, 1:] == 1, tok, 0).sum(1) + rng.normal(0, 0.8, n))
    kl_lp = np.where(kl_cm[:, 1:] == 1, kl_tok, 0).sum(1)
    ref_kl = kl_lp - rng.uniform(0.0, 1.0, n)  # positive KL estimate so z0 > 0 matters
    beta, wd, wu = 0.4, 1.3, 0.7

    tok_t = torch.tensor(tok, requires_grad=True)
    main, kl_model = _FakeLM(tok_t), _FakeLM(torch.tensor(kl_tok))

    def model(**kw):
        return (main if kw["input_ids"].shape[1] == tk else kl_model)(**kw)

    model.training = True
    fake = SimpleNamespace(
        model=model, accelerator=_accelerator(), calculate_KL=loss_type == "kto", loss_type=loss_type,
        aux_loss_enabled=False, precompute_ref_logps=True, beta=beta, desirable_weight=wd,
        undesirable_weight=wu, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )
    fake._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, fake)
    ids, kl_ids = torch.ones((n, tk), dtype=torch.long), torch.ones((n, tk + 2), dtype=torch.long)
    inputs = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": torch.tensor(cm),
        "KL_input_ids": kl_ids, "KL_attention_mask": torch.ones_like(kl_ids),
        "KL_completion_mask": torch.tensor(kl_cm), "label": torch.tensor(labels),
        "ref_logps": torch.tensor(ref_lp), "ref_KL_logps": torch.tensor(ref_kl),
    }
    loss = KTOTrainer._compute_loss(fake, model, inputs, return_outputs=False)
    loss.backward()
    m_trl = {k: v[0] for k, v in fake._metrics["train"].items()}

    mask = jnp.asarray(cm[:, 1:]).astype(bool)

    def f(tok_bt):
        inp = UnpairedLogps(jnp.where(mask, tok_bt, 0).sum(1), jnp.asarray(ref_lp), jnp.asarray(labels),
                            jnp.asarray(kl_lp), jnp.asarray(ref_kl))
        lo, met = unpaired_loss(inp, KTOConfig(loss=loss_type, beta=beta, desirable_weight=wd,
                                               undesirable_weight=wu))
        return lo.mean(), met

    (lo, met), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(tok))
    np.testing.assert_allclose(float(lo), float(loss), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(np.asarray(g), tok_t.grad.numpy(), rtol=1e-8, atol=TOL)
    assert np.abs(tok_t.grad.numpy()).max() > 1e-4
    for side in ("chosen", "rejected"):
        ours = float(met[f"rewards/{side}"].sum() / met[f"count/{side}"].sum())
        np.testing.assert_allclose(ours, m_trl[f"rewards/{side}"], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(float(met["kl"][0]), m_trl["kl"], rtol=TOL, atol=TOL)
    if loss_type == "kto":
        assert m_trl["kl"] > 0.05  # z0 actually enters the comparison


# ----------------------------------------------------------------------------- not in TRL 1.16


def _rand_pair(seed=4):
    rng = np.random.default_rng(seed)
    lens = rng.integers(2, 9, (2, B)).astype(np.float64)
    lp = -rng.uniform(0.2, 1.2, (2, B)) * lens
    ref = lp + rng.normal(0, 1.5, (2, B))
    return lp, ref, lens


def _logsig(x):
    return -np.log1p(np.exp(-x))


def test_cdpo_dpop_rdpo_bco_delta_closed_form():
    lp, ref, lens = _rand_pair()
    beta, eps, lam, alpha, delta = 0.2, 0.15, 2.0, 0.05, 0.3
    inp = PairLogps(*map(jnp.asarray, (lp[0], lp[1], ref[0], ref[1], lens[0], lens[1])),
                    bco_delta=jnp.asarray(delta))
    cfg = PrefConfig(beta=beta, label_smoothing=eps, dpop_lambda=lam, alpha=alpha)
    for b in range(B):
        rw, rl = lp[0, b] - ref[0, b], lp[1, b] - ref[1, b]
        h = rw - rl
        want = {
            "cdpo": -(1 - eps) * _logsig(beta * h) - eps * _logsig(-beta * h),
            "dpop": -_logsig(beta * (h - lam * max(0.0, ref[0, b] - lp[0, b]))),
            "rdpo": -_logsig(beta * h + alpha * (lens[0, b] - lens[1, b])),
            "bco_pair": -_logsig(beta * rw - delta) - _logsig(-(beta * rl - delta)),
        }
        for name, v in want.items():
            got = float(get_loss(name)(inp, cfg)[0][b])
            np.testing.assert_allclose(got, v, rtol=1e-12, err_msg=name)
    # the DPOP penalty is active for some example (otherwise the test would not distinguish it)
    assert (ref[0] > lp[0]).any() and (ref[0] < lp[0]).any()


def test_dpop_gradient_pushes_chosen_up_when_below_reference():
    # Hand-derived: with lp_w < lp_ref(w), dL/dlp_w = −β(1+λ)σ(−z), z = β(h − λ(ref_w − lp_w)).
    beta, lam = 0.5, 3.0
    lp_w, lp_l, ref_w, ref_l = -5.0, -6.0, -4.0, -6.5
    z = beta * ((lp_w - ref_w) - (lp_l - ref_l) - lam * (ref_w - lp_w))
    want = -beta * (1 + lam) / (1 + np.exp(z))
    g = jax.grad(lambda x: get_loss("dpop")(
        PairLogps(x[None], jnp.asarray([lp_l]), jnp.asarray([ref_w]), jnp.asarray([ref_l])),
        PrefConfig(beta=beta, dpop_lambda=lam))[0][0])(jnp.asarray(lp_w))
    np.testing.assert_allclose(float(g), want, rtol=1e-12)
