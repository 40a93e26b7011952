#!/usr/bin/env python3
"""One table from gpu-check's and pytorch_bench.py's JSON lines:
ours vs PyTorch (fp32, TF32, bf16), images/s and ratio, per model and batch.

    python3 tools/cuda/table.py OURS.jsonl... -- TORCH.jsonl...
"""
import json
import sys


def read(paths):
    recs = []
    for p in paths:
        try:
            with open(p) as f:
                recs += [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            pass
    return recs


def main():
    args = sys.argv[1:]
    cut = args.index("--") if "--" in args else len(args)
    ours, torch = read(args[:cut]), read(args[cut + 1:])
    mine = {(r["model"], r["batch"]): r for r in ours if r.get("kind") == "time"}
    theirs = {(r["model"], r["mode"], r["batch"]): r for r in torch if r.get("kind") == "torch"}
    keys = sorted({k for k in mine} | {(m, b) for (m, _, b) in theirs})
    modes = ["fp32", "tf32", "bf16"]
    notes = []
    print("| model | batch | ours img/s | ours MiB | " + " | ".join(
        f"PyTorch {m} img/s | ours / {m}" for m in modes) + " | PyTorch fp32 MiB |")
    print("|---|---|---|---|" + "---|---|" * len(modes) + "---|")
    for model, b in keys:
        o = mine.get((model, b))
        if o:
            parts = f"{model} b{b}: forward {o['forward_s']*1e3:.1f} ms, backward {o['backward_s']*1e3:.1f} ms, update {o['update_s']*1e3:.1f} ms"
            notes.append(parts)
        oi = o["images_per_sec"] if o else None
        mem = o.get("memory_bytes") if o else None
        cells = [model, str(b), f"{oi:.1f}" if oi else "n/a",
                 f"{mem / 2**20:.0f}" if mem else "n/a"]
        for m in modes:
            t = theirs.get((model, m, b))
            ti = t["images_per_sec"] if t else None
            cells += [f"{ti:.0f}" if ti else "n/a",
                      f"{oi / ti:.3f}" if oi and ti else "n/a"]
        t = theirs.get((model, "fp32", b))
        cells.append(f"{t['peak_memory_bytes'] / 2**20:.0f}" if t else "n/a")
        print("| " + " | ".join(cells) + " |")
    if notes:
        print("\nours, median step parts: " + "; ".join(notes))
    for r in ours:
        if r.get("kind") == "compare":
            def summary(d):
                g = max(d["gradients"], key=lambda e: e["rel"])
                a = max(d["after_steps"], key=lambda e: e["rel"])
                glob = d.get("gradients_all")
                aglob = d.get("after_steps_all")
                return (f"logits {d['logits']:.2e}, loss {d['loss']:.2e}, "
                        + (f"gradients {glob:.2e} " if glob is not None else "")
                        + f"(worst {g['rel']:.2e}, {g['path']}), after {r['steps']} SGD steps "
                        + (f"{aglob:.2e} " if aglob is not None else "")
                        + f"(worst {a['rel']:.2e}, {a['path']})")
            print(f"\ncompare {r['model']} b{r['batch']} {r['side']}px, CPU vs CUDA: {summary(r['test'])}")
            print(f"  CPU vs CPU on input x (1 + 1e-6): {summary(r['sensitivity'])}")
        elif r.get("kind") == "loader":
            print(f"\nloader+train {r['model']} b{r['batch']}, {r['workers']} workers: "
                  f"{r['images_per_sec']:.1f} img/s, waited for data {100 * r['wait_fraction']:.1f}% "
                  f"of {r['wall_s']:.1f} s; loader alone {r['loader_alone_images_per_sec']:.0f} img/s")
        elif r.get("kind") == "ops":
            print(f"\npieces of a 3x3 64-channel layer at 56x56, batch {r['batch']}, forward + backward:")
            for name, sec in r["ops"]:
                print(f"  {name}: {sec * 1e3:.2f} ms")
        elif r.get("kind") == "failed":
            print(f"\nFAILED {r['what']}: {r['error']}")


if __name__ == "__main__":
    main()
