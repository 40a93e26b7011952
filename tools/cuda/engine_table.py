#!/usr/bin/env python3
"""One table from gpu-check's (engine, --features cuda) and
pytorch_bench.py's JSON lines: ours per precision beside PyTorch's
matching mode, images/s, ratio and memory; then the comparisons.

    python3 tools/cuda/engine_table.py OURS.jsonl... -- TORCH.jsonl...
"""
import sys

from table import read  # the same JSON-lines reader as dfdx's table


def main():
    args = sys.argv[1:]
    cut = args.index("--") if "--" in args else len(args)
    ours, torch = read(args[:cut]), read(args[cut + 1:])
    mine = {(r["model"], r["mode"], r["batch"]): r for r in ours if r.get("kind") == "engine_time"}
    theirs = {(r["model"], r["mode"], r["batch"]): r for r in torch if r.get("kind") == "torch"}
    keys = sorted({(m, b) for (m, _, b) in mine} | {(m, b) for (m, _, b) in theirs})
    print("| model | batch | mode | ours img/s | PyTorch img/s | ours / PyTorch | ours MiB | PyTorch MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for model, b in keys:
        for mode in ["fp32", "tf32", "bf16"]:
            o, t = mine.get((model, mode, b)), theirs.get((model, mode, b))
            if not o and not t:
                continue
            oi = o["images_per_sec"] if o else None
            ti = t["images_per_sec"] if t else None
            cells = [model, str(b), mode,
                     f"{oi:.0f}" if oi else "n/a",
                     f"{ti:.0f}" if ti else "n/a",
                     f"{oi / ti:.2f}" if oi and ti else "n/a",
                     f"{o['memory_bytes'] / 2**20:.0f}" if o else "n/a",
                     f"{t['peak_memory_bytes'] / 2**20:.0f}" if t else "n/a"]
            print("| " + " | ".join(cells) + " |")
    for r in ours:
        if r.get("kind") == "engine_compare":
            s = r["sensitivity"]
            print(f"\ncompare {r['model']} {r['mode']} b{r['batch']} {r['side']}px, GPU vs CPU engine: "
                  f"logits {r['logits']:.1e}, loss {r['loss']:.1e}, gradients {r['gradients']['rel']:.1e} "
                  f"(worst {r['gradients']['worst'][1]:.1e} {r['gradients']['worst'][0]}), "
                  f"after {r['steps']} steps {r['after_steps']['rel']:.1e} "
                  f"(worst {r['after_steps']['worst'][1]:.1e} {r['after_steps']['worst'][0]}), "
                  f"eval logits {r['eval_logits']:.1e}; own f32 sensitivity {s[0]:.1e}/{s[1]:.1e}/{s[2]:.1e}; "
                  f"{'PASS' if r['passed'] else 'FAIL'}")
        elif r.get("kind") == "engine_failed":
            print(f"\nFAILED {r['what']}: {r['error']}")


if __name__ == "__main__":
    main()
