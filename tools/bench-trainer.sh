#!/usr/bin/env bash
# Ours vs PyTorch on the same network, same machine, same run: the paper's
# CIFAR ResNet-20 (option A), SGD steps on random 32x32 batches, CPU.
#
#   bash tools/bench-trainer.sh [BATCH] [STEPS] [ROUNDS]     (needs: pip install torch)
#
# Alternates the two ROUNDS times and prints each median s/step, then the
# median over rounds and the ratio ours/PyTorch in images per second.
set -euo pipefail
b=${1:-128}; steps=${2:-6}; rounds=${3:-3}
threads=$(nproc)
cargo build --release --quiet --bin gpu-check
ours=(); theirs=()
for r in $(seq "$rounds"); do
  o=$(./target/release/gpu-check --compare "" --time resnet20 --batch-sizes "$b" --side 32 \
        --warmup 1 --min-steps "$steps" --max-steps "$steps" 2>/dev/null |
      awk '/^time resnet20/ {for (i=1;i<=NF;i++) if ($i=="ms/step") print $(i-1)/1000}')
  t=$(python3 tools/pytorch-resnet20.py "$b" "$steps" "$threads" | awk '/median/ {for (i=1;i<=NF;i++) if ($i=="median") print $(i+1)}')
  echo "round $r: ours $o s/step, pytorch $t s/step"
  ours+=("$o"); theirs+=("$t")
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mo=$(med "${ours[@]}"); mt=$(med "${theirs[@]}")
awk -v o="$mo" -v t="$mt" -v b="$b" 'BEGIN {
  printf "median: ours %.3f s/step (%.0f img/s), pytorch %.3f s/step (%.0f img/s), ours/pytorch = %.2f\n", o, b/o, t, b/t, t/o }'
