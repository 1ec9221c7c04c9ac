"""Will a paper-scale run compile and fit? Ahead-of-time compile for a TPU topology, on any machine.

    python -m align_jax.aot refalign_safety                       # its paper-scale preset
    python -m align_jax.aot rpo_hh preset=rpo_mistral7b topology=v5p:2x2x2 mesh=1,-1,1
    python -m align_jax.aot refalign_safety model=/path/config.json rows=64 remat=true
    python -m align_jax.aot dpo preset=tiny_dpo topology=v5e:2x2 slices=2   # multi-slice

With ``libtpu`` importable (``pip install libtpu==0.0.42.1`` — the version jax 0.10.2 pins; no TPU
needed), ``jax.experimental.topologies`` describes the named slice as compile-only devices. The
policy (and encoder) are built abstractly (``nnx.eval_shape``: no weights exist), laid on the
slice with the experiment's mesh and the one rules table (``align_jax.sharding``), and every
jitted program the experiment runs is lowered and compiled by the TPU compiler:

* online RefAlign: the REINFORCE train step (AdamW state included), the sampler's prefill and
  decode loop, the BERTScore encoder forward, the reference log-prob pass (KL);
* offline preference (dpo): the pairwise train step and the reference log-prob pass;
* ALaRM: the token-level PPO-clip step, the sampler, the holistic reward model's forward (and
  the reference pass with a KL penalty);
* LD-Align: the latent-weighted DPO step and reference pass, the sampler (each round's losers),
  the guide's encoder ϕ and one reconstruction update of its decoder ψ.

Per program and per chip it prints argument, output, temp and peak bytes against the chip's
HBM, FLOPs (``cost_analysis``) and compile time; exits 1 with ``does not fit: program X needs N
GiB of HBM per chip on TOPOLOGY, has M`` and the knobs that help when one does not fit (the
compiler may also refuse outright with RESOURCE_EXHAUSTED, reported the same way).
Model shapes come from a named preset or an HF ``config.json`` (``model=``); no weights needed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from align_jax.aot_presets import ENCODERS, HBM_GIB, MODELS, PRESETS, Preset
from align_jax.errors import ConfigError

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    compile_s: float
    arg: int
    out: int
    temp: int
    alias: int
    flops: float

    @property
    def peak(self) -> int:  # live at once: inputs + outputs not aliased to inputs + scratch
        return self.arg + self.out - self.alias + self.temp


def topology_devices(name: str, slices: int = 1):
    """Compile-only devices of a TPU slice, e.g. ``v5p:4x4x4`` (needs libtpu, not a TPU);
    ``slices`` > 1: that many slices joined over the data-center network (multi-slice), listed
    slice-major, so a mesh whose data axis is ``slices`` puts data parallelism across them."""
    import os

    # compile-only: several processes may hold libtpu at once (its lockfile guards real chips)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        kw = {"num_slices": slices} if slices > 1 else {}
        return list(topologies.get_topology_desc(topology_name=name, platform="tpu",
                                                 **kw).devices)
    except Exception as e:  # no libtpu, or a name the runtime does not know
        raise ConfigError(f"topology={name}: cannot describe it ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]}). Install libtpu==0.0.42.1 "
                          "(pip install libtpu==0.0.42.1; no TPU needed) and name a slice "
                          "like v5p:2x2x1, v5e:4x4, v4:2x2x2") from None


def hbm_gib(topology: str) -> float:
    gen = topology.split(":")[0].lower()
    if gen not in HBM_GIB:
        raise ConfigError(f"topology={topology}: unknown chip {gen!r} (known: {sorted(HBM_GIB)})")
    return HBM_GIB[gen]


def _compile(name: str, lowered_fn: Callable[[], Any]) -> Program:
    t = time.perf_counter()
    try:
        compiled = lowered_fn().compile()
    except Exception as e:
        msg = str(e)
        if "RESOURCE_EXHAUSTED" in msg or "HBM" in msg:
            raise MemoryError(f"program {name}: the compiler refused it: "
                              f"{msg.splitlines()[0][:300]}") from None
        raise
    dt = time.perf_counter() - t
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return Program(name, dt, m.argument_size_in_bytes, m.output_size_in_bytes,
                   m.temp_size_in_bytes, m.alias_size_in_bytes, float((cost or {}).get("flops", 0)))


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def _batch(mesh, shapes: dict[str, tuple[tuple[int, ...], Any]]):
    from align_jax.sharding import batch_sharding

    return {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding(mesh, len(s)))
            for k, (s, d) in shapes.items()}


def abstract_policy(cfg, mesh, optim):
    """(bundle, abstract TrainState with shardings, abstract frozen) — nothing materialised."""
    from align_jax.models.llama import Decoder

    return abstract_train_state(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh, optim)


def abstract_train_state(build: Callable[[], Any], mesh, optim, trainable=None):
    """(bundle with abstract frozen state, abstract TrainState) of the module ``build()`` makes,
    both with the rules table's shardings on ``mesh``; ``trainable`` as ``split_model``'s."""
    from align_jax.train.state import TrainState, split_model, tree_shardings

    bundle, params = split_model(nnx.eval_shape(build), trainable)
    opt_state = jax.eval_shape(optim.init, params)
    state = TrainState(params=params, opt_state=opt_state,
                       step=jax.ShapeDtypeStruct((), jnp.int32),
                       rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    state = _abstract(state, tree_shardings(state, mesh))
    frozen = _abstract(bundle.frozen, tree_shardings(bundle.frozen, mesh))
    return bundle.replace_frozen(frozen), state


class _CompileOnce:
    """A lowered program whose ``compile()`` runs once: the decode loop needs the prefill's
    compiled output shardings, and the prefill's own row has compiled it already (minutes at 8B)."""

    def __init__(self, lower: Callable[[], Any], mesh):
        self._lower, self._mesh, self._compiled = lower, mesh, None

    def compile(self):
        if self._compiled is None:
            from align_jax.sharding import use_mesh

            with use_mesh(self._mesh):
                self._compiled = self._lower().compile()
        return self._compiled


