#!/usr/bin/env bash
# Both directions of the torchvision golden check for one model (see tools/torchvision-golden.py).
# Needs: pip install torch torchvision safetensors
set -euo pipefail
model=${1:-resnet18}
dir=${2:-target/golden/$model}
mkdir -p "$dir"
python3 tools/torchvision-golden.py export "$dir" "$model"
cargo run --release --quiet --example golden -- "$dir" "$model"
python3 tools/torchvision-golden.py check "$dir" "$model"
