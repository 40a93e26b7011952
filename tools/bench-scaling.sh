#!/usr/bin/env bash
# Data-parallel scaling on one machine, side by side: the same global batch
# as 1 rank x 2 threads and as 2 MPI ranks x 1 thread, alternating rounds,
# medians; plus an allreduce of ResNet-50's 25.6M gradients between the 2
# ranks (each command reads no stdin: mpirun would eat the rows). Needs the mpi build (Debian: openmpi-bin libopenmpi-dev libclang-dev).
#
#   bash tools/bench-scaling.sh [ROUNDS] [OUT.jsonl]
#
# JSON lines (bench-trainer --json, with "ranks") go to OUT (default
# target/bench-scaling.jsonl); a Markdown table to stdout.
set -euo pipefail
rounds=${1:-5}
out=${2:-target/bench-scaling.jsonl}
cargo build --release --quiet --features mpi --bin bench-trainer
bin=./target/release/bench-trainer
: >"$out"
for r in $(seq "$rounds"); do
  while read -r model batch size steps; do
    "$bin" --model "$model" --batch-size "$batch" --size "$size" --steps "$steps" \
      --warmup 1 --rounds 1 --threads 2 --json >>"$out" </dev/null
    mpirun --allow-run-as-root -np 2 --bind-to core "$bin" --model "$model" --batch-size "$batch" \
      --size "$size" --steps "$steps" --warmup 1 --rounds 1 --threads 1 --json \
      --allreduce-floats 25557032 >>"$out" </dev/null
  done <<'ROWS'
resnet20 128 32 5
resnet50 16 224 2
ROWS
done
python3 tools/scaling_table.py "$out"