def _sampler_programs(bundle, state, mesh, rows: int, prompt_len: int, gen_len: int):
    from align_jax.sampling.sampler import SamplingConfig, _compiled, _dynamic, _static
    from align_jax.sharding import use_mesh
    from align_jax.train.state import tree_shardings

    gdef, mstate = nnx.split(bundle.merge(state.params))
    mstate = _abstract(mstate, tree_shardings(mstate, mesh))
    scfg = SamplingConfig(max_new_tokens=gen_len, temperature=0.7)
    prefill, decode = _compiled(gdef, _static(scfg, mesh), mesh)
    rep = NamedSharding(mesh, P())
    dyn = jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype,
                                                      sharding=rep), _dynamic(scfg, (2,), 0))
    ids = _batch(mesh, {"ids": ((rows, prompt_len), jnp.int32),
                        "mask": ((rows, prompt_len), jnp.int32)})
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
    args = (mstate, ids["ids"], ids["mask"], key, dyn)
    prefill_once = _CompileOnce(lambda: prefill.lower(*args), mesh)

    def lower_decode():  # the carry as the prefill leaves it: its shapes and shardings
        with use_mesh(mesh):
            shapes = jax.eval_shape(prefill, *args)
            carry = _abstract(shapes, prefill_once.compile().output_shardings)
            stop = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
            return decode.lower(mstate, carry, dyn, stop)

    return [(f"sampler prefill ({rows} rows x {prompt_len} tokens)", lambda: prefill_once),
            (f"sampler decode loop ({gen_len} tokens)", lower_decode)]


def _encoder_program(name: str, rows: int, length: int, mesh):
    from align_jax.models.encoder import Encoder
    from align_jax.rewards.similarity import _encode_kernel
    from align_jax.sharding import use_mesh
    from align_jax.train.state import tree_shardings

    cfg = ENCODERS[name]
    gdef, estate = nnx.split(nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0))))
    estate = _abstract(estate, tree_shardings(estate, mesh))
    tok = _batch(mesh, {"ids": ((rows, length), jnp.int32), "mask": ((rows, length), jnp.bool_)})

    def lower():
        with use_mesh(mesh):
            return _encode_kernel.lower(gdef, cfg.num_layers, estate, tok["ids"], tok["mask"])

    return (f"BERTScore encoder ({name}, {rows} texts x {length})", lower)


