#!/usr/bin/env bash
# Create a TPU VM pod slice (optional) and run humandiff.train on every worker.
#
#   TPU_NAME=scd ZONE=us-east5-a ACCELERATOR=v5p-32 launch/tpu_pod.sh create
#   TPU_NAME=scd ZONE=us-east5-a launch/tpu_pod.sh run --config configs/sd15_image.py:sd15=/mnt/sd15,... \
#       --workdir gs://bucket/scd_stage1
#
# `run` copies nothing: the repo must be at $REPO_DIR on every worker (e.g. `git clone` in `setup`), data and
# weights on a shared disk or bucket. jax.distributed.initialize() finds the pod topology by itself on TPU VMs.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-humandiff}
cmd=${1:?usage: $0 create|setup|run|delete [train args]}; shift || true
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --accelerator-type "${ACCELERATOR:?set ACCELERATOR}" \
      --version "${RUNTIME:-v2-alpha-tpuv5}" ;;
  setup)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
      "git clone ${REPO_URL:?set REPO_URL} $REPO_DIR || true; cd $REPO_DIR && pip install -e '.[tpu]'" ;;
  run)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
      "cd $REPO_DIR && python -m humandiff.train $*" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet ;;
  *) echo "unknown command $cmd (create|setup|run|delete)" >&2; exit 2 ;;
esac
