#!/usr/bin/env bash
# The training and inference benchmark on one CUDA GPU, in at most 8 minutes, then (at most 3 more) the
# data-parallel step. Writes the same JSON as `make bench` (benchmarks/results/gpu/summary.json and summary.md
# unless OUT is set), and ddp.json beside them.
#
#   training   ours: `weibo_sentiment.training.train` over a full Weibo epoch (80,000 rows; the goal on one
#              H200 is <= 30 s), with what it picks on CUDA: bf16 autocast, fused AdamW, SDPA attention,
#              per-batch padding to a multiple of 8, pinned memory, evaluation batches of 256;
#              the original: its loop (pad to 128, batch 16, AdamW 5e-4, fp32) for 100 steps.
#   inference  the original predict vs `Predictor` on the GPU (batches of 256), plus the ONNX Runtime fp32
#              and int8 exports on the CPU cores beside it (skipped if onnxruntime is not installed).
#   ddp        `torchrun --nproc_per_node N -m weibo_sentiment train` (benchmarks/scale/ddp.py) for N = 1 and, with
#              two or more GPUs, 2: samples/s of 150 steps, batch 16 per process, uer-shaped random base
#              (NCCL; bf16). DDP=0 skips it.
#
# The machine needs a CUDA build of torch and the project's dependencies (no network is assumed: nothing
# is installed here), and the shared data: ../shared or WEIBO_SHARED.
#   PYTHON=python3 benchmarks/speed/gpu.sh            # default: .venv/bin/python if present, else python3
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package runs from the checkout, installed or not
export WEIBO_SHARED="${WEIBO_SHARED:-$PWD/../shared}"
export TOKENIZERS_PARALLELISM=false

"$PY" - <<'EOF'
import importlib, sys
missing = [m for m in ("torch", "transformers", "peft", "accelerate", "safetensors", "pandas", "sklearn", "tqdm")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"error: missing Python packages: {', '.join(missing)} (pip install -e . on this machine)")
import torch
if not torch.cuda.is_available():
    sys.exit(f"error: torch {torch.__version__} sees no CUDA device (a CPU-only build, or no GPU)")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
      f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no (fp16)'}", flush=True)
EOF

# 480 s is the whole budget; the script stops itself rather than run over.
timeout --signal=INT --kill-after=15 480 "$PY" benchmarks/speed/bench.py --gpu \
    --out "${OUT:-benchmarks/results/gpu}" "$@"

if [ "${DDP:-1}" != 0 ]; then
    timeout --signal=INT --kill-after=15 180 "$PY" benchmarks/scale/ddp.py --device cuda --nprocs 1 2 --preset uer \
        --steps 150 --timeout 80 --out "${OUT:-benchmarks/results/gpu}"
fi
