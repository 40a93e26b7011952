#!/usr/bin/env bash
# Everything issue 33 asks of a CPU with bf16 instructions, in one run: the
# native kernels' tests (a skipped test of a kernel this CPU has fails), the
# kernels' speed beside the fp32 product, the trainer table against PyTorch,
# and the bf16 step without the bf16 kernels (A/B). Results go to
# docs/bf16-DATE/ for BENCHMARKS.md.
#
#   PYTHON=/path/to/python-with-torch bash tools/check-bf16.sh [ROUNDS]
#
# On a CPU with neither AMX-BF16 nor AVX512-BF16 it says so and stops: there
# is nothing here it can measure that BENCHMARKS.md does not have.
set -euo pipefail
rounds=${1:-2}
: "${PYTHON:?name an interpreter with torch: PYTHON=... bash tools/check-bf16.sh}"
has=$(grep -o -w -m1 'amx_bf16' /proc/cpuinfo || true)
has="$has $(grep -o -w -m1 'avx512_bf16' /proc/cpuinfo || true)"
kernels=()
[[ $has == *amx_bf16* ]] && kernels+=(amx)
[[ $has == *avx512_bf16* ]] && kernels+=(avx512bf16)
if ((${#kernels[@]} == 0)); then
  echo "check-bf16: this CPU has neither amx_bf16 nor avx512_bf16 (/proc/cpuinfo); nothing to check" >&2
  exit 2
fi
out=docs/bf16-$(date -u +%F)
mkdir -p "$out"
{
  grep -m1 'model name' /proc/cpuinfo
  grep -m1 -o -w -E 'amx_[a-z0-9]+|avx512_bf16|avx512_fp16|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' '
  echo
  nproc
} >"$out/cpu.txt"
export RESNET_REQUIRE_BF16
RESNET_REQUIRE_BF16=$(IFS=,; echo "${kernels[*]}")
echo "== kernels: $RESNET_REQUIRE_BF16 (results in $out)"
cargo test --release --lib -- bf16gemm direct16 --nocapture 2>&1 | tee "$out/test-bf16gemm.txt"
cargo test --release --test tests precision -- --nocapture 2>&1 | tee "$out/test-precision.txt"
cargo bench --bench sgemm 2>&1 | tee "$out/bench-sgemm.txt"
PYTHON=$PYTHON bash tools/bench-trainer.sh "$rounds" "$out/bench-precision.jsonl" | tee "$out/table.md"
# The same bf16 steps on the fp32 kernels (rounded operands): what the
# bf16 kernels gain in the engine itself.
for k in "${kernels[@]}" fp32; do
  while read -r model batch size steps; do
    RESNET_BF16_KERNEL=$k ./target/release/bench-trainer --model "$model" --batch-size "$batch" \
      --size "$size" --steps "$steps" --warmup 1 --rounds "$rounds" --precision bf16 --json \
      >>"$out/bench-kernels.jsonl"
  done <<'ROWS'
resnet20 128 32 4
resnet50 8 224 3
ROWS
done
# The small convolutions off their direct VDPBF16PS kernel (AVX512-BF16
# only; elsewhere the variable changes nothing).
RESNET_DIRECT_BF16=0 ./target/release/bench-trainer --model resnet20 --batch-size 128 \
  --size 32 --steps 4 --warmup 1 --rounds "$rounds" --precision bf16 --json \
  >>"$out/bench-kernels.jsonl"
echo "== done: $out (commit it)"
