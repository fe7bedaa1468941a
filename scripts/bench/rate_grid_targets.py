#!/usr/bin/env python3
"""The transformer issue's targets for the default guard, checked per cell of rate-grid sweeps.

For each configuration and seed of a sweep with methods `none`, `clip-global` and `guard` over a
rate axis: the best plain rate is the rate of plain's lowest final loss; at that rate and every
smaller one the guard must end within 1% (+0.005) of the plain run at the same rate (bit for bit
counted apart); at every rate above it, up to 30x, the guard must not fail and must end within
3% (+0.01) of the best plain run. LR sensitivity (mean over seeds) of the guard must be at most
half of plain's and of the clip's. Usage: rate_grid_targets.py SWEEP_DIR [SWEEP_DIR ...]
"""
import json
import sys
from collections import defaultdict


def cell_key(config):
    skip = {"lr", "remedies", "seed"}
    return json.dumps({k: v for k, v in config.items() if k not in skip}, sort_keys=True)


def method(summary):
    r = summary["remedy"]
    return "clip" if r.startswith("clip-global") else r


def check(sweep_dir):
    data = json.load(open(f"{sweep_dir}/sweep.json"))
    cells = defaultdict(lambda: defaultdict(dict))  # (config, seed) -> method -> lr -> summary
    for run in data["runs"]:
        s = run["summary"]
        cells[(cell_key(s["config"]), s["config"]["seed"])][method(s)][s["config"]["lr"]] = s
    low = [0, 0, 0]  # cells, within, bit for bit
    high = [0, 0]
    worst_low, worst_high = (0.0, None), (0.0, None)
    for (config, seed), by in sorted(cells.items()):
        plain, guard = by.get("none", {}), by.get("guard", {})
        if not plain or not guard:
            continue
        finite = {lr: s["final_loss"] for lr, s in plain.items()
                  if s["final_loss"] is not None and not s["diverged"]}
        best_lr = min(finite, key=finite.get)
        best = finite[best_lr]
        for lr, g in sorted(guard.items()):
            p = plain.get(lr)
            gl = g["final_loss"]
            if lr <= best_lr:
                low[0] += 1
                pl = p["final_loss"]
                ok = gl is not None and pl is not None and gl <= pl * 1.01 + 0.005
                low[1] += ok
                low[2] += gl == pl
                excess = (gl or float("inf")) / pl - 1
                if excess > worst_low[0]:
                    worst_low = (excess, f"seed {seed} lr {lr}: {gl} vs {pl}")
            elif lr <= 30 * best_lr * 1.001:
                high[0] += 1
                failed = gl is None or g["diverged"] or g.get("stopped")
                ok = not failed and gl <= best * 1.03 + 0.01
                high[1] += ok
                excess = (gl or float("inf")) / best - 1
                if excess > worst_high[0]:
                    worst_high = (excess, f"seed {seed} lr {lr}: {gl} vs best {best} at {best_lr}")
    print(f"== {sweep_dir}")
    print(f"at or below the best plain rate: {low[1]} of {low[0]} cells within 1% (+0.005), "
          f"{low[2]} bit for bit; worst {100 * worst_low[0]:+.1f}% ({worst_low[1]})")
    print(f"above it, up to 30x: {high[1]} of {high[0]} within 3% (+0.01) of the best plain run; "
          f"worst {100 * worst_high[0]:+.1f}% ({worst_high[1]})")
    sens = defaultdict(dict)
    for c in data.get("rate_curves", []):
        m = "clip" if c["remedy"].startswith("clip-global") else c["remedy"]
        sens[c["config"]][m] = c["sensitivity"]
    for config, by in sens.items():
        if "guard" in by and "none" in by:
            line = f"LR sensitivity: guard {by['guard']:.3f}, plain {by['none']:.3f} " \
                   f"({by['guard'] / by['none']:.2f}x)"
            if "clip" in by:
                line += f", clip {by['clip']:.3f} ({by['guard'] / by['clip']:.2f}x)"
            print(line)


for d in sys.argv[1:]:
    check(d)
