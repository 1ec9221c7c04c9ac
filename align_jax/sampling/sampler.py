"""KV-cache sampler: one jitted prefill over left-padded prompts, then one jitted
`lax.while_loop` decode that updates the preallocated :class:`KVCache` in place.

Compilation: the model crosses jit as (graphdef, state); a (prefill, decode) pair of jitted
functions is built once per (graphdef, static sampling knobs, mesh) and jax caches each compile
per input shape, i.e. per (batch, prompt bucket, max_new_tokens). The prefill only fills the
cache and projects the last position; the decode loop body is sample -> record -> forward, so
the sampling code is compiled once. Prompt lengths are rounded up to a multiple of
`prompt_bucket` (extra LEFT padding), so a new prompt length does not recompile. Temperature,
top-p / min-p values, stop ids and the pad id are traced values: changing them never recompiles;
greedy on/off is traced as well; switching a filter on/off, top_k or max_new_tokens recompiles.

Row order with `n` samples per prompt: rows are [p0s0, p0s1, ..., p0s(n-1), p1s0, ...]
(`np.repeat` of the prompts), i.e. row r is sample r % n of prompt r // n.

Randomness: the key for decode step t is `fold_in(key, t)` (the first token is step 0); each
step draws one uniform per row (inverse-CDF sampling, `filters.categorical_from_probs`). The
same key gives the same output, and with jax's partitionable threefry (the default) the same
output on any mesh. A row's draws do not depend on when other rows stop.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec as P

from align_jax import sharding as shd
from align_jax.data.tokenize import TokenizeConfig, encode_prompts
from align_jax.errors import ConfigError
from align_jax.models.decode import LayerCache, decode_step, decode_weights
from align_jax.models.llama import KVCache
from align_jax.sampling.filters import sample_logits
from align_jax.sanity import check_context

_STOP_SLOTS = 8  # stop-id array is padded to a multiple of this (-1 = unused) to share compiles


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding knobs.

    eos_token_ids: None -> the model config's eos id(s); () -> no EOS.
    stop_token_ids: extra ids that end a row (kept even with ignore_eos, like vLLM).
    ignore_eos: EOS ids do not end a row (ALaRM generates to full length).
    greedy (or temperature == 0): argmax decoding.
    pad_token_id: fills `tokens` after a row stops; None -> the model config's pad id, else the
      first EOS id, else 0.
    unroll_layers: decode through `models.decode` (per-layer LoRA-merged, fused weights and
      per-layer K/V buffers, unrolled layer loop) instead of the layer scan over stacked
      weights. None = on when the model's devices are CPUs: there each scan step's slice of
      the stacked weights is a copy (the whole model copied per token); the price is a longer
      compile and a second copy of the layer weights while decoding. Accelerators default to
      the scan. Prefill always scans.
    """

    max_new_tokens: int = 64  # new tokens per sampled response
    temperature: float = 1.0  # sampling temperature (0 = greedy)
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # nucleus sampling threshold (1.0 = off)
    min_p: float = 0.0  # drop tokens below min_p × the top probability (0 = off)
    greedy: bool = False  # argmax decoding
    n: int = 1  # samples per prompt (the online methods sample their objective's k instead)
    eos_token_ids: tuple[int, ...] | None = None  # None = the model config's; () = no EOS
    stop_token_ids: tuple[int, ...] = ()  # extra ids that end a row
    ignore_eos: bool = False  # EOS does not end a row (generate to full length)
    prompt_bucket: int = 32  # prompt lengths are padded up to a multiple of this (fewer compiles)
    pad_token_id: int | None = None  # fills tokens after a row stops; None = model pad / EOS / 0
    unroll_layers: bool | None = None  # per-layer decode path; None = on for CPU devices

    def __post_init__(self):
        for name in ("eos_token_ids", "stop_token_ids"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                v = (int(v),) if isinstance(v, (int, np.integer)) else tuple(int(i) for i in v)
                object.__setattr__(self, name, v)

    def check(self) -> None:
        """Values the sampler cannot run with (checked when sampling starts, so that a config
        parsed from a command line reaches ``sanity.check_config``, which names the key)."""
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (self.n >= 1, "n must be >= 1"),
            (self.prompt_bucket >= 1, "prompt_bucket must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"SamplingConfig: {msg}")

    def replace(self, **kw) -> "SamplingConfig":
        return dataclasses.replace(self, **kw)

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


@struct.dataclass
class SampleOutput:
    """Generated rows (B*n, order documented in the module docstring).

    tokens [R, N] int32 (pad after the stop token / unused steps); logprobs [R, N] under the
    sampling distribution (temperature + filters), logprobs_raw [R, N] under the untempered,
    unfiltered policy, both 0 where mask is 0; lengths [R] (including the stop token);
    mask [R, N] (1 on generated tokens up to and including the stop token); stopped [R] (the row
    ended on an EOS/stop id rather than the length limit); prompt_ids/prompt_mask [R, P]
    (left-padded to the bucket, repeated n times) for teacher forcing prompt+tokens."""

    tokens: jax.Array
    logprobs: jax.Array
    logprobs_raw: jax.Array
    lengths: jax.Array
    mask: jax.Array
    stopped: jax.Array
    prompt_ids: jax.Array
    prompt_mask: jax.Array


@struct.dataclass
class _Carry:
    step: jax.Array  # [] tokens generated so far (= next column to write)
    cache: KVCache | LayerCache
    logits: jax.Array  # [R, V] float32: next-token logits (from the prefill / last forward)
    tokens: jax.Array
    logp: jax.Array
    logp_raw: jax.Array
    done: jax.Array  # [R] bool: stopped (or a batch-padding row)
    lengths: jax.Array
    last: jax.Array  # [R] token to feed next
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class _Static:
    """The compile-relevant part of a SamplingConfig."""

    max_new_tokens: int
    top_k: int
    use_top_p: bool
    use_min_p: bool
    unroll_layers: bool
    on_cpu: bool


def _static(cfg: SamplingConfig, mesh=None) -> _Static:
    devices = mesh.devices.flat if mesh is not None else jax.devices()
    on_cpu = all(d.platform == "cpu" for d in devices)
    unroll = on_cpu if cfg.unroll_layers is None else cfg.unroll_layers
    return _Static(cfg.max_new_tokens, cfg.top_k, cfg.top_p < 1.0, cfg.min_p > 0.0, bool(unroll),
                   on_cpu)


def _dynamic(cfg: SamplingConfig, eos: tuple[int, ...], pad: int) -> dict:
    stops = tuple(cfg.stop_token_ids) + (() if cfg.ignore_eos else tuple(eos))
    size = max(_STOP_SLOTS, -(-len(stops) // _STOP_SLOTS) * _STOP_SLOTS)
    temp = 1.0 if cfg.temperature == 0.0 else cfg.temperature
    return dict(
        greedy=np.bool_(cfg.is_greedy), temperature=np.float32(temp),
        top_p=np.float32(cfg.top_p), min_p=np.float32(cfg.min_p),
        stop_ids=np.asarray(stops + (-1,) * (size - len(stops)), np.int32), pad=np.int32(pad),
    )


def _sample(static: _Static, dyn: dict, key, step, logits_rv):
    return sample_logits(
        jax.random.fold_in(key, step), logits_rv, greedy=dyn["greedy"],
        temperature=dyn["temperature"], top_k=static.top_k,
        top_p=dyn["top_p"] if static.use_top_p else 1.0,
        min_p=dyn["min_p"] if static.use_min_p else 0.0,
    )


def _record(c: _Carry, dyn: dict, tok, lp, lpr) -> _Carry:
    """Write step `c.step`'s token for rows still running; finished rows get pad / 0."""
    alive = ~c.done
    is_stop = jnp.any(tok[:, None] == dyn["stop_ids"][None, :], axis=1)
    tok = jnp.where(alive, tok, dyn["pad"])
    col = (jnp.zeros((), jnp.int32), c.step)
    put = lambda buf, v: jax.lax.dynamic_update_slice(buf, v[:, None].astype(buf.dtype), col)
    return c.replace(
        step=c.step + 1,
        tokens=put(c.tokens, tok),
        logp=put(c.logp, jnp.where(alive, lp, 0.0)),
        logp_raw=put(c.logp_raw, jnp.where(alive, lpr, 0.0)),
        lengths=c.lengths + alive.astype(jnp.int32),
        done=c.done | (alive & is_stop),
        last=tok,
    )


def _constrain_rows(c: _Carry) -> _Carry:
    row = lambda x: shd.constrain(x, ("batch",) + (None,) * (x.ndim - 1))
    return c.replace(cache=c.cache.constrained(),
                     logits=shd.constrain(c.logits, ("batch", "vocab")),
                     tokens=row(c.tokens), logp=row(c.logp), logp_raw=row(c.logp_raw),
                     done=row(c.done), lengths=row(c.lengths), last=row(c.last))


def _prefill(graphdef, static: _Static, state, ids_rp, mask_rp, key, dyn) -> _Carry:
    """Run the prompt through a fresh cache; the carry holds the first token's logits."""
    model = nnx.merge(graphdef, state)
    R, Pb = ids_rp.shape
    N = static.max_new_tokens
    # tokens 0..N-2 are fed back; the last sampled token never enters the cache
    cache = KVCache.init(model.cfg, R, Pb + N - 1)
    h, cache = model.hidden_states(ids_rp, mask_rp, cache=cache)
    # left padding => the last column is every row's final prompt token; project only it
    logits = model.logits_from_hidden(h[:, -1:])[:, 0]
    if static.unroll_layers:
        cache = LayerCache.from_stacked(cache)
    zeros = jnp.zeros((R, N), jnp.float32)
    return _constrain_rows(_Carry(
        step=jnp.zeros((), jnp.int32), cache=cache, logits=logits,
        tokens=jnp.full((R, N), dyn["pad"], jnp.int32), logp=zeros, logp_raw=zeros,
        done=~jnp.any(mask_rp.astype(bool), axis=1),  # batch-padding rows start finished
        lengths=jnp.zeros((R,), jnp.int32), last=jnp.zeros((R,), jnp.int32), key=key,
    ))


def _decode(graphdef, static: _Static, state, carry: _Carry, dyn, stop_at) -> _Carry:
    """Sample -> record -> forward, until every row is done, N tokens exist, or `stop_at`
    tokens exist (streaming chunks). Sampling sits at the top of the body so it is traced
    (compiled) once; the forward after the final token is skipped by a `lax.cond`."""
    model = nnx.merge(graphdef, state)
    N = static.max_new_tokens
    limit = jnp.minimum(stop_at, N)
    # merged/fused/split here, outside the loop: once per call instead of once per token
    weights = decode_weights(model) if static.unroll_layers else None

    def forward(c: _Carry) -> _Carry:
        # finished rows feed an invalid (masked) slot: their outputs are discarded anyway
        if weights is not None:
            logits, cache = decode_step(model, weights, c.cache, c.last, ~c.done)
        else:
            h, cache = model.hidden_states(c.last[:, None], (~c.done)[:, None], cache=c.cache)
            logits = model.logits_from_hidden(h)[:, 0]
        return c.replace(logits=logits, cache=cache)

    def body(c: _Carry) -> _Carry:
        tok, lp, lpr = _sample(static, dyn, c.key, c.step, c.logits)
        c = _record(c, dyn, tok, lp, lpr)
        c = jax.lax.cond((c.step < N) & ~jnp.all(c.done), forward, lambda c: c, c)
        return _constrain_rows(c)

    return jax.lax.while_loop(lambda c: (c.step < limit) & ~jnp.all(c.done), body, carry)


# XLA:CPU hands dots and elementwise fusions to YNNPACK by default. In the decode loop
# (M = batch rows, every weight streamed from memory once per token) its GEMMs move ~6-7 GB/s
# where XLA's own (Eigen) GEMM reaches ~8.5: keeping only YNNPACK's reductions made a SmolLM2
# batch-16 step 119 -> 100 ms (llama-25M: 27 ms either way) and its prefill 2.3 -> 2.0 s (a
# training step: no change, so it is left alone). Per executable: nothing else changes;
# dropped if this jaxlib does not know the option.
_CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.lru_cache(maxsize=1)
def _cpu_decode_options() -> dict | None:
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_DECODE_OPTIONS).lower(1.0).compile()
    except Exception:  # an XLA without this flag rejects it at compile time
        return None
    return _CPU_DECODE_OPTIONS


@functools.lru_cache(maxsize=64)
def _compiled(graphdef, static: _Static, mesh):
    """(prefill, decode) jit objects per (model graph, static knobs, mesh); jax caches the
    compiles per shape. generate() and stream_generate() share them; decode donates its carry
    (cache + buffers), so chunked decoding reuses the same memory."""
    opts = _cpu_decode_options() if static.on_cpu else None
    prefill = jax.jit(functools.partial(_prefill, graphdef, static), compiler_options=opts)
    decode = jax.jit(functools.partial(_decode, graphdef, static), donate_argnums=(1,),
                     compiler_options=opts)
    return prefill, decode


# ---- host side ------------------------------------------------------------------------------
def _resolve_ids(model_cfg, cfg: SamplingConfig) -> tuple[tuple[int, ...], int]:
    eos = cfg.eos_token_ids
    if eos is None:
        e = model_cfg.eos_token_id
        eos = () if e is None else (tuple(e) if isinstance(e, (tuple, list)) else (int(e),))
    pad = cfg.pad_token_id
    if pad is None:
        pad = model_cfg.pad_token_id
        if pad is None:
            pad = eos[0] if eos else 0
    return tuple(int(i) for i in eos), int(pad)


def left_pad(prompt_ids, prompt_mask, bucket: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Move every row's valid tokens (mask 1, in order) to the right end and left-pad the
    length up to a multiple of `bucket`. Accepts left-, right- or un-padded input."""
    ids = np.asarray(prompt_ids)
    mask = np.ones_like(ids, bool) if prompt_mask is None else np.asarray(prompt_mask).astype(bool)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"prompt_ids {ids.shape} / prompt_mask {mask.shape}: need equal [B, P]")
    lens = mask.sum(axis=1)
    if lens.min(initial=1) == 0:
        raise ValueError(f"prompt rows {np.flatnonzero(lens == 0).tolist()} are empty")
    P = int(-(-max(int(lens.max(initial=1)), 1) // bucket) * bucket)
    out_ids = np.full((ids.shape[0], P), pad_id, np.int32)
    out_mask = np.zeros((ids.shape[0], P), np.int32)
    for r in range(ids.shape[0]):
        toks = ids[r][mask[r]]
        out_ids[r, P - len(toks):] = toks
        out_mask[r, P - len(toks):] = 1
    return out_ids, out_mask


class _Run:
    """Shared set-up of generate / stream_generate: bucketing, repeat, placement, compile."""

    def __init__(self, model, prompt_ids, prompt_mask, key, cfg: SamplingConfig, mesh):
        cfg.check()
        graphdef, state = nnx.split(model)
        eos, pad = _resolve_ids(model.cfg, cfg)
        ids, mask = left_pad(prompt_ids, prompt_mask, cfg.prompt_bucket, pad)
        ids, mask = np.repeat(ids, cfg.n, axis=0), np.repeat(mask, cfg.n, axis=0)
        self.rows = ids.shape[0]  # this process's rows (all rows with one process)
        # multi-host: every process feeds the same [rows, P] (the largest, padded), so the global
        # batch is one array; each gets its own rows back (output)
        step = shd.local_batch_multiple(mesh)
        width, rows, longest = shd.agree(mesh, ids.shape[1], -(-self.rows // step) * step,
                                         int(mask.sum(axis=1).max()))
        # before anything is compiled for this shape: positions past the context are garbage
        check_context(getattr(model.cfg, "max_position_embeddings", None), longest,
                      cfg.max_new_tokens, f"max_new_tokens={cfg.max_new_tokens}")
        if width > ids.shape[1]:  # left padding, like left_pad's
            grow = ((0, 0), (width - ids.shape[1], 0))
            ids, mask = np.pad(ids, grow, constant_values=pad), np.pad(mask, grow)
        # pad the batch to a multiple of the mesh's batch axes with all-masked rows (start done)
        extra = rows - self.rows
        if extra:
            ids = np.concatenate([ids, np.full((extra, ids.shape[1]), pad, np.int32)])
            mask = np.concatenate([mask, np.zeros((extra, mask.shape[1]), np.int32)])
        self.dyn = _dynamic(cfg, eos, pad)
        if mesh is not None:
            state = shd.shard_state(state, mesh)
            placed = shd.place_batch({"ids": ids, "mask": mask}, mesh)
            ids, mask = placed["ids"], placed["mask"]
            repl = NamedSharding(mesh, P())
            key = shd.put(key, repl)
            self.dyn = shd.put(self.dyn, repl)
        else:
            ids, mask = jnp.asarray(ids), jnp.asarray(mask)
        self.state, self.ids, self.mask, self.key, self.mesh = state, ids, mask, key, mesh
        self.prefill_fn, self.decode_fn = _compiled(graphdef, _static(cfg, mesh), mesh)
        self.N = cfg.max_new_tokens

    def prefill(self) -> _Carry:
        with shd.use_mesh(self.mesh):  # constrain() is read while tracing
            return self.prefill_fn(self.state, self.ids, self.mask, self.key, self.dyn)

    def decode(self, carry: _Carry, stop_at: int) -> _Carry:
        with shd.use_mesh(self.mesh):
            return self.decode_fn(self.state, carry, self.dyn, np.int32(stop_at))

    def output(self, c: _Carry) -> SampleOutput:
        mask = (jnp.arange(self.N)[None, :] < c.lengths[:, None]).astype(jnp.int32)
        out = SampleOutput(tokens=c.tokens, logprobs=c.logp, logprobs_raw=c.logp_raw,
                           lengths=c.lengths, mask=mask, stopped=c.done,
                           prompt_ids=self.ids, prompt_mask=self.mask)
        if shd.is_multihost(self.mesh):  # this process's rows, on the host
            out = jax.tree.map(shd.local_rows, out)
        if out.tokens.shape[0] != self.rows:
            out = jax.tree.map(lambda x: x[: self.rows], out)
        return out


def generate(model, prompt_ids, prompt_mask, key, cfg: SamplingConfig, mesh=None) -> SampleOutput:
    """Sample `cfg.n` continuations per prompt. prompt_ids/prompt_mask [B, P] (any padding side;
    mask None = no padding). With `mesh`, rows are sharded over data/fsdp and the model over its
    parameter rules; the result does not depend on the mesh."""
    run = _Run(model, prompt_ids, prompt_mask, key, cfg, mesh)
    return run.output(run.decode(run.prefill(), run.N))


def stream_generate(model, prompt_ids, prompt_mask, key, cfg: SamplingConfig, mesh=None,
                    chunk: int = 8) -> Iterator[SampleOutput]:
    """Like :func:`generate`, but yields the partial output every `chunk` tokens (same jitted
    decode loop, stopped early; each yielded output is on the host, since the device carry is
    donated to the next chunk). The tokens equal generate()'s for the same key."""
    run = _Run(model, prompt_ids, prompt_mask, key, cfg, mesh)
    carry = run.decode(run.prefill(), 1)
    while True:
        step = int(carry.step)
        yield jax.device_get(run.output(carry))
        if step >= run.N or bool(jnp.all(carry.done)):
            return
        carry = run.decode(carry, step + chunk)


# ---- text helpers ---------------------------------------------------------------------------
def decode_responses(tokenizer, out: SampleOutput, skip_special_tokens: bool = True) -> list[str]:
    """Text of each row's generated tokens (up to and including its stop token)."""
    toks, lens = np.asarray(jax.device_get(out.tokens)), np.asarray(jax.device_get(out.lengths))
    return [tokenizer.decode(toks[r, : lens[r]].tolist(), skip_special_tokens=skip_special_tokens)
            for r in range(toks.shape[0])]


def prompt_token_ids(tokenizer, prompts: Sequence, chat_template: bool = True) -> list[list[int]]:
    """Token ids per prompt. A prompt is a string or a list of chat messages
    ({"role", "content"}); with `chat_template` the tokenizer's template is applied with
    add_generation_prompt=True (a string becomes one user message)."""
    if not chat_template and any(not isinstance(p, str) for p in prompts):
        raise ValueError("a message-list prompt needs chat_template=True")
    # the data pipeline's rendering, so sampled and trained prompts are the same ids;
    # no truncation here: any prompt length is left-padded to its bucket
    cfg = TokenizeConfig(max_prompt_len=sys.maxsize, use_chat_template=chat_template)
    return encode_prompts(tokenizer, prompts, cfg)


def _pad_lists(seqs: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    P = max(len(s) for s in seqs)
    ids = np.full((len(seqs), P), pad, np.int32)
    mask = np.zeros((len(seqs), P), np.int32)
    for r, s in enumerate(seqs):
        ids[r, P - len(s):], mask[r, P - len(s):] = s, 1
    return ids, mask


def tokenizer_defaults(model, tokenizer, cfg: SamplingConfig) -> SamplingConfig:
    """Fill eos/pad ids left as None from the model config plus the tokenizer's eos/pad."""
    eos = cfg.eos_token_ids
    if eos is None:
        eos, _ = _resolve_ids(model.cfg, cfg)
        t_eos = getattr(tokenizer, "eos_token_id", None)
        if t_eos is not None and t_eos not in eos:
            eos = eos + (int(t_eos),)
    pad = cfg.pad_token_id
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = _resolve_ids(model.cfg, cfg.replace(eos_token_ids=eos))[1]
    return cfg.replace(eos_token_ids=eos, pad_token_id=int(pad))


def sample_texts(model, tokenizer, prompts: Sequence, key, cfg: SamplingConfig,
                 chat_template: bool = True, mesh=None) -> tuple[list[str], SampleOutput]:
    """Chat-template, left-pad, generate and decode. Returns (texts [B*n], SampleOutput)."""
    cfg = tokenizer_defaults(model, tokenizer, cfg)
    ids, mask = _pad_lists(prompt_token_ids(tokenizer, prompts, chat_template), cfg.pad_token_id)
    out = generate(model, ids, mask, key, cfg, mesh=mesh)
    return decode_responses(tokenizer, out), out
