#!/usr/bin/env bash
# The trainer table of the README: our SGD step (the planned engine) beside
# PyTorch's on the same network, machine and threads, alternating rounds,
# medians; one row per network of issue 16.
#
#   PYTHON=/path/to/python-with-torch bash tools/bench-trainer.sh [ROUNDS] [OUT.jsonl]
#
# PyTorch: the CPU-capable wheel from PyPI (pip install torch). Each row is
# one `bench-trainer ... --pytorch --json` run; the JSON lines go to OUT
# (default target/bench-trainer.jsonl) and a Markdown table to stdout.
set -euo pipefail
rounds=${1:-3}
out=${2:-target/bench-trainer.jsonl}
: "${PYTHON:?name an interpreter with torch: PYTHON=... bash tools/bench-trainer.sh}"
cargo build --release --quiet --bin bench-trainer
: >"$out"
while read -r model batch size steps; do
  ./target/release/bench-trainer --model "$model" --batch-size "$batch" --size "$size" \
    --steps "$steps" --warmup 1 --rounds "$rounds" --pytorch --json >>"$out"
done <<'ROWS'
resnet20 128 32 4
resnet56 128 32 3
resnet18 32 32 6
resnet50 8 224 3
resnet50 32 224 2
ROWS
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| network | batch | size | ours s/step | ours img/s | PyTorch s/step | PyTorch img/s | ours/PyTorch | ours GFLOP/s (of gemm peak) | ours peak RSS |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['model']} | {r['batch_size']} | {r['size']} | {r['s_per_step']:.3f} | {r['images_per_sec']:.1f} "
          f"| {r['pytorch_s_per_step']:.3f} | {r['batch_size'] / r['pytorch_s_per_step']:.1f} | **{r['ratio']:.2f}** "
          f"| {r['gflops_per_sec']:.1f} ({100 * r['peak_fraction']:.0f}% of {r['gemm_peak_gflops']:.0f}) "
          f"| {r['peak_rss_bytes'] / 2**20:.0f} MiB |")
p = rows[0]["pytorch"]
print(f"\nPyTorch {p['torch']}, oneDNN {p['onednn']}; {rows[0]['threads']} threads; medians of {len(rows[0]['rounds_s_per_step'])} alternating rounds.")
PY
