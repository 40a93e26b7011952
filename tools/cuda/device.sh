#!/usr/bin/env bash
# Runs on the lent GPU machine, from the repository root, with .gpu/ from
# tools/cuda/bundle.sh carried along:
#
#   bash tools/cuda/device.sh        (results and logs in $OUT)
#
# 1. gpu-check: CPU vs CUDA (logits, loss, gradients, tensors after SGD steps)
# 2. gpu-check: ResNet-50 and ResNet-18 training steps at 224x224, synthetic input
# 3. gpu-check: ResNet-50 trained from the packed photos, all cores loading
# 4. PyTorch/torchvision, same networks and batches: fp32, TF32, bf16 autocast
# then one table (tools/cuda/table.py). Each part has its own time limit.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
batches=${BATCHES:-32,64,128}
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start )) s] $*"; }
{
  stamp "machine, $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
  echo "cpu cores: $(nproc)"
  python3 -c 'import torch, torchvision; print("torch", torch.__version__, "CUDA", torch.version.cuda, "torchvision", torchvision.__version__)'
} 2>&1 | tee "$out/machine.txt"
# cuBLAS 13 and NVRTC come with PyTorch's CUDA wheels.
sp=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$(find "$sp/nvidia" -maxdepth 3 -type d -name lib | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bin=/tmp/gpu-check
gunzip -c "${BUNDLE:-.gpu}/gpu-check.gz" > "$bin" && chmod +x "$bin"
if ldd "$bin" | grep 'not found'; then echo "missing libraries (above)"; fi
gc() { local limit=$1; shift; stamp "gpu-check $*"; timeout "$limit" "$bin" "$@" 2>&1 | tee -a "$out/ours.log"; echo "exit ${PIPESTATUS[0]}"; }
gc 90 --compare resnet18,resnet50 --time "" --json "$out/compare.jsonl"
gc 100 --compare "" --time resnet50 --batch-sizes "$batches" --max-seconds 6 --ops-batch 64 --json "$out/time50.jsonl"
gc 50 --compare "" --time resnet18 --batch-sizes "$batches" --max-seconds 4 --json "$out/time18.jsonl"
gc 60 --compare "" --time "" --data "${BUNDLE:-.gpu}/photos/train" --workers "$(nproc)" --json "$out/loader.jsonl"
stamp "pytorch"
timeout 120 python3 tools/cuda/pytorch_bench.py --models resnet50,resnet18 --batch-sizes "$batches" --max-seconds 3 \
  --json "$out/torch.jsonl" 2>&1 | tee "$out/torch.log"
stamp "table"
python3 tools/cuda/table.py "$out"/compare.jsonl "$out"/time50.jsonl "$out"/time18.jsonl "$out"/loader.jsonl \
  -- "$out"/torch.jsonl | tee "$out/table.md"
stamp "done"
