#!/usr/bin/env python3
"""The paper's CIFAR ResNet-20 (option A) in PyTorch, timed like ours:
SGD steps (forward, backward, update) on random 32x32 batches, CPU.

    python3 tools/pytorch-resnet20.py [BATCH] [STEPS] [THREADS]

Prints the median seconds per step and images/s (first step excluded). Compare with
    gpu-check --compare '' --time resnet20 --batch-sizes BATCH --side 32 --min-steps STEPS --max-steps STEPS
on the same machine, in the same session (tools/bench-trainer.sh runs both).
"""
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, s, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.s, self.pad = s, o - i

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        sc = x
        if self.s != 1 or self.pad:
            sc = F.pad(x[:, :, :: self.s, :: self.s], (0, 0, 0, 0, 0, self.pad))  # option A
        return F.relu(y + sc)


class ResNet20(nn.Module):
    def __init__(self, n=3, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, i = [], 16
        for o, s in [(16, 1), (32, 2), (64, 2)]:
            for k in range(n):
                layers.append(Block(i, o, s if k == 0 else 1))
                i = o
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def main():
    b = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = ResNet20()
    print(f"parameters: {sum(p.numel() for p in m.parameters())}")
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(b, 3, 32, 32)
    y = torch.randint(0, 10, (b,))
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        t = time.perf_counter() - t0
        if step:
            times.append(t)
    med = statistics.median(times)
    print(f"torch {torch.__version__}, {threads} threads, batch {b}: median {med:.3f} s/step, {b / med:.0f} images/s")


if __name__ == "__main__":
    main()
