"""AdaGC reference values, from the published formula (Wang et al. 2025, arXiv:2502.11034, as in
its reference implementation): a replay of gradient sets through the clipping step alone.

Writes crates/gradguard/tests/fixtures/adagc.json, which tests/adaptive.rs reads. Pure Python
(float64), no packages needed:

    python3 scripts/reference/make_adagc_fixture.py

Per step t = 1, 2, ... and tensor i (gradient g_i, EMA gamma_i):
- warm-up (t < warmup_steps): h = min(lambda_abs / (||g|| + eps), 1), ||g|| the global L2 norm;
  g_i <- h g_i; gamma_i = ||g_i|| at t = 1, else min(gamma_i, ||g_i||);
- then: h_i = min(lambda_rel * gamma_i / ||g_i||, 1); g_i <- h_i g_i;
  gamma_i <- beta gamma_i + (1 - beta) ||g_i||.
"""

import json
import math
import os
import struct

LAMBDA_ABS, LAMBDA_REL, BETA, WARMUP, EPS = 1.0, 1.05, 0.98, 5, 1e-8
STEPS = 12


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def gradients(t):
    """Two tensors whose scale drifts, with a spike in tensor 1 at step 9 and in 0 at step 11."""
    a = [math.sin(0.7 * t + k) * (1.0 + 0.1 * t) for k in range(6)]
    b = [math.cos(0.3 * t + 2 * k) * 0.5 for k in range(4)]
    if t == 9:
        b = [x * 40.0 for x in b]
    if t == 11:
        a = [x * 25.0 for x in a]
    return [a, b]


def main():
    gamma = [0.0, 0.0]
    steps = []
    for t in range(1, STEPS + 1):
        grads = gradients(t)
        # Rounded to f32 first: the Rust side clips f32 tensors.
        grads = [[struct.unpack("f", struct.pack("f", x))[0] for x in g] for g in grads]
        norms = [norm(g) for g in grads]
        if t < WARMUP:
            total = math.sqrt(sum(n * n for n in norms))
            h = min(LAMBDA_ABS / (total + EPS), 1.0)
            factors = [h, h]
            gamma = [h * n if t == 1 else min(g, h * n) for g, n in zip(gamma, norms)]
        else:
            factors = [min(LAMBDA_REL * g / n, 1.0) for g, n in zip(gamma, norms)]
            gamma = [BETA * g + (1 - BETA) * f * n for g, f, n in zip(gamma, factors, norms)]
        steps.append({
            "grads": grads,
            "clipped": [[f * x for x in g] for f, g in zip(factors, grads)],
            "gamma": list(gamma),
        })
    out = {
        "generated_by": "scripts/reference/make_adagc_fixture.py",
        "config": {"lambda_abs": LAMBDA_ABS, "lambda_rel": LAMBDA_REL, "beta": BETA,
                   "warmup_steps": WARMUP, "eps": EPS},
        "steps": steps,
    }
    path = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "gradguard", "tests",
                        "fixtures", "adagc.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
