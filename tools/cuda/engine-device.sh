#!/usr/bin/env bash
# The engine's CUDA backend on the lent GPU machine, from the repository
# root, with .gpu/gpu-check (built here: bash tools/cuda/engine-bundle.sh)
# carried along. Builds nothing there.
#
#   PARTS="compare train time torch" bash tools/cuda/engine-device.sh
#
# compare: gpu-check --compare (GPU vs the CPU engine, fp32 and tf32)
# train:   train-resnet --device cuda on the packed sample (ResNet-20 at
#          32, 2 epochs, then ResNet-18 at 64 for 20 steps), exit codes,
#          the logs' last records
# time:    gpu-check --time, ResNet-50 at BATCHES, ResNet-18 at BATCHES18
# torch:   tools/cuda/pytorch_bench.py, the same networks and batches
#          (fp32, TF32, bf16 autocast; channels_last, cudnn.benchmark)
# then one table (tools/cuda/engine_table.py). Results and logs in $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
batches=${BATCHES:-64,128,256}
batches18=${BATCHES18:-256}
modes=${MODES:-fp32,tf32}
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start )) s] $*"; }
{
  stamp "machine, $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
  echo "cpu cores: $(nproc)"
  python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())'
} 2>&1 | tee "$out/machine.txt"
# libcuda from the driver; NVRTC, cuBLAS and cuDNN from PyTorch's CUDA wheels.
sp=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$(find "$sp/nvidia" -maxdepth 3 -type d -name lib | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bin=.gpu/gpu-check
chmod +x "$bin"
rm -f "$out/ours.jsonl" "$out/torch.jsonl"
gc() {
  local limit=$1; shift
  stamp "gpu-check $*"
  timeout "$limit" "$bin" "$@" --modes "$modes" --json /tmp/part.jsonl 2>&1 | tee -a "$out/ours.log"
  echo "exit ${PIPESTATUS[0]}"
  cat /tmp/part.jsonl >> "$out/ours.jsonl" 2>/dev/null; rm -f /tmp/part.jsonl
}
pt() {
  local limit=$1; shift
  stamp "pytorch $*"
  PYTHONUNBUFFERED=1 timeout "$limit" python3 tools/cuda/pytorch_bench.py "$@" --json /tmp/part.jsonl 2>&1 | tee -a "$out/torch.log"
  cat /tmp/part.jsonl >> "$out/torch.jsonl" 2>/dev/null; rm -f /tmp/part.jsonl
}
parts=" ${PARTS:-compare train time torch} "
has() { [[ $parts == *" $1 "* ]]; }
has compare && gc "${COMPARE_LIMIT:-150}" --compare "${COMPARE:-resnet20,resnet18,resnet50}" \
  --compare-batch 4 --compare-side "${COMPARE_SIDE:-224}" --compare-steps 3 --time ""
if has train; then
  chmod +x .gpu/train-resnet
  for args in "--model resnet20 --epochs 2 --batch-size 64" \
              "--model resnet18 --crop 64 --max-steps 20 --batch-size 32 --no-final-eval"; do
    stamp "train-resnet --device cuda $args"
    run="$out/train-$(echo "$args" | cut -d' ' -f2)"
    # shellcheck disable=SC2086
    timeout "${TRAIN_LIMIT:-120}" .gpu/train-resnet --device cuda --data .gpu/sample-packed \
      $args --out "$run" --quiet 2>&1 | tail -8 | tee -a "$out/train.log"
    echo "exit ${PIPESTATUS[0]}" | tee -a "$out/train.log"
    tail -3 "$run/log.jsonl" 2>/dev/null | tee -a "$out/train.log"
  done
fi
has time && gc "${TIME_LIMIT:-200}" --compare "" --time resnet50 --batch-sizes "$batches" \
  --warmup 3 --min-steps 5 --max-seconds "${SECONDS_EACH:-2}"
has time && [ -n "$batches18" ] && gc 60 --compare "" --time resnet18 --batch-sizes "$batches18" \
  --warmup 3 --min-steps 5 --max-seconds "${SECONDS_EACH:-2}"
has torch && pt "${TORCH_LIMIT:-200}" --models resnet50 --batch-sizes "$batches" --max-seconds 2
has torch && [ -n "$batches18" ] && pt 60 --models resnet18 --batch-sizes "$batches18" --max-seconds 2
stamp "table"
python3 tools/cuda/engine_table.py "$out/ours.jsonl" -- "$out/torch.jsonl" | tee "$out/table.md"
stamp "done"
