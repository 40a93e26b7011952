#!/usr/bin/env bash
# Packing throughput against its floor, side by side on the same files and threads:
#   bash tools/bench-pack.sh [PHOTO_SET] [THREADS] [REPEATS]
# The floor is `pack-imagenet --decode-only` (read + decode every file, nothing
# else); packing also converts, re-encodes where needed, measures statistics
# and writes shards. Then packing again with the input dropped from the page
# cache first (`--cold`). Prints the median of each, pack/floor (warm) and
# cold/warm packing time.
# Make the photo set first (real photos from Debian's opencv-doc and the
# scikit-image wheel):
#   cargo run --release --example photo_set -- target/photo-set 3000 /usr/share/doc/opencv-doc/examples SKIMAGE_DATA_DIR
set -euo pipefail
SET=${1:-target/photo-set}
THREADS=${2:-$(nproc)}
REPEATS=${3:-3}
cargo build --release --quiet --bin pack-imagenet
BIN=target/release/pack-imagenet
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
floor=(); packr=(); coldr=()
rate() { python3 -c 'import json,sys; d=json.load(sys.stdin)["splits"][0]; print(d["images_per_sec"], d["mb_per_sec"], d["packed"])'; }
for r in $(seq "$REPEATS"); do
  f=$($BIN --input "$SET" --decode-only --threads "$THREADS" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_sec"])')
  rm -rf "$OUT/p"
  p=$($BIN --input "$SET" --output "$OUT/p" --threads "$THREADS" --json | rate)
  rm -rf "$OUT/p"
  c=$($BIN --input "$SET" --output "$OUT/p" --threads "$THREADS" --cold --json | rate)
  rm -rf "$OUT/p"
  floor+=("$f"); packr+=("$p"); coldr+=("$c")
  echo "run $r: decode-only $f images/s; pack $p; pack --cold $c (images/s MB/s images)"
done
python3 - "$THREADS" "${floor[@]}" -- "${packr[@]}" -- "${coldr[@]}" <<'PY'
import sys, statistics as st
threads = sys.argv[1]; args = sys.argv[2:]; i = args.index("--"); j = args.index("--", i + 1)
floor = [float(x) for x in args[:i]]
pack = [float(x.split()[0]) for x in args[i+1:j]]
mb = [float(x.split()[1]) for x in args[i+1:j]]
cold = [float(x.split()[0]) for x in args[j+1:]]
f, p, c = st.median(floor), st.median(pack), st.median(cold)
print(f"threads={threads}  decode-only median {f:.1f} images/s  pack median {p:.1f} images/s ({st.median(mb):.1f} MB/s)  pack/floor = {p/f:.2f}")
print(f"cold pack median {c:.1f} images/s  cold time / warm time = {p/c:.2f}")
PY