def online_programs(p: Preset, mesh, optim) -> list:
    """RefAlign's programs at the preset's shapes: (name, lower) pairs."""
    from align_jax.algorithms import refalign as ra
    from align_jax.train.step import make_train_step

    bundle, state = abstract_policy(p.policy_config(), mesh, optim)
    R, T = p.rows, p.prompt_len + p.gen_len
    seq = _batch(mesh, {"input_ids": ((R, T), jnp.int32), "attention_mask": ((R, T), jnp.int32),
                        "loss_mask": ((R, T), jnp.int32), "adv": ((R,), jnp.float32),
                        "old_logps": ((R, T - 1), jnp.float32)})
    if p.kl_coef:
        seq.update(_batch(mesh, {"init_logps": ((R, T - 1), jnp.float32)}))
    step = make_train_step(ra.make_loss_fn(ra.RefAlignConfig(k=p.k, kl_coef=p.kl_coef)), optim,
                           bundle, mesh)
    init_fn = ra.make_init_logps_fn(bundle, mesh=mesh)
    return ([("train step (REINFORCE + AdamW)", lambda: step.lower(state, seq)),
             ("reference log-probs (KL to the initial policy)",
              lambda: init_fn.lower(state.params, seq))]
            + _sampler_programs(bundle, state, mesh, R, p.prompt_len, p.gen_len)
            + [_encoder_program(p.encoder, 2 * R, p.encoder_len, mesh)])


def preference_programs(p: Preset, mesh, optim, policy=None) -> list:
    """The offline pairwise step (DPO family, cached reference) and the reference pass;
    ``policy``: an ``abstract_policy`` result to reuse (built here when None)."""
    from align_jax.algorithms.preference_step import make_pair_loss_fn, reference_pair_values
    from align_jax.losses import PrefConfig
    from align_jax.train.step import make_train_step

    bundle, state = policy or abstract_policy(p.policy_config(), mesh, optim)
    B, T = p.rows, p.prompt_len + p.gen_len
    shapes = {}
    for side in ("chosen", "rejected"):
        for k in ("input_ids", "attention_mask", "loss_mask"):
            shapes[f"{side}_{k}"] = ((B, T), jnp.int32)
    pairs = _batch(mesh, shapes)
    refs = _batch(mesh, {k: ((B,), jnp.float32) for k in ("ref_chosen_logps",
                                                           "ref_rejected_logps")})
    if p.loss == "ld_align":  # the guide's per-pair weights ride in the batch
        refs.update(_batch(mesh, {"pair_weight": ((B,), jnp.float32)}))
    if p.loss.startswith("rpo_"):  # RPO: groups of G pairs, prompt embeddings (MiniLM's)
        from align_jax.algorithms.preference_step import make_rpo_loss_fn
        from align_jax.losses.rpo import RPOConfig

        emb_dim = ENCODERS["minilm_l6"].hidden_size
        refs.update(_batch(mesh, {"emb": ((B, emb_dim), jnp.float32)}))
        loss_fn = make_rpo_loss_fn(RPOConfig(variant=p.loss[len("rpo_"):], beta=p.beta,
                                             group_size=p.group_size), completion_len=p.gen_len)
    else:
        loss_fn = make_pair_loss_fn(PrefConfig(loss=p.loss, beta=p.beta),
                                    completion_len=p.gen_len)
    step = make_train_step(loss_fn, optim, bundle, mesh)
    from align_jax.sharding import use_mesh

    def ref_values(params, b):  # as reference_cache runs it: traced under the mesh
        with use_mesh(mesh):
            return reference_pair_values(bundle.merge(params), b)

    ref_fn = jax.jit(ref_values)
    return [(f"train step ({p.loss}, cached reference, AdamW)",
             lambda: step.lower(state, {**pairs, **refs})),
            ("reference log-probs (cache pass)", lambda: ref_fn.lower(state.params, pairs))]


def _reward_model_program(p: Preset, rows: int, length: int, mesh):
    """The holistic reward model's forward: a policy-family decoder with a score head."""
    from align_jax.models.llama import Decoder
    from align_jax.models.score_head import ScoredDecoder
    from align_jax.sharding import use_mesh
    from align_jax.train.state import tree_shardings

    cfg = dataclasses.replace(MODELS[p.reward_model], dtype=p.dtype, param_dtype=p.dtype)
    gdef, rstate = nnx.split(nnx.eval_shape(lambda: ScoredDecoder(
        Decoder(cfg, rngs=nnx.Rngs(0)), 1, pad_token_id=cfg.pad_token_id, rngs=nnx.Rngs(0))))
    rstate = _abstract(rstate, tree_shardings(rstate, mesh))
    tok = _batch(mesh, {"ids": ((rows, length), jnp.int32), "mask": ((rows, length), jnp.int32)})

    @jax.jit
    def scores(state, ids, mask):  # as DecoderRewardModel runs it
        with use_mesh(mesh):
            return nnx.merge(gdef, state)(ids, mask)

    return (f"reward model forward ({p.reward_model}, {rows} x {length})",
            lambda: scores.lower(rstate, tok["ids"], tok["mask"]))


