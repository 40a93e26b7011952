#!/usr/bin/env bash
# Builds what the device tool carries to the GPU machine for the engine's
# CUDA backend (no Rust and no CUDA toolkit needed here: cudarc loads the
# CUDA libraries at run time): .gpu/gpu-check and .gpu/train-resnet, built
# with --features cuda, and the packed sample (.gpu/sample-packed).
# Then, on the GPU machine: bash tools/cuda/engine-device.sh (carry .gpu).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
mkdir -p .gpu
CARGO_TARGET_DIR=target/cuda-engine cargo build --release --features cuda \
  --bin gpu-check --bin train-resnet --bin pack-imagenet
cp target/cuda-engine/release/{gpu-check,train-resnet} .gpu/
target/cuda-engine/release/pack-imagenet datasets/sample .gpu/sample-packed --quiet
du -sh .gpu/*
