"""The Colab notebook runs end to end on CPU inside the checkout (as CI and Jupyter users open it):
no clone, no pip install (a fake pip on PATH would record one), tiny settings through its
environment-variable parameters, a run directory RELATIVE to the checkout, and it displays the
curves, the before/after table and the report."""
import os
import shutil
import uuid

import nbformat
from nbclient import NotebookClient

from _experiment_files import REPO, tiny_args


def test_notebook_executes_in_the_checkout(tmp_path, monkeypatch, run_env):
    run_dir = f"runs/_ci_notebook_{uuid.uuid4().hex[:8]}"
    bin_dir, marker = tmp_path / "bin", tmp_path / "pip-was-called"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (bin_dir / "pip").chmod(0o755)
    env = dict(run_env, ALIGN_JAX_NOTEBOOK_RUN_DIR=run_dir,
               ALIGN_JAX_NOTEBOOK_ARGS=" ".join(tiny_args(REPO / "experiments/refalign_safety.py", 1)))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    for k in set(os.environ) - set(env):  # the kernel inherits this process's environment
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    nb = nbformat.read(REPO / "align_jax_colab.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}})
    try:
        client.execute()
        assert (REPO / run_dir / "checkpoints/1/commit_success.txt").is_file()
    finally:
        shutil.rmtree(REPO / run_dir, ignore_errors=True)
    assert not marker.exists(), "the notebook ran pip inside a checkout"

    def text(cell):
        out = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        return out.replace("\r\n", "\n")  # `!` commands run under a pty

    code = [c for c in nb.cells if c.cell_type == "code"]
    run_cell = next(c for c in code if "!python experiments/refalign_safety.py" in c.source)
    assert f"[align_jax] run directory: {REPO / run_dir}\n" in text(run_cell)  # resolved, absolute
    shown = [o for c in code for o in c.outputs if o.output_type == "display_data"]
    assert sum("image/png" in o.data for o in shown) == 1
    tables = [o.data["text/markdown"] for o in shown if "text/markdown" in o.data]
    assert tables[0].startswith("# RefAlign safety: before / after")
    assert tables[1].startswith(f"# {run_dir.split('/')[-1]}\n")  # the report of that run
