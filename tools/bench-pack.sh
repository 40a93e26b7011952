#!/usr/bin/env bash
# Packing throughput against its floor, side by side on the same files and threads:
#   bash tools/bench-pack.sh [PHOTO_SET] [THREADS] [REPEATS]
# The floor is `pack-imagenet --decode-only` (read + decode every file, nothing
# else); packing also converts, re-encodes where needed, measures statistics
# and writes shards. Prints the median of each and the ratio.
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
floor=(); packr=()
for r in $(seq "$REPEATS"); do
  f=$($BIN --input "$SET" --decode-only --threads "$THREADS" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_sec"])')
  rm -rf "$OUT/p"
  p=$($BIN --input "$SET" --output "$OUT/p" --threads "$THREADS" --json | python3 -c 'import json,sys; d=json.load(sys.stdin)["splits"][0]; print(d["images_per_sec"], d["mb_per_sec"], d["packed"])')
  floor+=("$f"); packr+=("$p")
  echo "run $r: decode-only $f images/s; pack $p (images/s MB/s images)"
done
python3 - "$THREADS" "${floor[@]}" -- "${packr[@]}" <<'PY'
import sys, statistics as st
threads = sys.argv[1]; args = sys.argv[2:]; i = args.index("--")
floor = [float(x) for x in args[:i]]
pack = [float(x.split()[0]) for x in args[i+1:]]
mb = [float(x.split()[1]) for x in args[i+1:]]
f, p = st.median(floor), st.median(pack)
print(f"threads={threads}  decode-only median {f:.1f} images/s  pack median {p:.1f} images/s ({st.median(mb):.1f} MB/s)  pack/floor = {p/f:.2f}")
PY
