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

rows = [json.loads(l) for l in open(sys.argv[1])]
med = st.median
print("| network | global batch | 1 rank x 2 threads s/step | 2 ranks x 1 thread s/step | throughput 2 ranks / 1 rank | allreduce ms/step | waited after backward ms | hidden under backward |")
print("|---|---|---|---|---|---|---|---|")
ar = []
per_model = {}
for model in dict.fromkeys(r["model"] for r in rows):
    one = [r for r in rows if r["model"] == model and r["ranks"] == 1]
    two = [r for r in rows if r["model"] == model and r["ranks"] == 2]
    s1, s2 = med([r["s_per_step"] for r in one]), med([r["s_per_step"] for r in two])
    a, w = med([r["allreduce_s"] for r in two]), med([r["allreduce_wait_s"] for r in two])
    ar += [r["allreduce_only_s"] for r in two]
    per_model[model] = (one[0], s1, s2, a, w)
    print(f"| {model} | {one[0]['batch_size']}@{one[0]['size']} | {s1:.3f} | {s2:.3f} | **{s1 / s2:.2f}** | {1e3 * a:.1f} | {1e3 * w:.1f} | {100 * (1 - w / max(a, 1e-12)):.0f}% |")
t = med(ar)
G = 4 * 25557032
print(f"\nAllreduce of 25,557,032 floats (ResNet-50's gradients, {G / 1e6:.0f} MB) between 2 ranks "
      f"on this machine (OpenMPI, shared memory): {1e3 * t:.1f} ms, median of {len(ar)} "
      f"({G / t / 1e9:.2f} GB/s bus bandwidth). {len(rows) // 4} alternating rounds.")

# The estimate for ResNet-50.
r50 = per_model.get("resnet50")
if r50:
    first, s1, s2, a, w = r50
    hidden = max(a - w, 0.0)
    buckets = 5  # 1 MiB + four of up to 25 MiB
    print("\nEstimate for ResNet-50, one rank per node, each node's batch as measured "
          f"({first['batch_size']} images, T1 = {s1:.2f} s/step on 2 cores) and a node 16x faster "
          f"(T1/16, e.g. 32 cores at this per-core speed):\n")
    print("| nodes | link | allreduce ms | 2-core node: efficiency | 16x node: efficiency |")
    print("|---|---|---|---|---|")
    for gbps in (25, 100):
        B = gbps / 8 * 1e9 * 0.9  # 90% of line rate
        alpha = 10e-6  # per hop, RDMA/TCP on a data-centre network
        for n in (8, 32, 64, 128, 256):
            tar = 2 * (n - 1) / n * G / B + 2 * (n - 1) * alpha * buckets
            cells = []
            for t1 in (s1, s1 / 16):
                h = hidden * t1 / s1  # the backward that hides it shrinks with the node's step
                cells.append(t1 / (t1 + max(0.0, tar - h)))
            print(f"| {n} | {gbps} Gb/s | {1e3 * tar:.0f} | {100 * cells[0]:.0f}% | {100 * cells[1]:.0f}% |")
