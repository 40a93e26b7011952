#!/usr/bin/env bash
# The trainer table of BENCHMARKS.md: our SGD step (the planned engine) beside
# PyTorch's on the same network, machine and threads, alternating rounds,
# medians; one row per network, in each precision against PyTorch's fastest
# mode for it on CPUs (fp32: channels_last; bf16: bf16 autocast,
# channels_last).
#
#   PYTHON=/path/to/python-with-torch bash tools/bench-trainer.sh [ROUNDS] [OUT.jsonl]
#   PRECISIONS="fp32" ...   # one precision only (default: "fp32 bf16")
#
# PyTorch: the CPU-capable wheel from PyPI (pip install torch). Each row is
# one `bench-trainer ... --precision P --pytorch --json` run; the JSON lines
# go to OUT (default target/bench-trainer.jsonl) and a Markdown table to
# stdout, with the CPU's model and its matrix-product instruction sets.
set -euo pipefail
rounds=${1:-3}
out=${2:-target/bench-trainer.jsonl}
precisions=${PRECISIONS:-fp32 bf16}
: "${PYTHON:?name an interpreter with torch: PYTHON=... bash tools/bench-trainer.sh}"
cargo build --release --quiet --bin bench-trainer
: >"$out"
while read -r model batch size steps; do
  for p in $precisions; do
    ./target/release/bench-trainer --model "$model" --batch-size "$batch" --size "$size" \
      --steps "$steps" --warmup 1 --rounds "$rounds" --precision "$p" --pytorch --json >>"$out"
  done
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
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("| network | batch | size | precision | ours s/step | PyTorch mode | PyTorch s/step | ours/PyTorch | ours GFLOP/s (of gemm peak) | ours peak RSS | PyTorch peak RSS |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    p = r["pytorch"]
    print(f"| {r['model']} | {r['batch_size']} | {r['size']} | {r['precision']} | {r['s_per_step']:.3f} "
          f"| {p['mode']} | {r['pytorch_s_per_step']:.3f} | **{r['ratio']:.2f}** "
          f"| {r['gflops_per_sec']:.1f} ({100 * r['peak_fraction']:.0f}% of {r['gemm_peak_gflops']:.0f}) "
          f"| {r['peak_rss_bytes'] / 2**20:.0f} MiB | {(p.get('peak_rss_bytes') or 0) / 2**20:.0f} MiB |")
p = rows[0]["pytorch"]
print(f"\n{cpu} ({rows[0]['cpu_kernels']}); PyTorch {p['torch']}, oneDNN {p['onednn']}; "
      f"{rows[0]['threads']} threads; medians of {len(rows[0]['rounds_s_per_step'])} alternating rounds.")
for r in rows:
    m = r["pytorch"].get("matmul_gflops")
    if m:
        print(f"1024^3 products in PyTorch: fp32 {m['fp32']:.0f} GFLOP/s, bf16 {m['bf16']:.0f} GFLOP/s "
              f"({r['model']} b{r['batch_size']} {r['precision']} run); engine kernels: {r['kernels']}")
        break
PY
