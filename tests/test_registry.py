"""The loss and scorer registries: every family lists its names, and a pairwise loss registered
HERE — outside the package, with the decorator only — trains a tiny model by name through the
same step builder and loop as the built-ins (no list edited anywhere)."""

import jax
import jax.numpy as jnp
import pytest

from align_jax.algorithms import preference_step as ps
from align_jax.algorithms.preference import TrainConfig, attach_reference, train_preference
from align_jax.data.pref_data import PrefData
from align_jax.losses import (FAMILIES, PairLogps, PrefConfig, get_loss, list_losses, loss_spec,
                              register_loss, registered)
from align_jax.rewards import SCORER_FAMILIES, list_scorers
from align_jax.train.optim import OptimConfig
from align_jax.train.step import FAST_COMPILE
from test_preference_step import TCFG, _pairs, fresh, tiny  # noqa: F401  (tiny is a fixture)

BUILT_IN = {
    "pair": ["aot", "aot_unpaired", "apo_down", "apo_zero", "bco_pair", "cdpo", "cpo", "discopop",
             "dpop", "exo_pair", "hinge", "ipo", "ld_align", "nca_pair", "orpo", "rdpo", "robust",
             "sft", "sigmoid", "sigmoid_norm", "simpo", "sppo_hard"],
    "unpaired": ["apo_zero_unpaired", "kto"],
    "rpo": ["rpo_diagonal", "rpo_paired", "rpo_unpaired"],
    "listwise": ["lipo_lambda", "opo", "plackett_luce", "pro"],
    "policy_gradient": ["reinforce"],
    "advantage": ["batch", "grpo", "mean", "none", "rloo"],
    "token_pg": ["bnpo", "dapo", "dr_grpo", "grpo", "gspo", "ppo"],
    "token_advantage": ["reward_to_go"],
    "reward_model": ["bradley_terry"],
}
REFERENCE_FREE = {("pair", "simpo"), ("pair", "cpo"), ("pair", "orpo"), ("pair", "sft"),
                  ("listwise", "pro"), ("policy_gradient", "reinforce"),
                  ("advantage", "grpo"), ("advantage", "mean"), ("advantage", "none"),
                  ("advantage", "rloo"), ("advantage", "batch"),
                  *(("token_pg", n) for n in BUILT_IN["token_pg"]),
                  ("token_advantage", "reward_to_go"), ("reward_model", "bradley_terry")}


@register_loss("avg_margin_hinge", "pair", needs_reference=False)
def avg_margin_hinge(inp: PairLogps, cfg: PrefConfig):
    """A user's loss: hinge on the length-normalised log-prob margin (no reference)."""
    margin = (inp.chosen_logps / jnp.maximum(inp.chosen_len, 1.0)
              - inp.rejected_logps / jnp.maximum(inp.rejected_len, 1.0))
    return jax.nn.relu(1.0 - cfg.beta * margin), {"outside/margin": margin}


def test_every_family_lists_its_registered_names():
    got = registered()
    assert tuple(got) == FAMILIES
    for family, names in BUILT_IN.items():
        # other families grow (new policy-gradient losses / advantage estimators register there)
        assert set(names) <= set(got[family]), (family, got[family])
        assert list_losses(family) == got[family] == sorted(got[family])
        for name in got[family]:
            spec = loss_spec(name, family)
            assert spec.family == family and get_loss(name, family) is spec.fn
    for family in ("pair", "unpaired", "rpo", "listwise"):  # closed built-in sets
        assert [n for n in got[family] if n != "avg_margin_hinge"] == BUILT_IN[family]
    for family, names in BUILT_IN.items():
        for name in names:
            assert loss_spec(name, family).needs_reference == ((family, name) not in
                                                               REFERENCE_FREE), (family, name)
    assert loss_spec("rpo_unpaired", "rpo").data == "unpaired"
    assert loss_spec("kto", "unpaired").meta["uses_kl_pairs"]
    assert loss_spec("lipo", "listwise").name == "lipo_lambda"  # alias
    assert list_scorers("similarity") == ["bertscore", "bertscore_f1", "bertscore_p",
                                          "bertscore_r", "bleu", "embedding_cosine", "meteor",
                                          "rouge_l"]
    assert list_scorers("harmless") == ["classifier", "contrast", "refusal"]
    assert SCORER_FAMILIES == ("similarity", "harmless")


def test_unknown_names_fail_with_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown loss 'nope' in family 'pair'; valid names: "
                                         r"\[.*'sigmoid'.*\]"):
        ps.make_loss_fn(PrefConfig(loss="nope"))
    with pytest.raises(ValueError, match=r"valid families"):
        register_loss("x", "no_such_family")
    with pytest.raises(ValueError, match="already registered"):
        register_loss("sigmoid", "pair")(lambda inp, cfg: None)


def test_loss_registered_outside_the_package_trains_by_name(tiny, tmp_path, monkeypatch):
    cfg = PrefConfig(loss="avg_margin_hinge", beta=1.0)
    assert not ps.needs_reference(cfg)
    data = PrefData("pair", _pairs(), tiny["tok"], TCFG)
    # reference-free by its own declaration: nothing computes reference log-probs
    monkeypatch.setattr(ps, "reference_pair_values", lambda *a, **k: pytest.fail("reference"))
    assert attach_reference(tiny["model"], data, cfg, "cache") is data
    loss_fn = ps.make_loss_fn(cfg, completion_len=TCFG.max_completion_len)
    res = train_preference(fresh(tiny["model"]), data, loss_fn,
                           TrainConfig(steps=12, batch_size=8, optim=OptimConfig(lr=1e-3),
                                       save_every=1000, progress=False),
                           tmp_path / "run", eval_data=data, name="avg_margin_hinge",
                           compiler_options=FAST_COMPILE)
    assert res.after["loss"] < res.before["loss"]
    assert res.after["outside/margin"] > res.before["outside/margin"]
    assert res.after["rewards/accuracies"] >= res.before["rewards/accuracies"]
