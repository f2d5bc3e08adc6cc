#!/usr/bin/env bash
# The accelerator numbers in one command, on a machine with a GPU or TPU that JAX sees:
#
#     bash benchmarks/accelerator.sh            # from the repository root, humandiff installed ([gpu] or [tpu])
#
# 1. bf16 train-step MFU of SD-1.5 at 512x512, batch 1, random weights (UNet, VAE, CLIP ViT-L/14), two-pass and
#    joint forms alternated in one process (benchmarks/train_step.py; FLOPs from XLA's cost analysis, peak from a
#    bf16 matmul measured in the same run). No EMA, so the two forms' states fit one 80 GB device side by side.
# 2. Attention at SD-1.5's levels (4096 tokens per image at 512x512: 8192 in the joint form; 9216 / 18432 at
#    768x768), forward and forward+backward: XLA, XLA blocked over keys, cuDNN (GPU) and splash fused / two-pass
#    (TPU) (benchmarks/attention.py, full shape set).
# 3. Sampler frames/s at SD-1.5 shapes, 64x64 latents (512x512 images), 8 frames, 20 DDIM steps with CFG, cached
#    two-stage against the joint recompute (benchmarks/sampler.py).
#
# JSON goes to benchmarks/results/{train_step_sd15,attention,sampler}_<backend>.json. On a machine without an
# accelerator it stops with one line and exit status 1. Each part's log is under $LOG_DIR (default /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
PYTHON="${PYTHON:-python}"
LOG_DIR="${LOG_DIR:-/tmp}"

backend="$("$PYTHON" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo "no-jax")"
if [[ "$backend" != "gpu" && "$backend" != "tpu" ]]; then
  echo "accelerator.sh: no GPU or TPU visible to JAX (backend: $backend); these benchmarks need one" >&2
  exit 1
fi
results="benchmarks/results"

echo "[1/3] SD-1.5 512x512 bf16 train step, two_pass and joint ($backend)"
"$PYTHON" benchmarks/train_step.py --config configs/sd15_image.py --random_encoders --compute_dtype bfloat16 \
  --steps 10 --forms two_pass,joint --set batch_size=1 --set "data.resolution=(512,512)" \
  --set data.source=synthetic --set data.synthetic.height=512 --set data.synthetic.width=512 \
  --set optim.ema_decay=0.0 --set data.prefetch=2 --set data.num_threads=1 \
  --out "$results/train_step_sd15_${backend}.json" > "$LOG_DIR/accelerator_train_step.log"

echo "[2/3] attention at 4096 / 8192 (and 9216 / 18432) tokens, fwd and fwd+bwd ($backend)"
"$PYTHON" benchmarks/attention.py --iters 10 --out "$results/attention_${backend}.json" \
  > "$LOG_DIR/accelerator_attention.log"

echo "[3/3] sampler frames/s, SD-1.5 shapes, 64x64 latents, 8 frames, 20 steps ($backend)"
"$PYTHON" benchmarks/sampler.py --sd15 --latent 64 --frames 8 --steps 20 --iters 3 \
  --out "$results/sampler_${backend}.json" 2> "$LOG_DIR/accelerator_sampler.log"

echo "done: $results/train_step_sd15_${backend}.json $results/attention_${backend}.json $results/sampler_${backend}.json"
