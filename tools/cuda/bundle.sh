#!/usr/bin/env bash
# Prepares what the device tool carries to the GPU machine (no Rust there),
# in .gpu/ (git-ignored; under the 64 MiB carry limit):
#   .gpu/gpu-check.gz   gpu-check built with --features dfdx-cuda (dfdx's CUDA path), stripped
#   .gpu/photos/train   700 ImageNet-like photos, packed (the loader phase)
#
#   bash tools/cuda/bundle.sh SKIMAGE_DATA_DIR
#
# SKIMAGE_DATA_DIR: the data folder of an unpacked scikit-image wheel; the
# other photos come from Debian's opencv-doc. Then run tools/cuda/device.sh there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
mkdir -p .gpu
bash tools/cuda/build.sh --bin gpu-check
strip -o .gpu/gpu-check target/cuda/release/gpu-check
gzip -9f .gpu/gpu-check
if [ ! -f .gpu/photos/train/manifest.json ]; then
  cargo build --release --example photo_set --bin pack-imagenet
  rm -rf target/gpu-photos
  ./target/release/examples/photo_set target/gpu-photos 700 /usr/share/doc/opencv-doc/examples "${1:?skimage data dir}"
  ./target/release/pack-imagenet -i target/gpu-photos -o .gpu/photos
fi
du -sh .gpu/*
