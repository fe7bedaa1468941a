#!/usr/bin/env python3
"""PyTorch's clip_grad_norm_ on the sets of gradguard's throughput benchmark, for comparison.

    /tmp/refvenv/bin/python scripts/bench/torch_clip.py            # after installing torch
    cargo bench -p gradguard --bench throughput                      # gradguard, same sets

Runs clip_grad_norm_(foreach=True) with 2 threads on 1M floats in 1 tensor, 10M in 1, 10M in
1000 and 100M in 200, clipping to half the current norm each iteration (as the Rust benchmark
does; PyTorch multiplies every time anyway), and prints GB/s (1e9 gradient bytes per second).
If criterion's results are in target/criterion, it prints gradguard's figure and the speed-up.
"""

import json
import os
import statistics
import time

import torch

SETS = [("1M_in_1", 1, 1_000_000), ("10M_in_1", 1, 10_000_000),
        ("10M_in_1000", 1000, 10_000), ("100M_in_200", 200, 500_000)]
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def gradguard_gbs(name, nbytes):
    path = os.path.join(ROOT, "target", "criterion", name, "global_norm_clip", "new",
                        "estimates.json")
    try:
        with open(path) as f:
            return nbytes / json.load(f)["mean"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None


def main():
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'set':<14} {'torch GB/s':>10} {'gradguard GB/s':>15} {'speed-up':>9}")
    for name, tensors, per_tensor in SETS:
        gen = torch.Generator().manual_seed(0)
        params = []
        for _ in range(tensors):
            p = torch.zeros(per_tensor, requires_grad=True)
            p.grad = (torch.rand(per_tensor, generator=gen) - 0.5) * 1e-2
            params.append(p)
        nbytes = tensors * per_tensor * 4
        start_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        norm = start_norm
        times = []
        deadline = time.perf_counter() + 3.0
        while time.perf_counter() < deadline or len(times) < 10:
            if norm < start_norm / 2**32:
                with torch.no_grad():
                    for p in params:
                        p.grad.mul_(2.0**32)
                norm *= 2.0**32
            t = time.perf_counter()
            total = torch.nn.utils.clip_grad_norm_(params, norm * 0.5, foreach=True)
            times.append(time.perf_counter() - t)
            norm = float(total) * 0.5
        gbs = nbytes / statistics.median(times) / 1e9
        ours = gradguard_gbs(name, nbytes)
        ours_text = f"{ours:15.1f} {ours / gbs:8.2f}x" if ours else f"{'-':>15} {'-':>9}"
        print(f"{name:<14} {gbs:10.1f} {ours_text}")
        del params


if __name__ == "__main__":
    main()
