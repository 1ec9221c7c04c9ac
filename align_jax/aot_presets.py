"""Paper-scale presets for ``python -m align_jax.aot``: model shapes (no weights), per-experiment
workloads and the slice each is suggested for. Shapes are the published configs' (HF
``config.json`` values); workloads are the papers' (docs/methods.md). bench/aot_presets.py
compiles every preset for its topology and writes the HBM table to bench/RESULTS.md."""

from __future__ import annotations

import dataclasses

from align_jax.errors import ConfigError
from align_jax.models.config import DecoderConfig
from align_jax.models.encoder import EncoderConfig

# HBM per chip, GiB (Cloud TPU docs): what the compiled programs are checked against.
HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}

MODELS: dict[str, DecoderConfig] = {
    "llama3_8b": DecoderConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                               num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                               rope_theta=500000.0, max_position_embeddings=8192,
                               eos_token_id=128009, pad_token_id=128009),
    "mistral_7b": DecoderConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                                num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                                max_position_embeddings=32768, sliding_window=4096,
                                model_type="mistral", eos_token_id=2, pad_token_id=0),
    # ALaRM's 7B class: Llama-2 shapes (policy; the holistic RM is a decoder with a score head)
    "llama2_7b": DecoderConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                               num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                               max_position_embeddings=4096, eos_token_id=2, pad_token_id=0),
    "llama2_13b": DecoderConfig(vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                                num_layers=40, num_heads=40, num_kv_heads=40, head_dim=128,
                                max_position_embeddings=4096, eos_token_id=2, pad_token_id=0),
    "smollm2_135m": DecoderConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                  num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                                  tie_word_embeddings=True, max_position_embeddings=8192,
                                  eos_token_id=2, pad_token_id=2),
}

ENCODERS: dict[str, EncoderConfig] = {
    # bart-large-mnli's encoder class (24 x 1024, BERTScore's large default); roberta layout
    "roberta_large": EncoderConfig(model_type="roberta", vocab_size=50265, hidden_size=1024,
                                   num_layers=24, num_heads=16, intermediate_size=4096,
                                   max_position_embeddings=514, type_vocab_size=1,
                                   layer_norm_eps=1e-5, pad_token_id=1),
    "minilm_l6": EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=384,
                               num_layers=6, num_heads=12, intermediate_size=1536),
}


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    experiment: str
    family: str  # online | preference | alarm | ld_align (which programs: align_jax.aot.FAMILY)
    model: str
    topology: str  # the suggested slice
    mesh: str = "1,-1,1"  # data, fsdp, tensor (fsdp over every chip by default)
    rows: int = 512  # sequences per step (online: prompts x K; preference: pairs)
    prompt_len: int = 192
    gen_len: int = 384
    k: int = 2
    kl_coef: float = 0.0
    encoder: str = "roberta_large"  # BERTScore encoder / LD-Align's guide encoder
    reward_model: str = "llama2_7b"  # ALaRM's holistic reward model (a named decoder shape)
    encoder_len: int = 512
    loss: str = "sigmoid"  # a pairwise loss, or rpo_paired / rpo_unpaired / rpo_diagonal
    beta: float = 0.1
    group_size: int = 8  # RPO: pairs per contrastive group
    dtype: str = "float32"
    remat: bool = False

    def policy_config(self) -> DecoderConfig:
        return dataclasses.replace(MODELS[self.model], dtype=self.dtype, param_dtype=self.dtype,
                                   remat=self.remat)

    def override(self, **kv: str) -> "Preset":
        """``key=value`` strings from the command line, typed by the field."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        out = {}
        for k, v in kv.items():
            if k not in fields or k in ("name", "experiment", "family"):
                raise ConfigError(f"{k}={v}: not an aot knob (knobs: "
                                  f"{', '.join(f for f in fields if f not in ('name', 'experiment', 'family'))})")
            typ = type(getattr(self, k))
            out[k] = (v.lower() in ("1", "true", "yes")) if typ is bool else typ(v)
        for key in ("model", "reward_model"):
            if key in out and out[key] not in MODELS:
                raise ConfigError(f"{key}={out[key]}: unknown (known: {', '.join(MODELS)})")
        if "encoder" in out and out["encoder"] not in ENCODERS:
            raise ConfigError(f"encoder={out['encoder']}: unknown (known: {', '.join(ENCODERS)})")
        return dataclasses.replace(self, **out)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    # RefAlign safety at the paper's scale: Llama-3-8B-class policy, bart-large-mnli-class
    # BERTScore encoder, 256 prompts x K=2 per step, prompts 192 / answers 384 tokens
    Preset("refalign_safety", "refalign_safety", "online", "llama3_8b", "v5p:4x4x4",
           rows=512, k=2, kl_coef=0.0, remat=True),
    Preset("refalign_general", "refalign_general", "online", "llama3_8b", "v5p:4x4x4",
           rows=512, k=2, remat=True),
    # RPO (Mistral-7B on HH, groups of 8 pairs) and AP + SimPO (Llama-3-8B-Instruct): the
    # pairwise step at 128 pairs per step, 512-token sequences
    Preset("rpo_mistral7b", "rpo_hh", "preference", "mistral_7b", "v5p:2x2x4", rows=128,
           prompt_len=256, gen_len=256, loss="rpo_paired", remat=True),
    Preset("dpo", "dpo", "preference", "llama3_8b", "v5p:2x2x4", rows=128, prompt_len=256,
           gen_len=256, remat=True),
    Preset("ap_simpo_llama3_8b", "dpo", "preference", "llama3_8b", "v5p:2x2x4", rows=128,
           prompt_len=256, gen_len=256, loss="simpo", beta=10.0, remat=True),
    # ALaRM at 7B: Llama-2-7B-class policy and holistic reward model (reward_model=llama2_13b
    # for a 13B RM), long-form QA at 256 sampled answers per step, token-level PPO with a KL
    Preset("alarm", "alarm", "alarm", "llama2_7b", "v5p:2x2x4", rows=256, prompt_len=256,
           gen_len=256, k=1, kl_coef=0.05, remat=True),
    # LD-Align at the paper's scale: Mistral-7B SFT policy, 128 (reference, sample) pairs per
    # step, UltraChat-length turns; the guide = MiniLM encoder + the policy's decoder with LoRA
    Preset("ld_align", "ld_align", "ld_align", "mistral_7b", "v5p:2x2x4", rows=128,
           prompt_len=256, gen_len=256, encoder="minilm_l6", encoder_len=128, loss="ld_align",
           remat=True),
    # the offline default's shapes, for a quick check on any slice
    Preset("tiny_refalign", "refalign_safety", "online", "smollm2_135m", "v5p:2x2x1", rows=8,
           prompt_len=32, gen_len=16, encoder="minilm_l6", encoder_len=64),
    Preset("tiny_dpo", "dpo", "preference", "smollm2_135m", "v5p:2x2x1", rows=8, prompt_len=32,
           gen_len=32),
    Preset("tiny_alarm", "alarm", "alarm", "smollm2_135m", "v5p:2x2x1", rows=8, prompt_len=32,
           gen_len=16, kl_coef=0.05, reward_model="smollm2_135m"),
    Preset("tiny_ld_align", "ld_align", "ld_align", "smollm2_135m", "v5p:2x2x1", rows=8,
           prompt_len=32, gen_len=16, encoder="minilm_l6", encoder_len=64, loss="ld_align"),
)}
