#!/usr/bin/env python3
"""The loader's speed from Python, side by side on the same machine, records
and threads:

  python   resnet_imagenet.Loader feeding a Python loop (torch tensors)
  rust     bench-pipeline: the same loader in Rust, and its decode-only ceiling
  torch    torchvision's DataLoader + ImageFolder on the original JPEG files
           (Pillow), the same augmentation: shorter side S ~ U[256, 480],
           random 224 crop, flip, normalised float32 NCHW

Each round runs the three one after the other (the order rotating between
rounds); every number is one epoch after 2 warm-up batches; the table gives
medians and the per-round ratios. Needs the wheel (`pip install
target/wheels/resnet_imagenet-*.whl`), torch and torchvision in the running
Python, and a release build of bench-pipeline.

  python tools/bench-python-loader.py --raw target/photo-set --packed /tmp/ps \\
      --threads 2 --rounds 3 [--json out.jsonl]

--raw is the class-per-folder tree (RAW/train/<class>/*.jpg) that
`pack-imagenet -i RAW -o PACKED` packed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 2


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_epoch(batches, batch_size: int) -> float:
    """Images per second over one epoch after the warm-up batches; the
    consumer reads one value of each batch (it is a real tensor)."""
    n, t0 = 0, None
    for i, (images, labels) in enumerate(batches):
        float(images[0, 0, 0, 0])
        int(labels[0])
        if i + 1 == WARMUP:
            t0 = time.perf_counter()
        elif i + 1 > WARMUP:
            n += images.shape[0]
    if t0 is None or n == 0:
        sys.exit(f"the epoch has at most {WARMUP} batches of {batch_size}: use more images")
    return n / (time.perf_counter() - t0)


def run_python(packed: Path, threads: int, batch_size: int, epoch: int) -> float:
    import resnet_imagenet as ri

    loader = ri.Loader(packed / "train", batch_size, workers=threads, seed=0,
                       augment="train", rank=0, world_size=1, tensors="torch")
    loader.set_epoch(epoch)
    return time_epoch(loader, batch_size)


def run_rust(packed: Path, threads: int, batch_size: int, exe: Path) -> dict:
    out = subprocess.run(
        [str(exe), "-q", "--data", str(packed / "train"), "--workers", str(threads),
         "--batch-size", str(batch_size), "--repeat", "1", "--warmup", str(WARMUP), "--json"],
        check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    ).stdout
    r = json.loads(out)
    return {"images_per_sec": r["images_per_sec"],
            "ceiling": r["decode_ceiling_images_per_sec"], "decoder": r["decoder"]}


def torchvision_loader(raw: Path, threads: int, batch_size: int):
    import torch
    from torchvision import datasets, transforms
    import torchvision.transforms.functional as F

    class PaperScale:
        """Shorter side to S ~ U[256, 480] (the paper's scale augmentation)."""

        def __call__(self, img):
            return F.resize(img, random.randint(256, 480))

    tf = transforms.Compose([
        PaperScale(),
        transforms.RandomCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    ds = datasets.ImageFolder(str(raw / "train"), transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                       num_workers=threads, drop_last=True)


def run_torch(raw: Path, threads: int, batch_size: int) -> float:
    return time_epoch(torchvision_loader(raw, threads, batch_size), batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", type=Path, required=True, help="class-per-folder tree (RAW/train/...)")
    p.add_argument("--packed", type=Path, required=True, help="its packed shards (PACKED/train)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-torch", action="store_true", help="leave torchvision out")
    p.add_argument("--bench-pipeline", type=Path, default=ROOT / "target/release/bench-pipeline")
    p.add_argument("--json", type=Path, help="append one JSON line per round here")
    a = p.parse_args()
    for path, what in [(a.raw / "train", "--raw"), (a.packed / "train", "--packed")]:
        if not path.is_dir():
            sys.exit(f"{what}: {path} is not a folder")
    if not a.bench_pipeline.exists():
        sys.exit(f"{a.bench_pipeline} is missing: cargo build --release --bin bench-pipeline")
    import torch

    torch.set_num_threads(1)  # the consumer does nothing heavy; the workers own the cores
    kinds = ["python", "rust"] + ([] if a.skip_torch else ["torch"])
    rounds = []
    for r in range(a.rounds):
        got = {}
        for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
            if kind == "python":
                got["python"] = run_python(a.packed, a.threads, a.batch_size, epoch=r)
            elif kind == "rust":
                got["rust"] = run_rust(a.packed, a.threads, a.batch_size, a.bench_pipeline)
            else:
                got["torch"] = run_torch(a.raw, a.threads, a.batch_size)
        row = {"round": r, "threads": a.threads, "batch_size": a.batch_size,
               "python_images_per_sec": got["python"],
               "rust_images_per_sec": got["rust"]["images_per_sec"],
               "decode_ceiling_images_per_sec": got["rust"]["ceiling"],
               "decoder": got["rust"]["decoder"],
               "python_over_rust": got["python"] / got["rust"]["images_per_sec"],
               "python_over_ceiling": got["python"] / got["rust"]["ceiling"]}
        if "torch" in got:
            row["torchvision_images_per_sec"] = got["torch"]
            row["python_over_torchvision"] = got["python"] / got["torch"]
        rounds.append(row)
        print(json.dumps(row), file=sys.stderr)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps({"cpu": cpu_model(), "torch": torch.__version__, **row}) + "\n")

    def med(key):
        return statistics.median(r[key] for r in rounds)

    def each(key):
        return ", ".join(f"{r[key]:.2f}" for r in rounds)

    print(f"\n{cpu_model()}, {a.threads} threads, batch {a.batch_size}, "
          f"{a.rounds} rounds, torch {torch.__version__}, decoder {rounds[0]['decoder']}\n")
    print("| loader | images/s (median) | ratio to the Python loader, per round |")
    print("|---|---|---|")
    print(f"| resnet_imagenet.Loader (Python loop) | {med('python_images_per_sec'):.0f} | 1 |")
    print(f"| bench-pipeline (the same loader in Rust) | {med('rust_images_per_sec'):.0f} | "
          f"Python / Rust: {each('python_over_rust')} (median {med('python_over_rust'):.2f}) |")
    print(f"| decode-only ceiling (same records, threads) | {med('decode_ceiling_images_per_sec'):.0f} | "
          f"Python / ceiling: {each('python_over_ceiling')} (median {med('python_over_ceiling'):.2f}) |")
    if not a.skip_torch:
        print(f"| torchvision DataLoader + ImageFolder (Pillow) | {med('torchvision_images_per_sec'):.0f} | "
              f"Python / torchvision: {each('python_over_torchvision')} "
              f"(median {med('python_over_torchvision'):.2f}) |")


if __name__ == "__main__":
    main()
