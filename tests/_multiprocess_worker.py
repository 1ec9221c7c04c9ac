"""One process of tests/test_multiprocess.py: `python _multiprocess_worker.py OUT PID NPROC PORT`
(NPROC=1: the single-process reference on all devices). A tiny Llama trains 3 steps on a
(data, fsdp) mesh over every process's CPU devices, each process feeding ITS share of the global
batch (DataLoader process slices + make_array_from_process_local_data), with CPU collectives
(gloo) between processes. Process 0 writes the losses and a weight checksum to OUT."""
import json
import os
import sys

out, pid, nproc, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
per_process = 4 // nproc
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={per_process}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")
if nproc > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=nproc,
                               process_id=pid)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from align_jax.data.loader import DataLoader  # noqa: E402
from align_jax.models.config import DecoderConfig  # noqa: E402
from align_jax.models.llama import Decoder  # noqa: E402
from align_jax.sharding import make_mesh, place_batch  # noqa: E402
from align_jax.train.optim import OptimConfig  # noqa: E402
from align_jax.train.state import create_train_state  # noqa: E402
from align_jax.train.step import lm_loss_fn, make_train_step  # noqa: E402

assert jax.device_count() == 4 and jax.process_count() == nproc
cfg = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, pad_token_id=0, eos_token_id=1)
model = Decoder(cfg, rngs=nnx.Rngs(0))
mesh = make_mesh("2,2,1")  # data 2 x fsdp 2: batch split 4 ways, weights 2 ways
opt = OptimConfig(lr=1e-2, schedule="constant").make(3)
state, bundle = create_train_state(model, opt, 0, mesh)
step = make_train_step(lm_loss_fn(), opt, bundle, mesh)
rng = np.random.default_rng(0)
examples = [rng.integers(2, 64, 12).astype(np.int32) for _ in range(8)]  # one batch: memorised


def collate(rows):
    ids = np.stack(rows)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}


loader = DataLoader(examples, 8, seed=0, collate_fn=collate)
losses = []
for _ in range(3):
    state, m = step(state, place_batch(next(loader), mesh))
    losses.append(float(m["loss"][0]) / float(m["loss"][1]))
checksum = float(sum(np.abs(np.asarray(jax.experimental.multihost_utils.process_allgather(x,
                 tiled=True))).sum() for x in jax.tree.leaves(state.params)))
if pid == 0:
    with open(out, "w") as f:
        json.dump({"losses": losses, "checksum": checksum, "local_rows": len(next(loader)["input_ids"])}, f)
if nproc > 1:
    jax.distributed.shutdown()
