"""What you need to rent: every paper-scale preset compiled for its suggested TPU slice.

    python bench/aot_presets.py [--presets refalign_safety,dpo,...]   # needs libtpu, no TPU

Runs ``align_jax.aot.run`` per preset (abstract weights, the experiment's programs compiled by
the TPU compiler for compile-only devices) and prints one markdown table: per program, peak HBM
per chip against the chip's capacity, TFLOPs per call, compile seconds; a preset that does not
fit shows the compiler's reason. Paste the table into bench/RESULTS.md. Compiling 7-8B programs
takes minutes each on a CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
    from align_jax.aot import GIB, hbm_gib, run
    from align_jax.aot_presets import PRESETS

    # one preset per method at its paper's scale (refalign_general and dpo share the shapes
    # of refalign_safety and ap_simpo_llama3_8b; --presets adds them)
    big = ["refalign_safety", "rpo_mistral7b", "ap_simpo_llama3_8b", "alarm", "ld_align"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=",".join(big))
    args = ap.parse_args()
    import importlib.metadata as md

    import jax

    print(f"# jax {jax.__version__}, libtpu {md.version('libtpu')}, load average "
          f"{os.getloadavg()[0]:.2f} at start (compile seconds are this CPU's)")
    lines = ["| preset | slice | program | peak GiB / chip | of HBM | TFLOP / call | compile s |",
             "|---|---|---|---|---|---|---|"]
    for name in args.presets.split(","):
        p = PRESETS[name]
        hbm = hbm_gib(p.topology) * GIB
        try:
            progs = run(p, p.topology, p.mesh)
        except SystemExit as e:  # does not fit: the reason, in the table
            lines.append(f"| {name} | {p.topology} | **does not fit**: {e} | | | | |")
            continue
        for prog in progs:
            lines.append(f"| {name} | {p.topology} | {prog.name} | {prog.peak / GIB:.1f} | "
                         f"{100 * prog.peak / hbm:.0f}% | {prog.flops / 1e12:.1f} | "
                         f"{prog.compile_s:.0f} |")
    print("\n".join(lines))
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
