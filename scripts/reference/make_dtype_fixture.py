#!/usr/bin/env python3
"""Clipping gradients stored in f64, f16 and bf16: reference values from PyTorch computing in the
tensors' own dtype (`clip_grad_norm_` with p = 2, 1, inf and `clip_grad_value_`).

Writes crates/gradguard/tests/fixtures/dtypes.json, which tests/dtypes.rs reads:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install numpy torch
    /tmp/refvenv/bin/python scripts/reference/make_dtype_fixture.py

Every value is stored as its exact bit pattern (hex of the IEEE encoding in that dtype), so f64
values keep all their digits and f16/bf16 values are the very values PyTorch produced.
"""

import json
import os

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "gradguard", "tests",
                   "fixtures", "dtypes.json")

DTYPES = {"F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16}
BITS = {"F64": (torch.int64, 16), "F16": (torch.int16, 4), "BF16": (torch.int16, 4)}


def bits(t, name):
    """The IEEE bit patterns of tensor `t` in dtype `name`, as hex strings."""
    int_type, width = BITS[name]
    raw = t.detach().contiguous().view(int_type).reshape(-1).tolist()
    mask = (1 << (4 * width)) - 1
    return [format(v & mask, f"0{width}x") for v in raw]


def tensors(rng, name):
    dtype = DTYPES[name]
    shapes = [(4, 3), (5,), (2, 2, 3)]
    out = []
    for i, shape in enumerate(shapes):
        # Magnitudes over several decades; values not representable in f32 for F64.
        a = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 2, size=shape)
        if name == "F64":
            a = a * (1.0 + 2.0 ** -40)
        out.append((f"t{i}", torch.tensor(a, dtype=torch.float64).to(dtype)))
    return out


def with_grads(ts):
    params = []
    for _, t in ts:
        p = torch.zeros_like(t, requires_grad=True)
        p.grad = t.clone()
        params.append(p)
    return params


def main():
    rng = np.random.RandomState(20261130)
    cases = []
    for name in DTYPES:
        ts = tensors(rng, name)
        case = {
            "dtype": name,
            "tensors": [{"name": n, "shape": list(t.shape), "bits": bits(t, name)}
                        for n, t in ts],
            "clip_grad_norm": [],
            "clip_grad_value": [],
        }
        for p in ["2", "1", "inf"]:
            for max_norm in [1.0, 0.05]:
                params = with_grads(ts)
                total = torch.nn.utils.clip_grad_norm_(
                    params, max_norm, norm_type=float(p), foreach=False)
                case["clip_grad_norm"].append({
                    "norm_type": p, "max_norm": max_norm,
                    "total": float(total),
                    "clipped": [bits(q.grad, name) for q in params],
                })
        for clip in [0.5, 0.01]:
            params = with_grads(ts)
            torch.nn.utils.clip_grad_value_(params, clip, foreach=False)
            case["clip_grad_value"].append({
                "clip": clip, "clipped": [bits(q.grad, name) for q in params]})
        cases.append(case)
    doc = {"generator": f"torch {torch.__version__}", "cases": cases}
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}: {len(cases)} dtypes")


if __name__ == "__main__":
    main()
