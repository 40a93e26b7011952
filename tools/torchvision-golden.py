#!/usr/bin/env python3
"""Golden check of our ResNets against torchvision (torch + torchvision + safetensors from PyPI).

    python3 tools/torchvision-golden.py export DIR MODEL   # torchvision weights, input, logits -> DIR
    cargo run --release --example golden -- DIR MODEL      # ours: load, compare, save ours + our logits
    python3 tools/torchvision-golden.py check DIR MODEL    # torchvision loads ours (strict), compares

MODEL: resnet18 | resnet34 | resnet50-v1.5 | resnet101-v1.5 | resnet152-v1.5
(torchvision's resnet50/101/152 put the stride on the 3x3: our "-v1.5" models).
Or run all three steps: bash tools/torchvision-golden.sh MODEL
"""
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file

TV = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50-v1.5": "resnet50",
    "resnet101-v1.5": "resnet101",
    "resnet152-v1.5": "resnet152",
}


def build(model):
    net = getattr(torchvision.models, TV[model])(weights=None, num_classes=1000)
    net.eval()
    return net


def max_rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def export(d, model):
    torch.manual_seed(0)
    net = build(model)
    # Non-trivial BatchNorm statistics and affine terms, so eval mode exercises them.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        y = net(x)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, f"{d}/torchvision.safetensors")
    save_file({"x_nhwc": x.permute(0, 2, 3, 1).contiguous(), "logits": y}, f"{d}/io.safetensors")
    print(f"exported torchvision {TV[model]}: {sum(p.numel() for p in net.parameters())} parameters")


def check(d, model):
    net = build(model)
    sd = load_file(f"{d}/ours.safetensors")
    net.load_state_dict(sd, strict=True)  # every name and shape must match
    io = load_file(f"{d}/ours_io.safetensors")
    x = io["x_nhwc"].permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        y = net(x)
    err = max_rel_err(io["logits"], y)
    print(f"torchvision {TV[model]} with our weights: max relative logit error {err:.2e}")
    if err > 1e-4:
        sys.exit(f"FAIL: {err} > 1e-4")
    print("OK")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("export", "check") or sys.argv[3] not in TV:
        sys.exit(__doc__)
    torch.set_num_threads(2)
    {"export": export, "check": check}[sys.argv[1]](sys.argv[2], sys.argv[3])
