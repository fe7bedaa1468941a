#!/usr/bin/env python3
"""AGC on every rank, in both layouts, and on a broken (NaN) weight: reference values from Optax
(input-first: `unitwise_norm` reduces axes 0-3 of a rank-5 kernel) and timm (output-first:
`adaptive_clip_grad` reduces every axis but the first, at any rank).

Writes crates/gradguard/tests/fixtures/agc_layouts.json, which tests/reference.rs reads:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install numpy torch jax optax timm
    /tmp/refvenv/bin/python scripts/reference/make_agc_layouts_fixture.py

Values are f32, non-finite ones as the strings "nan", "inf", "-inf" (as in reference.json).
"""

import json
import os

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from timm.utils.agc import adaptive_clip_grad  # noqa: E402

from make_fixtures import enc  # noqa: E402  (the same f32 encoding as reference.json)

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "gradguard", "tests",
                   "fixtures", "agc_layouts.json")


def tensor(name, a):
    a = np.asarray(a, dtype=np.float32)
    return {"name": name, "shape": list(a.shape), "values": [enc(v) for v in a.reshape(-1)]}


def optax_agc(grads, params, clipping, eps):
    tx = optax.adaptive_grad_clip(clipping, eps)
    g = {k: jnp.asarray(v) for k, v in grads.items()}
    p = {k: jnp.asarray(v) for k, v in params.items()}
    out, _ = tx.update(g, tx.init(p), p)
    return {k: np.asarray(v) for k, v in out.items()}


def timm_agc(grads, params, clipping, eps):
    out = {}
    for k in grads:
        p = torch.nn.Parameter(torch.from_numpy(params[k].copy()))
        p.grad = torch.from_numpy(grads[k].copy())
        adaptive_clip_grad([p], clip_factor=clipping, eps=eps)
        out[k] = p.grad.numpy()
    return out


def main():
    rng = np.random.default_rng(11)
    cases = []
    # A 3-D convolution: Optax/JAX kernels are DHWIO (input-first), PyTorch/timm OIDHW.
    shapes = {
        "input-first": {"conv3d.kernel": (2, 3, 3, 4, 5), "conv3d.bias": (5,),
                        "conv2d.kernel": (3, 3, 4, 6), "dense.kernel": (7, 3)},
        "output-first": {"conv3d.weight": (5, 4, 2, 3, 3), "conv3d.bias": (5,),
                         "conv2d.weight": (6, 4, 3, 3), "dense.weight": (3, 7)},
    }
    for layout, tensors in shapes.items():
        params = {k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in tensors.items()}
        grads = {k: (rng.normal(0, 1, s) * 10 ** rng.uniform(-3, 1, s)).astype(np.float32)
                 for k, s in tensors.items()}
        for clipping, eps in ((0.01, 1e-3), (0.1, 1e-3), (1.0, 1e-2)):
            ref = optax_agc if layout == "input-first" else timm_agc
            out = ref(grads, params, clipping, eps)
            cases.append({
                "name": f"{layout} ranks 1-5, clipping {clipping}",
                "layout": layout,
                "reference": "optax.adaptive_grad_clip" if layout == "input-first"
                else "timm.utils.agc.adaptive_clip_grad",
                "clipping": clipping,
                "eps": eps,
                "grads": [tensor(k, v) for k, v in grads.items()],
                "params": [tensor(k, v) for k, v in params.items()],
                "clipped": [tensor(k, out[k]) for k in grads],
            })
    # A NaN weight: Optax propagates it into that unit's clipped gradient; gradguard names it.
    params = {"conv3d.kernel": rng.normal(0, 0.05, (2, 3, 3, 4, 5)).astype(np.float32)}
    params["conv3d.kernel"][1, 2, 0, 3, 2] = np.nan
    grads = {"conv3d.kernel": rng.normal(0, 1, (2, 3, 3, 4, 5)).astype(np.float32)}
    out = optax_agc(grads, params, 0.01, 1e-3)
    cases.append({
        "name": "input-first NaN weight",
        "layout": "input-first",
        "reference": "optax.adaptive_grad_clip",
        "clipping": 0.01,
        "eps": 1e-3,
        "grads": [tensor(k, v) for k, v in grads.items()],
        "params": [tensor(k, v) for k, v in params.items()],
        "clipped": [tensor(k, out[k]) for k in grads],
        "nan_unit": 2,
    })
    doc = {"versions": {"optax": optax.__version__, "timm": timm.__version__,
                        "torch": torch.__version__}, "cases": cases}
    tmp = OUT + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, OUT)
    print("wrote", os.path.normpath(OUT), len(cases), "cases")


if __name__ == "__main__":
    main()
