"""Similarity rewards S(candidate, reference) behind one interface (RefAlign, docs/methods.md).

    scorer = make_similarity("bertscore_f1")          # bundled all-MiniLM-L6-v2, last layer
    rewards = scorer(candidates, references)            # np.float32 [B]

Names: bertscore (component="f1"|"p"|"r"), bertscore_f1/_p/_r, embedding_cosine, meteor,
rouge_l, bleu. Every scorer first applies `strip_for_scoring` (chat markers / EOS removed).

BERTScore matches the `bert-score` package (bert_score/utils.py) on the same weights:
  * tokens: `tokenizer.encode(text.strip())` with special tokens, truncated to the model max;
    byte-level BPE tokenizers (RoBERTa/GPT-2) get a leading space (bert-score's
    add_prefix_space=True);
  * embeddings: hidden state of layer `num_layers` (0 = embeddings output), L2-normalised;
  * greedy matching: P_i = max_j cos(c_i, r_j), R_j = max_i cos(c_i, r_j) over ALL real
    tokens, CLS/SEP included as match targets (bert-score masks only padding); the special
    tokens are excluded through their weight 0;
  * weights: 1 per token (idf=False) or idf(t) = log((M+1)/(df(t)+1)) over the M references
    (unseen tokens log(M+1)); CLS/SEP (<s>/</s>) weight 0 in both cases;
    P = Σ w_i P_i / Σ w_i over candidate tokens, R likewise over reference tokens,
    F = 2PR/(P+R);
  * a sentence that tokenises to ≤ 2 tokens (empty) gets P = R = F = 0, as in bert-score;
  * optional baseline rescaling x' = (x − b)/(1 − b) per component with a user (P, R, F)
    tuple or a bert-score baseline csv (row = num_layers).
Padding quirk: bert-score masks padding by MULTIPLYING similarities by 0, so a token whose
real similarities are all negative scores 0 whenever the other side is padded in its batch
(i.e. is not the longest there) and its negative max otherwise — batch-dependent. We default to
`clamp_negative=True` (per-token best match floored at 0): equal to bert-score except for the
longest sentence of a bert-score batch, and independent of batching. clamp_negative=False
takes the plain max over real tokens. (This matters: all-MiniLM-L6-v2 does produce tokens with
only negative cosines, shifting R/P by ~1e-3.)

Host work: tokenise, build weights, pad to length buckets and power-of-two batches. Device work:
two jitted programs — the encoder up to the chosen layer, run once per DISTINCT text (sorted by
length, so little padding), and the matching (similarity + masked max + weighted sums) over the
pairs. RefAlign compares K samples with one reference and its references never change, so a
reference is encoded once per call and its embeddings stay in a bounded LRU cache
(``cache_mb``) across calls; cached and fresh scores are the same numbers. Candidate and
reference rows of a pair share a batch index, so sharding the batch axis never splits a pair.
"""
from __future__ import annotations

import csv
import math
import re
from collections import Counter, OrderedDict, defaultdict
from typing import Any, Callable, Iterable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from align_jax import sharding as shd
from align_jax.errors import ConfigError
from align_jax.data.tokenize import length_bucket, pow2_bucket, round_up
from align_jax.models.encoder import Encoder, load_encoder
from align_jax.rewards import text_metrics
from align_jax.rewards.registry import list_scorers, make_scorer, register_scorer


