#!/usr/bin/env bash
# This crate's JPEG decoder (libjpeg-turbo by default; zune-jpeg with
# CARGO_FLAGS=--no-default-features) against libjpeg-turbo's tjbench, one
# thread, the same files, each repeated for SECONDS:
#   [CARGO_FLAGS=...] bash tools/bench-decoder.sh [PHOTO_SET] [N_FILES] [SECONDS]
# Needs tjbench (Debian: libjpeg-turbo-progs).
set -euo pipefail
SET=${1:-target/photo-set}; N=${2:-40}; SECS=${3:-0.3}
mapfile -t FILES < <(find "$SET" -name '*.JPEG' | sort | awk 'NR % 50 == 1' | head -n "$N")
cargo build --release --quiet --example decode_speed ${CARGO_FLAGS:-}
last=$(target/release/examples/decode_speed "$SECS" "${FILES[@]}" | tail -1)
ours=$(echo "$last" | awk '{print $2}'); name=$(echo "$last" | sed 's/.*(\(.*\))/\1/')
# tjbench: decompression to RGB; aggregate as total pixels / total time, like decode_speed.
tj=$(for f in "${FILES[@]}"; do
  px=$(identify -format '%[fx:w*h]' "$f")
  rate=$(tjbench "$f" -nowrite -benchtime "$SECS" -warmup 0.05 -rgb 2>/dev/null | awk '/Decompress/{getline; print $2}' | head -1)
  [ -n "$rate" ] || rate=$(tjbench "$f" -nowrite -benchtime "$SECS" -warmup 0.05 -rgb 2>/dev/null | awk '/Throughput/{print $2}' | head -1)
  echo "$px $rate"
done | awk '{p+=$1; t+=$1/($2*1e6)} END {printf "%.1f", p/t/1e6}')
python3 -c "print(f'{len(\"${FILES[*]}\".split())} files, 1 thread: $name (this crate) {float(\"$ours\"):.1f} Mpx/s, libjpeg-turbo (tjbench) {float(\"$tj\"):.1f} Mpx/s, ratio {float(\"$ours\")/float(\"$tj\"):.2f}')"