def alarm_programs(p: Preset, mesh, optim) -> list:
    """ALaRM's programs: the token-level PPO-clip step (per-token advantages from the
    hierarchical rewards), the sampler, the holistic reward model's forward, and the reference
    pass when a KL penalty is on."""
    from align_jax.algorithms import refalign as ra
    from align_jax.algorithms.token_objective import TokenPGObjective
    from align_jax.losses.token_pg import TokenPGConfig
    from align_jax.train.step import make_train_step

    bundle, state = abstract_policy(p.policy_config(), mesh, optim)
    R, T = p.rows, p.prompt_len + p.gen_len
    seq = _batch(mesh, {"input_ids": ((R, T), jnp.int32), "attention_mask": ((R, T), jnp.int32),
                        "loss_mask": ((R, T), jnp.int32), "adv": ((R, T - 1), jnp.float32),
                        "old_logps": ((R, T - 1), jnp.float32)})
    pg = TokenPGConfig(beta=p.kl_coef)
    if p.kl_coef:
        seq.update(_batch(mesh, {"init_logps": ((R, T - 1), jnp.float32)}))
    objective = TokenPGObjective(token_rewards=lambda ro, comps: (None, {}), loss="ppo", pg=pg)
    step = make_train_step(objective.make_loss_fn(), optim, bundle, mesh)
    progs = [("train step (token-level PPO-clip + AdamW)", lambda: step.lower(state, seq))]
    if p.kl_coef:
        init_fn = ra.make_init_logps_fn(bundle, mesh=mesh)
        progs.append(("reference log-probs (KL to the initial policy)",
                      lambda: init_fn.lower(state.params, seq)))
    return (progs + _sampler_programs(bundle, state, mesh, R, p.prompt_len, p.gen_len)
            + [_reward_model_program(p, R, T, mesh)])


def _guide_programs(p: Preset, mesh) -> list:
    """LD-Align's guide: ϕ (encoder, mean-pooled, projected) and one reconstruction update of
    ψ (the policy-family decoder with LoRA and the latent as prefix vectors)."""
    from align_jax.models.encoder import Encoder
    from align_jax.models.latent_ae import (GUIDE_TRAINABLE, GuideConfig, LatentGuide,
                                            reconstruction_loss_fn)
    from align_jax.models.llama import Decoder
    from align_jax.sharding import use_mesh
    from align_jax.train.optim import OptimConfig
    from align_jax.train.step import make_train_step

    gcfg = GuideConfig()
    dcfg = dataclasses.replace(p.policy_config(), lora_rank=gcfg.lora_rank,
                               lora_alpha=gcfg.lora_alpha)
    optim = OptimConfig(lr=1e-3).make(100)
    bundle, state = abstract_train_state(lambda: LatentGuide(
        Encoder(ENCODERS[p.encoder], rngs=nnx.Rngs(0)), Decoder(dcfg, rngs=nnx.Rngs(0)), gcfg,
        rngs=nnx.Rngs(0)), mesh, optim, GUIDE_TRAINABLE)
    R, T, E = p.rows, p.prompt_len + p.gen_len, min(p.encoder_len, gcfg.encoder_max_len)
    b = _batch(mesh, {"enc_input_ids": ((R, E), jnp.int32), "enc_attention_mask": ((R, E), jnp.int32),
                      "enc_token_type_ids": ((R, E), jnp.int32), "input_ids": ((R, T), jnp.int32),
                      "attention_mask": ((R, T), jnp.int32), "loss_mask": ((R, T), jnp.int32)})
    step = make_train_step(reconstruction_loss_fn(), optim, bundle, mesh)

    @jax.jit
    def phi(params, frozen, ids, mask, types):  # as make_latent_fn runs it
        with use_mesh(mesh):
            return bundle.merge(params, frozen).encode(ids, mask, types)

    return [(f"guide encoder phi ({p.encoder}, {R} pairs x {E})",
             lambda: phi.lower(state.params, bundle.frozen, b["enc_input_ids"],
                               b["enc_attention_mask"], b["enc_token_type_ids"])),
            (f"guide reconstruction step (LoRA {gcfg.lora_rank}, {gcfg.prefix_len} prefix)",
             lambda: step.lower(state, b))]


def ld_align_programs(p: Preset, mesh, optim) -> list:
    """LD-Align's programs: the latent-weighted DPO step and reference pass, the sampler that
    draws each round's losers, and the guide (encoder ϕ, reconstruction update)."""
    bundle, state = abstract_policy(p.policy_config(), mesh, optim)
    return (preference_programs(dataclasses.replace(p, loss="ld_align"), mesh, optim,
                                (bundle, state))
            + _sampler_programs(bundle, state, mesh, p.rows, p.prompt_len, p.gen_len)
            + _guide_programs(p, mesh))