class Scorer(Protocol):
    def __call__(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray: ...


# ------------------------------------------------------------------------- text cleaning

# Role headers go first (the role name is template text, not the answer).
_ROLE_HEADERS = re.compile(
    r"<\|im_start\|>[^\n<]*\n?"                                   # ChatML / SmolLM2 / Qwen
    r"|<\|start_header_id\|>.*?<\|end_header_id\|>\n*"            # Llama 3
    r"|\[/?INST\]")                                               # Llama 2 / Mistral
_PIPE_MARKERS = re.compile(r"<\|[A-Za-z0-9_]+\|>")                 # <|im_end|>, <|eot_id|> …
DEFAULT_STOP = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end|>")


def strip_for_scoring(text: str, special_tokens: Iterable[str] = (), *,
                      stop_at: Iterable[str] = DEFAULT_STOP) -> str:
    """Remove what the policy's template added so the scorer sees only the answer text:
    chat role headers, everything from the first end-of-turn/EOS marker in `stop_at` on
    (text after EOS is not part of the answer), every string in `special_tokens` (pass
    `tokenizer.all_special_tokens`, e.g. "</s>"), and any leftover `<|…|>` marker."""
    text = _ROLE_HEADERS.sub("", text)
    cut = [i for i in (text.find(s) for s in stop_at if s) if i >= 0]
    if cut:
        text = text[:min(cut)]
    for tok in sorted((t for t in special_tokens if t), key=len, reverse=True):
        text = text.replace(tok, "")
    return _PIPE_MARKERS.sub("", text).strip()


# ------------------------------------------------------------------ pure array functions

def _l2_normalise(x):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-30))


def _safe_div(a, b):
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)


def greedy_match_prf(cand_btd, cand_mask_bt, cand_w_bt, ref_bsd, ref_mask_bs, ref_w_bs,
                     clamp_negative: bool = True, precision: Any = "highest"):
    """BERTScore (P, R, F) [B] from token embeddings, masks (real tokens) and weights
    (0 for special tokens and padding). Pure and jittable. clamp_negative: per-token best
    match floored at 0 (bert-score's behaviour in padded batches, see module docstring).
    precision="highest": cosines sit near 1, where TF32/bf16 matmul passes cost ~1e-3."""
    c = _l2_normalise(cand_btd.astype(jnp.float32))
    r = _l2_normalise(ref_bsd.astype(jnp.float32))
    sim_bts = jnp.einsum("btd,bsd->bts", c, r, precision=precision)
    pair = cand_mask_bt[:, :, None] & ref_mask_bs[:, None, :]
    sim_bts = jnp.where(pair, sim_bts, -2.0)  # below any cosine: never the max
    floor = 0.0 if clamp_negative else -2.0
    word_p = jnp.where(cand_mask_bt, jnp.maximum(sim_bts.max(axis=2), floor), 0.0)
    word_r = jnp.where(ref_mask_bs, jnp.maximum(sim_bts.max(axis=1), floor), 0.0)
    p = _safe_div(jnp.sum(word_p * cand_w_bt, -1), jnp.sum(cand_w_bt, -1))
    r_ = _safe_div(jnp.sum(word_r * ref_w_bs, -1), jnp.sum(ref_w_bs, -1))
    f = _safe_div(2 * p * r_, p + r_)
    # bert-score zeroes pairs where either side is only [CLS][SEP] (an empty sentence).
    empty = (cand_mask_bt.sum(-1) <= 2) | (ref_mask_bs.sum(-1) <= 2)
    zero = jnp.zeros_like(p)
    return jnp.where(empty, zero, p), jnp.where(empty, zero, r_), jnp.where(empty, zero, f)


def mean_pool_cosine(cand_btd, cand_mask_bt, ref_bsd, ref_mask_bs):
    """Cosine of masked-mean-pooled, L2-normalised sentence embeddings (sentence-transformers
    all-MiniLM-L6-v2 style pooling over all real tokens, CLS/SEP included). Pure."""
    def pool(h, m):
        m = m.astype(jnp.float32)[..., None]
        return _l2_normalise(jnp.sum(h.astype(jnp.float32) * m, 1) / jnp.maximum(m.sum(1), 1.0))
    return jnp.sum(pool(cand_btd, cand_mask_bt) * pool(ref_bsd, ref_mask_bs), -1)


# ----------------------------------------------------------------- encoder-based scorers

