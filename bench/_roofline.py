"""How far a program is from this machine's limits (imported as a sibling module by the benches).

Two ceilings are MEASURED in the same run as the bench (a datasheet number means nothing on a
shared 2-core VM): the float32 matmul rate of a large jitted square matmul, and the copy
bandwidth of a large jitted elementwise pass. A program's FLOPs are counted the usual way for
transformers (Kaplan et al. / PaLM's MFU): 2 FLOPs per matmul weight per token for a forward,
plus the attention scores and mixing, 2·2·T_ctx·d_attn per token per layer; a training step
with full backward is 3× its forward, with frozen base weights (LoRA) 2× (activation gradients
only). Executed (padded) tokens are counted, so the fraction measures the kernels, not padding.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def matmul_peak_gflops(n: int = 1536, repeats: int = 5) -> float:
    """float32 [n, n] @ [n, n] as XLA runs it here, GFLOP/s (the compute ceiling)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest"))
    return 2 * n ** 3 / _median_time(lambda: f(a, a), repeats) / 1e9


def copy_bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Memory ceiling, GB/s: the faster of a large elementwise pass (bytes read + written) and a
    large reduction (bytes read), both as XLA runs them here."""
    x = jnp.ones((mb * 2 ** 20 // 4,), jnp.float32)
    scale, total = jax.jit(lambda v: v * 1.0001), jax.jit(jnp.sum)
    return max(2 * x.nbytes / _median_time(lambda: scale(x), repeats),
               x.nbytes / _median_time(lambda: total(x), repeats)) / 1e9


def matmul_params(params, skip=("embed", "tok_embed", "pos_embed", "type_embed")) -> int:
    """Weights that multiply activations: every parameter leaf with ≥ 2 dims, minus lookup
    tables (pass ``skip=()`` for a tied embedding that is also the LM head)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        if np.ndim(leaf) >= 2 and not any(s in name.split("/") for s in skip):
            total += int(np.size(leaf))
    return total


def forward_flops(n_matmul: int, tokens: int, layers: int, ctx: float, d_attn: int) -> float:
    """FLOPs of a forward over ``tokens`` tokens that each attend to ``ctx`` positions."""
    return 2.0 * n_matmul * tokens + 4.0 * layers * ctx * d_attn * tokens


def row(label: str, flops: float, seconds: float, peak_gflops: float,
        bytes_moved: float | None = None, bw_gbs: float | None = None) -> str:
    """One roofline line: achieved GFLOP/s, share of the matmul peak (and of the bandwidth)."""
    g = flops / seconds / 1e9
    out = f"{label:<50}{g:>9.1f} GFLOP/s {100 * g / peak_gflops:>5.0f}% of matmul peak"
    if bytes_moved is not None and bw_gbs:
        b = bytes_moved / seconds / 1e9
        out += f"  {b:>7.1f} GB/s {100 * b / bw_gbs:>4.0f}% of copy bandwidth"
    return out


def header(peak_gflops: float, bw_gbs: float | None = None) -> str:
    s = f"roofline (measured here, this run): float32 matmul {peak_gflops:.1f} GFLOP/s"
    return s + (f", copy bandwidth {bw_gbs:.1f} GB/s" if bw_gbs else "")