FAMILY = {"online": online_programs, "preference": preference_programs,
          "alarm": alarm_programs, "ld_align": ld_align_programs}

SUGGEST = ("more chips on the fsdp axis (mesh=1,-1,1: weights, grads and Adam moments are "
           "sharded over it), remat=true (recompute activations in the backward pass), fewer "
           "rows per step (rows=), bf16 weights (dtype=bfloat16), a larger slice (topology=)")


def run(p: Preset, topology: str, mesh_spec: str, slices: int = 1) -> list[Program]:
    from align_jax.sharding import make_mesh
    from align_jax.train.optim import OptimConfig

    devices = topology_devices(topology, slices)
    mesh = make_mesh(mesh_spec, devices=devices)
    optim = OptimConfig(lr=1e-6).make(100)
    hbm = hbm_gib(topology) * GIB
    cfg = p.policy_config()
    print(f"[aot] {p.name}: policy {p.model} ({cfg.param_count() / 1e9:.2f}B params, "
          f"{cfg.dtype}, remat={cfg.remat}), {p.rows} rows x {p.prompt_len}+{p.gen_len} tokens; "
          f"{topology}{f' x {slices} slices' if slices > 1 else ''}: {len(devices)} chips x "
          f"{hbm / GIB:.0f} GiB HBM, mesh "
          f"{dict(mesh.shape)}")
    print(f"{'program':<52}{'arg':>8}{'out':>8}{'temp':>8}{'peak':>8}{'HBM':>6}"
          f"{'TFLOP':>9}{'compile s':>10}   (GiB per chip)")
    out = []
    for name, lower in FAMILY[p.family](p, mesh, optim):
        try:
            prog = _compile(name, lower)
        except MemoryError as e:
            raise SystemExit(f"does not fit: {e} (on {topology}). Try: {SUGGEST}") from None
        out.append(prog)
        print(f"{name:<52}{prog.arg / GIB:>8.2f}{prog.out / GIB:>8.2f}{prog.temp / GIB:>8.2f}"
              f"{prog.peak / GIB:>8.2f}{100 * prog.peak / hbm:>5.0f}%{prog.flops / 1e12:>9.2f}"
              f"{prog.compile_s:>10.1f}", flush=True)
        if prog.peak > hbm:
            raise SystemExit(f"does not fit: program {name} needs {prog.peak / GIB:.1f} GiB of "
                             f"HBM per chip on {topology}, has {hbm / GIB:.0f}. Try: {SUGGEST}")
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("presets:", ", ".join(f"{k} ({v.experiment}, {v.topology})"
                                     for k, v in PRESETS.items()))
        return 0
    experiment, kv = argv[0], dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    bad = [a for a in argv[1:] if "=" not in a]
    if bad:
        raise ConfigError(f"expected key=value, got {bad[0]!r}")
    name = kv.pop("preset", experiment)
    if name not in PRESETS:
        raise ConfigError(f"preset={name}: unknown (known: {', '.join(PRESETS)})")
    p = PRESETS[name]
    if p.experiment != experiment:
        raise ConfigError(f"preset={name} is for {p.experiment}, not {experiment}")
    topology = kv.pop("topology", p.topology)
    try:
        slices = int(kv.pop("slices", "1"))
    except ValueError:
        raise ConfigError("slices= expects a whole number of TPU slices") from None
    # several slices: data parallelism across them (DCN), fsdp inside each (ICI)
    mesh = kv.pop("mesh", p.mesh if slices == 1 else f"{slices},-1,1")
    for key in ("model", "reward_model"):  # a named shape or an HF config.json
        if key in kv:
            kv[key] = _model_from_path(kv[key], key)
    p = p.override(**kv)
    run(p, topology, mesh, slices)
    return 0


def _model_from_path(path: str, key: str = "model") -> str:
    """``model=`` / ``reward_model=`` an HF config.json (or its directory): registered as a
    preset model."""
    from align_jax.models.config import DecoderConfig

    f = Path(path)
    f = f / "config.json" if f.is_dir() else f
    if not f.is_file():
        if path in MODELS:
            return path
        raise ConfigError(f"{key}={path}: neither a named model ({', '.join(MODELS)}) nor an "
                          "HF config.json")
    MODELS[str(f)] = DecoderConfig.from_hf(json.loads(f.read_text()))
    return str(f)


if __name__ == "__main__":
    from align_jax.cli import run_main

    run_main(lambda a: main(a))