# Module-level jits keyed on the static (graphdef, num_layers): scorers sharing one encoder
# share compiled code. Encoding and matching are separate programs so that each distinct text
# is encoded once per call (RefAlign scores K samples against ONE reference) and reference
# embeddings can be kept across calls (the references never change during training).
@jax.jit(static_argnums=(0, 1))
def _encode_kernel(graphdef, num_layers, state, ids_bt, mask_bt):
    """Hidden states of layer ``num_layers``, [B, T, D] float32."""
    enc = nnx.merge(graphdef, state)
    h = enc(ids_bt, mask_bt, num_layers=num_layers, all_layers=False)
    return h.astype(jnp.float32)


@jax.jit(static_argnums=(0, 1))
def _match_kernel(kind, clamp_negative, c_btd, c_mask, c_w, r_bsd, r_mask, r_w):
    if kind == "bertscore":
        return jnp.stack(greedy_match_prf(c_btd, c_mask, c_w, r_bsd, r_mask, r_w,
                                          clamp_negative=clamp_negative))
    return mean_pool_cosine(c_btd, c_mask, r_bsd, r_mask)[None]


# On XLA:CPU an encoder batch runs fastest per token while its activations (MLP [rows·T, F],
# attention scores [rows, H, T, T]) stay within about half the last-level cache: MiniLM at
# T = 96 cost 160 µs/token in 64-row batches, 79 µs in 16-row ones (AMD EPYC, 32 MB L3), and
# the RefAlign-shaped BERTScore bench ran 1.7× faster (bench/RESULTS.md). A denser length
# ladder pads less (bert-score pads to each batch's longest text); its steps stay >= 8 tokens
# (few compiled shapes for short texts).
CPU_BATCH_MB = 8.0
CPU_STEPS_PER_OCTAVE = 16


class EmbeddingCache:
    """Bounded LRU of per-text token embeddings ([len, D] float32 host arrays), keyed by the
    token ids (one cache belongs to one encoder and layer: its scorer). ``max_mb=0`` = off."""

    def __init__(self, max_mb: float = 256.0):
        self.max_bytes = int(max_mb * 2 ** 20)
        self._d: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key: tuple):
        h = self._d.get(key)
        if h is None:
            self.misses += 1
        else:
            self.hits += 1
            self._d.move_to_end(key)
        return h

    def put(self, key: tuple, h: np.ndarray) -> None:
        if self.max_bytes <= 0 or h.nbytes > self.max_bytes or key in self._d:
            return
        self._d[key] = h
        self.bytes += h.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._d.popitem(last=False)
            self.bytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._d)


