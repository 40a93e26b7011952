#!/usr/bin/env python3
"""torchvision's ResNets trained in PyTorch on the GPU, timed like gpu-check
times ours: SGD steps (momentum 0.9, weight decay 1e-4; forward, loss read
back, backward, update) on a synthetic batch kept on the GPU, synchronised
before each clock reading, after warm-up; median step.

    python3 tools/cuda/pytorch_bench.py --models resnet50,resnet18 \
        --batch-sizes 32,64,128 --json OUT.jsonl

Modes: fp32 (TF32 off for matmul and cuDNN), tf32 (TF32 on), bf16
(autocast to bfloat16); each in channels_last, the layout of our NHWC
model, with cudnn.benchmark on. Prints one line per (model, mode, batch)
and writes JSON lines: model, mode, batch, side, median_s, images_per_sec,
peak_memory_bytes (torch.cuda.max_memory_allocated).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision


def set_mode(mode):
    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def time_steps(name, mode, batch, side, warmup, min_steps, max_steps, max_seconds, dev="cuda"):
    set_mode(mode)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=1000)
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, side, side, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    gpu = dev == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats()

    def step():
        t0 = time.perf_counter()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss = F.cross_entropy(model(x), y)
        value = loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if gpu:
            torch.cuda.synchronize()
        assert value == value, "loss is NaN"
        return time.perf_counter() - t0

    for _ in range(warmup):
        step()
    times, start = [], time.perf_counter()
    while len(times) < max_steps and (
        len(times) < min_steps or time.perf_counter() - start < max_seconds
    ):
        times.append(step())
    med = statistics.median(times)
    rec = dict(
        kind="torch", model=name, mode=mode, batch=batch, side=side,
        median_s=med, images_per_sec=batch / med, steps=len(times),
        peak_memory_bytes=torch.cuda.max_memory_allocated() if gpu else 0,
    )
    del model, opt, x, y
    if gpu:
        torch.cuda.empty_cache()
    return rec


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,resnet18")
    p.add_argument("--modes", default="fp32,tf32,bf16")
    p.add_argument("--batch-sizes", default="32,64,128")
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--min-steps", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--max-seconds", type=float, default=5.0)
    p.add_argument("--json")
    p.add_argument("--device", default="cuda", help="cpu: a dry run of the script")
    a = p.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.cuda.get_device_name() if a.device == 'cuda' else 'cpu'}", flush=True)
    out = open(a.json, "w") if a.json else None
    for name in a.models.split(","):
        for mode in a.modes.split(","):
            for b in map(int, a.batch_sizes.split(",")):
                try:
                    r = time_steps(name, mode, b, a.side, a.warmup, a.min_steps, a.max_steps, a.max_seconds, a.device)
                except torch.cuda.OutOfMemoryError as e:
                    r = dict(kind="torch_failed", model=name, mode=mode, batch=b, error=str(e)[:200])
                    torch.cuda.empty_cache()
                if "median_s" in r:
                    print(f"torch {name} {mode} b{b}: {r['median_s']*1e3:.1f} ms/step, "
                          f"{r['images_per_sec']:.0f} img/s, peak {r['peak_memory_bytes']/2**20:.0f} MiB", flush=True)
                else:
                    print(f"torch {name} {mode} b{b}: FAILED {r['error']}", flush=True)
                if out:
                    out.write(json.dumps(r) + "\n")
                    out.flush()


if __name__ == "__main__":
    main()
