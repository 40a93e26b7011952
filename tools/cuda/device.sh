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
# BATCHES (default 32,64,128): batch sizes; BATCHES18 (64): PyTorch ResNet-18's;
# PARTS: a subset of "compare time50 time18 loader torch50 torch18".
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
# Each part writes JSON lines to /tmp, appended to $out/ours.jsonl or
# $out/torch.jsonl (the device tool returns at most 8 files).
gc() {
  local limit=$1; shift
  stamp "gpu-check $*"
  timeout "$limit" "$bin" "$@" --json /tmp/part.jsonl 2>&1 | tee -a "$out/ours.log"
  echo "exit ${PIPESTATUS[0]}"
  cat /tmp/part.jsonl >> "$out/ours.jsonl" 2>/dev/null; rm -f /tmp/part.jsonl
}
pt() {
  local limit=$1; shift
  stamp "pytorch $*"
  timeout "$limit" python3 tools/cuda/pytorch_bench.py "$@" --json /tmp/part.jsonl 2>&1 | tee -a "$out/torch.log"
  cat /tmp/part.jsonl >> "$out/torch.jsonl" 2>/dev/null; rm -f /tmp/part.jsonl
}
rm -f "$out/ours.jsonl" "$out/torch.jsonl"
parts=" ${PARTS:-compare time50 time18 loader torch50 torch18} "
has() { [[ $parts == *" $1 "* ]]; }
has compare && gc 120 --compare resnet18,resnet50 --compare-last-bn-scale 0.1 --time ""
has time50 && gc 100 --compare "" --time resnet50 --batch-sizes "$batches" --max-seconds 6 --ops-batch 64
has time18 && gc 50 --compare "" --time resnet18 --batch-sizes "$batches" --max-seconds 4
has loader && gc 60 --compare "" --time "" --data "${BUNDLE:-.gpu}/photos/train" --workers "$(nproc)"
has torch50 && pt 200 --models resnet50 --batch-sizes "$batches" --max-seconds 2
has torch18 && pt 70 --models resnet18 --batch-sizes "${BATCHES18:-64}" --max-seconds 2
stamp "table"
python3 tools/cuda/table.py "$out/ours.jsonl" -- "$out/torch.jsonl" | tee "$out/table.md"
stamp "done"
