#!/usr/bin/env python3
"""Writes DIR/reference.tsv: Pillow's decode of every JPEG in DIR, reduced to
a GRID x GRID grid of cell means per channel (RGB, 0..255), so that the
crate's tests can check its own decodes (and packed records) against an
independent decoder without shipping Pillow's pixels.

Cell (i, j) covers rows floor(i*h/GRID)..floor((i+1)*h/GRID) and the same
for columns (images smaller than GRID get fewer, one-pixel cells). Pillow's
CMYK is converted with Pillow's own `convert("RGB")`.

It also writes DIR/reference-c.tsv: the lines of the files that
libjpeg-turbo decodes differently when its SIMD code is switched off
(JSIMD_FORCENONE=1, the C code path that a build without nasm runs), with
that decode (of the 61 files: hopper_bad_exif.jpg, whose rows differ by up
to ~60 levels from the middle of some MCU rows on). Pillow's own
libjpeg-turbo does the same, so this is libjpeg-turbo's C path against its
SIMD path, not this crate: each build is checked against its own path.

Run once by a maintainer (pip install pillow numpy); the result is committed:
    python3 tools/odd-jpeg-reference.py datasets/odd-jpeg
Line format: name <TAB> width <TAB> height <TAB> mode <TAB> grid <TAB> cells,
cells = comma-separated means with one decimal, HWC order over the grid."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image, __version__ as pil_version

GRID = 16


def cells(a, n):
    h, w, _ = a.shape
    gh, gw = min(n, h), min(n, w)
    out = []
    for i in range(gh):
        r0, r1 = i * h // gh, (i + 1) * h // gh
        for j in range(gw):
            c0, c1 = j * w // gw, (j + 1) * w // gw
            out.extend(a[r0:r1, c0:c1].reshape(-1, 3).mean(axis=0))
    return gh, gw, out


def decode_all(d):
    lines = []
    for name in sorted(os.listdir(d)):
        if not name.lower().endswith((".jpg", ".jpeg")):
            continue
        im = Image.open(os.path.join(d, name))
        mode = im.mode
        try:
            im.load()
        except OSError as e:
            lines.append(f"{name}\t0\t0\t{mode}\terror\t{e}")
            continue
        a = np.asarray(im.convert("RGB"), dtype=np.float64)
        gh, gw, out = cells(a, GRID)
        lines.append(
            f"{name}\t{im.width}\t{im.height}\t{mode}\t{gh}x{gw}\t" + ",".join(f"{v:.1f}" for v in out)
        )
    return lines


def main(d):
    if os.environ.get("JSIMD_FORCENONE") == "1":
        print("\n".join(decode_all(d)))  # the child run of the C path
        return
    simd = decode_all(d)
    env = dict(os.environ, JSIMD_FORCENONE="1")
    c_path = subprocess.run(
        [sys.executable, __file__, d], env=env, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    differs = [c for s, c in zip(simd, c_path, strict=True) if s != c]
    head = f"# Pillow {pil_version} decodes, {GRID}x{GRID} cell means (tools/odd-jpeg-reference.py)"
    with open(os.path.join(d, "reference.tsv"), "w") as f:
        f.write("\n".join([head] + simd) + "\n")
    with open(os.path.join(d, "reference-c.tsv"), "w") as f:
        f.write("\n".join([head + ", libjpeg-turbo's C path (JSIMD_FORCENONE=1), where it differs"] + differs) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
