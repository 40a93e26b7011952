#!/usr/bin/env python3
"""The zoo's networks in PyTorch, timed as bench-trainer times ours: SGD
steps (forward, cross-entropy, backward, update; momentum 0.9, weight decay
1e-4) on one random NCHW batch, CPU, after warm-up steps; median.

    python3 tools/pytorch-bench.py --model resnet20 --batch-size 128 --size 32 \
        --steps 6 --warmup 2 --threads 2 --mode bf16-autocast-channels-last [--peak]

--mode: fp32-nchw (PyTorch's default), fp32-channels-last (its fastest fp32
on CPUs with oneDNN), bf16-autocast-channels-last (torch.autocast("cpu",
torch.bfloat16) around forward and loss, fp32 master weights: its fastest
bf16). --peak adds the GFLOP/s of 1024^3 matrix products in fp32 and in bf16
on the same threads (oneDNN picks AMX, AVX512-BF16 or emulation itself).

Prints one JSON object: s_per_step, step_s, mode, torch version, the
oneDNN (mkldnn) version, threads (and with --peak, matmul_gflops). `bench-trainer --pytorch` runs it beside ours.
Models: resnet20/32/44/56/110 and plain20..110 (the paper's CIFAR nets,
option A), resnet18/34/50/101/152 (ImageNet, option B; bottlenecks with the
stride on the first 1x1 as ours, v1) and resnet50/101/152-v1.5, plain18/34.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(i, o, k, s):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o))


class Basic(nn.Module):
    def __init__(self, i, o, s, shortcut):
        super().__init__()
        self.a, self.b = conv_bn(i, o, 3, s), conv_bn(o, o, 3, 1)
        self.shortcut, self.s, self.pad = shortcut, s, o - i
        self.down = conv_bn(i, o, 1, s) if shortcut == "B" and (s != 1 or i != o) else None

    def forward(self, x):
        y = self.b(F.relu(self.a(x)))
        if self.shortcut == "plain":
            return F.relu(y)
        if self.down is not None:
            sc = self.down(x)
        elif self.s != 1 or self.pad:
            sc = F.pad(x[:, :, :: self.s, :: self.s], (0, 0, 0, 0, 0, self.pad))  # option A
        else:
            sc = x
        return F.relu(y + sc)


class Bottleneck(nn.Module):
    def __init__(self, i, m, o, s, v15):
        super().__init__()
        self.a = conv_bn(i, m, 1, 1 if v15 else s)
        self.b = conv_bn(m, m, 3, s if v15 else 1)
        self.c = conv_bn(m, o, 1, 1)
        self.down = conv_bn(i, o, 1, s) if (s != 1 or i != o) else None

    def forward(self, x):
        y = self.c(F.relu(self.b(F.relu(self.a(x)))))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class Net(nn.Module):
    def __init__(self, stem, blocks, width, classes, pool):
        super().__init__()
        self.stem, self.blocks, self.pool = stem, nn.Sequential(*blocks), pool
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        if self.pool:
            x = F.max_pool2d(x, 3, 2, 1)
        return self.fc(self.blocks(x).mean((2, 3)))


def build(name):
    plain = name.startswith("plain")
    depth = int(name.replace("plain", "").replace("resnet", "").split("-")[0])
    if depth in (20, 32, 44, 56, 110):
        n, blocks, i = (depth - 2) // 6, [], 16
        for o, s in [(16, 1), (32, 2), (64, 2)]:
            for k in range(n):
                blocks.append(Basic(i, o, s if k == 0 else 1, "plain" if plain else "A"))
                i = o
        return Net(conv_bn(3, 16, 3, 1), blocks, 64, 10, False)
    counts = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    blocks, i = [], 64
    for stage, (n, m) in enumerate(zip(counts, [64, 128, 256, 512])):
        for k in range(n):
            s = 2 if stage > 0 and k == 0 else 1
            if depth < 50:
                blocks.append(Basic(i, m, s, "plain" if plain else "B"))
                i = m
            else:
                blocks.append(Bottleneck(i, m, 4 * m, s, name.endswith("-v1.5")))
                i = 4 * m
    return Net(conv_bn(3, 64, 7, 2), blocks, i, 1000, True)


def onednn_version():
    """oneDNN's version as the build reports it ("MKL-DNN v3.13.3 ...")."""
    import re
    m = re.search(r"(?:oneDNN|MKL-DNN) v([0-9][0-9.]*)", torch.__config__.show())
    return m.group(1) if m else None


MODES = ("fp32-nchw", "fp32-channels-last", "bf16-autocast-channels-last")


def matmul_gflops(dtype, n=1024, reps=5):
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=MODES, default="fp32-nchw")
    p.add_argument("--peak", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = build(a.model)
    classes = m.fc.out_features
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch_size, 3, a.size, a.size)
    y = torch.randint(0, classes, (a.batch_size,))
    if a.mode != "fp32-nchw":
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    bf16 = a.mode.startswith("bf16")
    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    out = {
        "model": a.model, "batch_size": a.batch_size, "size": a.size, "threads": a.threads,
        "mode": a.mode, "s_per_step": statistics.median(times), "step_s": times,
        "torch": torch.__version__, "mkldnn": torch.backends.mkldnn.is_available(),
        "onednn": onednn_version(),
        "parameters": sum(q.numel() for q in m.parameters()),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if a.peak:
        out["matmul_gflops"] = {"fp32": matmul_gflops(torch.float32),
                                "bf16": matmul_gflops(torch.bfloat16)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