class _EncoderScorer:
    """Shared host side: tokenise, encode each distinct text once (length-sorted batches, power-
    of-two rows, length buckets; references through a bounded cache), then one jitted matching
    program per (batch, length, length) bucket over the pairs."""
    _kernel_name = ""  # "bertscore" | "cosine", set by subclasses
    _n_out = 0
    clamp_negative = False  # static kernel flag (BERTScore only)

    def __init__(self, model: Any = None, *, encoder: tuple | None = None,
                 num_layers: int | None = None, batch_size: int = 64,
                 length_buckets: Sequence[int] | None = None,
                 max_length: int | None = None, compute_dtype: Any = jnp.float32,
                 precision: Any = "highest", mesh: jax.sharding.Mesh | None = None,
                 batch_axes: Sequence[str] = ("data", "fsdp"),
                 special_tokens: Iterable[str] = (), strip: bool = True,
                 cache_mb: float = 256.0, batch_mb: float | None = None,
                 steps_per_octave: int | None = None):
        # precision="highest": rewards are differences of scores ~1e-2 apart, so TPU/GPU
        # default bf16/TF32 matmul passes would be visible; pass None to use jax's default.
        # compute_dtype/precision only apply when the encoder is loaded here (encoder=None).
        # mesh: single-controller placement (jax.device_put of the whole host batch).
        # cache_mb: reference embeddings kept across calls (0 = encode every call).
        if encoder is None:
            encoder = load_encoder(model, compute_dtype=compute_dtype, precision=precision)
        self.encoder, self.tokenizer = encoder
        cfg = self.encoder.config
        self.num_layers = cfg.num_layers if num_layers is None else int(num_layers)
        if not 0 <= self.num_layers <= cfg.num_layers:
            raise ConfigError(f"bertscore_layers={self.num_layers}: outside [0, {cfg.num_layers}] "
                              "(the encoder's layers)")
        tok_max = getattr(self.tokenizer, "model_max_length", None) or cfg.max_length
        self.max_length = min(int(max_length or tok_max), int(tok_max), cfg.max_length)
        # length_buckets: the encoder's padded lengths; None = data.tokenize.length_bucket's
        # ladder (<= 25% padding). The matching kernel pads to powers of two (it is < 2% of the
        # FLOPs, and its shapes pair up a candidate and a reference bucket: few compiles).
        self.length_buckets = (None if length_buckets is None else
                               sorted(b for b in length_buckets if b < self.max_length)
                               + [self.max_length])
        self.batch_size = int(batch_size)
        # batch_mb: cap on one encoder batch's largest activations (MLP [rows, T, F] plus
        # attention scores [rows, H, T, T], float32), in MiB; None = CPU_BATCH_MB on a CPU
        # backend, no cap elsewhere (0 = none). steps_per_octave: the length ladder's density
        # (data.tokenize.length_bucket); None = CPU_STEPS_PER_OCTAVE on CPU, 4 elsewhere. Both
        # only reshape the batches: the scores agree to float32 rounding (tested).
        on_cpu = jax.default_backend() == "cpu"
        self.batch_mb = float(batch_mb if batch_mb is not None else CPU_BATCH_MB if on_cpu
                              else 0)
        self.steps_per_octave = (int(steps_per_octave) if steps_per_octave is not None
                                 else CPU_STEPS_PER_OCTAVE if on_cpu else 4)
        self.special_tokens = tuple(special_tokens)
        self.strip = strip
        self.mesh = mesh
        self.cache = EmbeddingCache(cache_mb)
        self.encoded_texts = 0  # texts run through the encoder (a cache hit or duplicate: not)
        self.encoded_tokens = self.encoded_tokens_sq = 0  # Σ B·T and Σ B·T² executed (benches)
        self._shards = 1
        if mesh is not None:
            axes = tuple(a for a in batch_axes if a in mesh.shape)
            self._shards = math.prod(mesh.shape[a] for a in axes)
            # Auto axis types: the encoder is written for GSPMD propagation, and an Explicit
            # mesh (jax.make_mesh's default) would demand out_sharding on every gather.
            auto_types = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
            auto = jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto_types)
            self._sharding = NamedSharding(auto, PartitionSpec(axes or None))
        from transformers import GPT2Tokenizer, RobertaTokenizer  # bert-score's test

        self._prefix_space = (isinstance(self.tokenizer, (GPT2Tokenizer, RobertaTokenizer))
                              and not getattr(self.tokenizer, "add_prefix_space", False))
        self._specials = {i for i in (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id)
                          if i is not None}
        self._graphdef, self._state = nnx.split(self.encoder)
        if mesh is not None:  # replicated on the mesh (multi-host: a jit's inputs must be global)
            self._state = shd.put(self._state, NamedSharding(auto, PartitionSpec()))

    @property
    def encoder_pair(self):
        """(encoder, tokenizer): lets other scorers share this loaded encoder."""
        return self.encoder, self.tokenizer

    # -- host side
    def _clean(self, texts: Sequence[str]) -> list[str]:
        if self.strip:
            texts = [strip_for_scoring(t, self.special_tokens) for t in texts]
        return [t.strip() for t in texts]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        texts = [(" " + t) if (self._prefix_space and t) else t for t in self._clean(texts)]
        return self.tokenizer(texts, add_special_tokens=True, truncation=True,
                              max_length=self.max_length)["input_ids"]

    def _weights(self, ids: list[int]) -> np.ndarray:
        return np.array([0.0 if t in self._specials else 1.0 for t in ids], np.float32)

    def _run(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """→ kernel outputs, [K, B] float32."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates vs {len(references)} references")
        if not candidates and not self._multihost:
            return np.zeros((self._n_out, 0), np.float32)
        c_ids, r_ids = self.tokenize(candidates), self.tokenize(references)
        c_w, r_w = self.make_weights(c_ids, r_ids)
        c_h, r_h = self.embed(c_ids), self.embed(r_ids, self.cache)
        outs = [np.zeros((self._n_out, 0), np.float32)]
        for s in range(0, self._agreed(-(-len(c_ids) // self.batch_size)) * self.batch_size,
                       self.batch_size):
            sl = slice(s, s + self.batch_size)
            outs.append(self._match(c_h[sl], r_h[sl], c_w[sl], r_w[sl]))
        return np.concatenate(outs, axis=1)

    @property
    def _multihost(self) -> bool:
        return shd.is_multihost(self.mesh)

    def _agreed(self, *values: int):
        """Shapes / trip counts every process uses (:func:`align_jax.sharding.agree`)."""
        out = shd.agree(self.mesh, *values)
        return out[0] if len(out) == 1 else out

    def make_weights(self, c_ids, r_ids):
        return [self._weights(i) for i in c_ids], [self._weights(i) for i in r_ids]

    def _rows(self, n: int) -> int:
        """Padded batch rows (of this process): a power of two (few compiled shapes) that its
        share of the mesh's batch axes divides."""
        local = max(1, self._shards // jax.process_count())
        return round_up(pow2_bucket(max(n, local), 1), local)

    def _bucket(self, longest: int) -> int:
        if self.length_buckets is None:
            return min(length_bucket(longest, steps_per_octave=self.steps_per_octave,
                                     min_step=8), self.max_length)
        return next(b for b in self.length_buckets if b >= longest)

    def _match_bucket(self, longest: int) -> int:
        return min(pow2_bucket(longest), self.max_length)

    def _place(self, *arrays):
        if self.mesh is None:
            return arrays
        if self._multihost:  # this process's rows of one global batch
            return tuple(jax.make_array_from_process_local_data(self._sharding, a)
                         for a in arrays)
        return tuple(jax.device_put(a, self._sharding) for a in arrays)

    def embed(self, id_lists: Sequence[list[int]],
              cache: EmbeddingCache | None = None) -> list[np.ndarray]:
        """Token embeddings [len_i, D] of each id list: every distinct one encoded once, in
        batches of similar length; ``cache`` (references) is read first and filled after."""
        keys = [tuple(x) for x in id_lists]
        found = {k: h for k in dict.fromkeys(keys)
                 if (h := (cache.get(k) if cache is not None else None)) is not None}
        todo = sorted((k for k in dict.fromkeys(keys) if k not in found), key=len)
        pad_id = self.tokenizer.pad_token_id or 0
        for chunk in self._chunks(todo):
            T, B = self._agreed(self._bucket(len(chunk[-1]) if chunk else 1),
                                self._rows(len(chunk)))
            ids = np.full((B, T), pad_id, np.int32)
            mask = np.zeros((B, T), bool)
            for i, k in enumerate(chunk):
                ids[i, :len(k)], mask[i, :len(k)] = k, True
            h = shd.local_rows(_encode_kernel(
                self._graphdef, self.num_layers, self._state, *self._place(ids, mask)))
            self.encoded_texts += len(chunk)
            self.encoded_tokens += B * T
            self.encoded_tokens_sq += B * T * T
            for i, k in enumerate(chunk):
                found[k] = h[i, :len(k)].copy()
                if cache is not None:
                    cache.put(k, found[k])
        return [found[k] for k in keys]

    def _chunks(self, todo: list) -> list[list]:
        """Consecutive batches of the length-sorted texts: <= batch_size rows and, under a
        memory cap, activations <= batch_mb (rows a power of two). Multi-host: fixed
        batch_size chunks, the same trip count on every process (past its texts: empty)."""
        if self._multihost or not self.batch_mb:
            n = self._agreed(-(-len(todo) // self.batch_size))
            return [todo[s:s + self.batch_size] for s in range(0, n * self.batch_size,
                                                                   self.batch_size)]
        c = self.encoder.config
        row_bytes = lambda T: 4 * (T * c.intermediate_size + c.num_heads * T * T)
        out, s = [], 0
        while s < len(todo):
            rows = self.batch_size
            while True:  # the longest text of the candidate chunk sets its padded length
                T = self._bucket(len(todo[min(s + rows, len(todo)) - 1]))
                if rows == 1 or rows * row_bytes(T) <= self.batch_mb * 2**20:
                    break
                rows = pow2_bucket(rows // 2, 1)
            out.append(todo[s:s + rows])
            s += rows
        return out

    def _match(self, c_h, r_h, c_w, r_w):
        n, D = len(c_h), self.encoder.config.hidden_size
        B = self._agreed(self._rows(n))
        sides = []
        for hs, ws in ((c_h, c_w), (r_h, r_w)):
            T = self._agreed(self._match_bucket(max((len(h) for h in hs), default=1)))
            emb, mask, w = (np.zeros((B, T, D), np.float32), np.zeros((B, T), bool),
                            np.zeros((B, T), np.float32))
            for i, (h, wt) in enumerate(zip(hs, ws)):
                emb[i, :len(h)], mask[i, :len(h)], w[i, :len(h)] = h, True, wt
            sides += [emb, mask, w]
        out = _match_kernel(self._kernel_name, self.clamp_negative, *self._place(*sides))
        return shd.local_rows(out, axis=1).astype(np.float32)[:, :n]


class BERTScorer(_EncoderScorer):
    """BERTScore with the `bert-score` package's semantics (module docstring).

    clamp_negative: see the module docstring (default True, like bert-score in padded batches).
    idf: False | True (idf from the references of each call, as bert-score.score does) |
    a dict {token_id: weight}. idf_references: fit idf once on this corpus instead of per
    call (more stable when a batch holds few distinct references). baseline: (P, R, F) or a
    bert-score baseline csv path. component: which of p/r/f1 `__call__` returns."""
    _kernel_name, _n_out = "bertscore", 3

    def __init__(self, model: Any = None, *, idf: bool | dict = False,
                 idf_references: Sequence[str] | None = None,
                 baseline: tuple[float, float, float] | str | None = None,
                 component: str = "f1", clamp_negative: bool = True, **kw):
        super().__init__(model, **kw)
        self.clamp_negative = bool(clamp_negative)
        comp = {"p": 0, "precision": 0, "r": 1, "recall": 1, "f": 2, "f1": 2}
        if component not in comp:
            raise ValueError(f"component={component!r}; expected one of {sorted(comp)}")
        self.component = comp[component]
        self.idf = idf
        self._fixed_idf = idf if isinstance(idf, dict) else None
        if idf_references is not None:
            self._fixed_idf = self.idf_dict(self.tokenize(idf_references))
        self.baseline = None if baseline is None else self._read_baseline(baseline)

    @staticmethod
    def idf_dict(ref_ids: list[list[int]]) -> defaultdict:
        """bert-score's get_idf_dict: idf(t) = log((M+1)/(df(t)+1)) with df counted over
        each reference's token SET; tokens never seen get log(M+1)."""
        df = Counter(t for ids in ref_ids for t in set(ids))
        m = len(ref_ids)
        table = defaultdict(lambda: math.log(m + 1))
        table.update({t: math.log((m + 1) / (c + 1)) for t, c in df.items()})
        return table

    def make_weights(self, c_ids, r_ids):
        if not self.idf and self._fixed_idf is None:
            return super().make_weights(c_ids, r_ids)
        table = self._fixed_idf if self._fixed_idf is not None else self.idf_dict(r_ids)
        # A user dict without a default gives unknown tokens weight 0.
        default = table.default_factory() if isinstance(table, defaultdict) else 0.0

        def weigh(ids):
            return np.array([0.0 if t in self._specials else table.get(t, default)
                             for t in ids], np.float32)
        return [weigh(i) for i in c_ids], [weigh(i) for i in r_ids]

    def _read_baseline(self, b) -> np.ndarray:
        if isinstance(b, str):
            with open(b, newline="") as fh:
                rows = list(csv.DictReader(fh))
            if not 0 <= self.num_layers < len(rows):
                raise ValueError(f"baseline file {b} has no row for layer {self.num_layers}")
            row = rows[self.num_layers]  # bert-score indexes rows by num_layers
            b = (float(row["P"]), float(row["R"]), float(row["F"]))
        b = np.asarray(b, np.float32).reshape(3)
        return b

    def prf(self, candidates: Sequence[str], references: Sequence[str]):
        """→ (P, R, F) np.float32 [B] each, rescaled if a baseline was given."""
        out = self._run(candidates, references)
        if self.baseline is not None:
            out = rescale_with_baseline(out, self.baseline[:, None])
        return out[0], out[1], out[2]

    def __call__(self, candidates, references) -> np.ndarray:
        return self.prf(candidates, references)[self.component]


def rescale_with_baseline(x, b):
    """bert-score's rescaling: (x − b) / (1 − b)."""
    return ((x - b) / (1 - b)).astype(np.float32)


class EmbeddingCosineScorer(_EncoderScorer):
    """Cosine of mean-pooled, L2-normalised sentence embeddings (last layer by default)."""
    _kernel_name, _n_out = "cosine", 1

    def __call__(self, candidates, references) -> np.ndarray:
        return self._run(candidates, references)[0]


class TextMetricScorer:
    """Vectorises a host metric fn(candidate, reference) -> float."""

    def __init__(self, fn: Callable[[str, str], float], special_tokens: Iterable[str] = (),
                 strip: bool = True, **fn_kwargs):
        self.fn, self.fn_kwargs = fn, fn_kwargs
        self.special_tokens, self.strip = tuple(special_tokens), strip

    def __call__(self, candidates, references) -> np.ndarray:
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates vs {len(references)} references")
        def clean(t):
            return strip_for_scoring(t, self.special_tokens) if self.strip else t

        return np.array([self.fn(clean(c), clean(r), **self.fn_kwargs)
                         for c, r in zip(candidates, references)], np.float32)


_TEXT = {"meteor": text_metrics.meteor, "rouge_l": text_metrics.rouge_l,
         "bleu": text_metrics.sentence_bleu}


def _register_builtins() -> None:
    """Every built-in similarity in the scorer registry (``align_jax.rewards.registry``)."""
    for component in ("f1", "p", "r"):
        register_scorer(f"bertscore_{component}", "similarity", needs_encoder=True)(
            lambda c=component, **cfg: BERTScorer(component=c, **cfg))
    register_scorer("bertscore", "similarity", needs_encoder=True)(BERTScorer)
    register_scorer("embedding_cosine", "similarity", needs_encoder=True)(EmbeddingCosineScorer)
    for name, fn in _TEXT.items():
        register_scorer(name, "similarity")(lambda f=fn, **cfg: TextMetricScorer(f, **cfg))


_register_builtins()
NAMES = tuple(list_scorers("similarity"))


def make_similarity(name: str, **cfg) -> Scorer:
    """Scorer by (registered) name. Encoder scorers take model= (dir / cached hub id / None =
    bundled MiniLM) or encoder=(Encoder, tokenizer) to share one, num_layers=, batch_size=, mesh=,
    compute_dtype=, precision=; BERTScore also idf=, idf_references=, baseline=, component=.
    All take special_tokens= and strip= (see strip_for_scoring)."""
    return make_scorer(name, "similarity", **cfg)
