"""The data-parallel scaling table of BENCHMARKS.md, from the JSON lines of
tools/bench-scaling.sh, and the estimate for many machines derived from
them.

    python3 tools/scaling_table.py docs/bench-scaling-DATE.jsonl

The estimate (ring allreduce, as NCCL and OpenMPI's large-message
algorithm): each of N nodes sends and receives 2 (N-1)/N of the gradient
bytes G over its link of B bytes/s, plus 2 (N-1) latencies a per bucket;
the sum overlaps backward (the measured hidden share tells how much of the
step's backward it can hide under), so a step at N nodes takes
    T(N) = T1 + max(0, t_ar(N) - H),
with T1 the measured 1-node step at the same per-node batch and H the part
of the measured allreduce that was hidden (allreduce_s - allreduce_wait_s)
scaled to the backward that covers it. Weak scaling: every node keeps its
batch, the global batch grows with N.
"""
import json
import statistics as st
import sys

# Parameters (= gradient floats) of the models timed.
PARAMS = {"resnet20": 272474, "resnet50": 25557032}

rows = [json.loads(l) for l in open(sys.argv[1])]
med = st.median
print("| network | global batch | 1 rank x 2 threads s/step | 2 ranks x 1 thread s/step | throughput 2 ranks / 1 rank | gradient | its allreduce alone | waited for after backward | hidden under backward |")
print("|---|---|---|---|---|---|---|---|---|")
ar = []
per_model = {}
for model in dict.fromkeys(r["model"] for r in rows):
    one = [r for r in rows if r["model"] == model and r["ranks"] == 1]
    two = [r for r in rows if r["model"] == model and r["ranks"] == 2]
    s1, s2 = med([r["s_per_step"] for r in one]), med([r["s_per_step"] for r in two])
    a, w = med([r["allreduce_s"] for r in two]), med([r["allreduce_wait_s"] for r in two])
    alone = med([r["allreduce_alone_s"] for r in two])
    ar += [r["allreduce_only_s"] for r in two]
    per_model[model] = (one[0], s1, s2, a, w, alone)
    print(f"| {model} | {one[0]['batch_size']}@{one[0]['size']} | {s1:.3f} | {s2:.3f} | **{s1 / s2:.2f}** "
          f"| {PARAMS.get(model, 0) * 4 / 1e6:.1f} MB | {1e3 * alone:.1f} ms | {1e3 * w:.1f} ms | {100 * max(0.0, 1 - w / alone):.0f}% |")
t = med(ar)
G = 4 * 25557032
print(f"\nAllreduce of 25,557,032 floats (ResNet-50's gradients, {G / 1e6:.0f} MB) between 2 ranks "
      f"on this machine (OpenMPI 4.1.4, shared memory): {1e3 * t:.1f} ms, median of {len(ar)} "
      f"({G / t / 1e9:.2f} GB/s bus bandwidth). {len(rows) // 4} alternating rounds.")

# The estimate for ResNet-50.
r50 = per_model.get("resnet50")
if r50:
    first, s1, s2, a, w, alone = r50
    window = max(a - w, 0.0)  # backward after the first bucket started
    exposed = min(1.0, w / alone)  # the share of the sum left after backward here
    buckets = 5  # 1 MiB + four of up to 25 MiB
    print(f"\nEstimate for ResNet-50 (weak scaling: one rank per node, each node's batch "
          f"{first['batch_size']} images). T1 = {s1:.2f} s/step measured on 2 cores, and a node 16x "
          f"faster (T1/16, e.g. 32 cores at this per-core speed). A step at N nodes takes "
          f"T1 + max(t_ar - H, f t_ar): t_ar the ring allreduce of {G / 1e6:.0f} MB "
          f"(2(N-1)/N of it over each link at 90% of line rate, 10 us per hop and bucket), "
          f"H = {1e3 * window:.0f} ms the backward that runs after the first bucket starts "
          f"(scaled with the node's speed), f = {100 * exposed:.0f}% the share of the sum that "
          f"was still waited for after backward in the 2-rank run above.\n")
    print("| nodes | link | ring allreduce | 2-core node: efficiency | 16x node: efficiency |")
    print("|---|---|---|---|---|")
    for gbps in (25, 100):
        B = gbps / 8 * 1e9 * 0.9
        alpha = 10e-6
        for n in (8, 32, 64, 128, 256):
            tar = 2 * (n - 1) / n * G / B + 2 * (n - 1) * alpha * buckets
            cells = []
            for t1 in (s1, s1 / 16):
                h = window * t1 / s1
                cells.append(t1 / (t1 + max(tar - h, exposed * tar)))
            print(f"| {n} | {gbps} Gb/s | {1e3 * tar:.0f} ms | {100 * cells[0]:.1f}% | {100 * cells[1]:.1f}% |")
