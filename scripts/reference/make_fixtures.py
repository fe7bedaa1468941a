#!/usr/bin/env python3
"""Reference values for gradguard's clipping rules, from PyTorch and Optax.

Writes crates/gradguard/tests/fixtures/reference.json, which tests/reference.rs reads.
Run it in a virtual environment outside the repository:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install numpy torch jax optax
    /tmp/refvenv/bin/python scripts/reference/make_fixtures.py

Each case holds f32 tensors (non-finite values as the strings "nan", "inf", "-inf") and, for
each rule and setting, what the reference library returned. `exact_total` is the same norm in
float64 NumPy: the test compares gradguard against it where the reference overflows in f32.
"""

import json
import math
import os
import sys

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "gradguard", "tests",
                   "fixtures", "reference.json")


def enc(x):
    """One f32 value for JSON: finite values as the shortest float that round-trips."""
    x = float(np.float32(x))
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def enc_array(a):
    return [enc(v) for v in np.asarray(a, dtype=np.float32).reshape(-1)]


def enc_scalar(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def exact_total(arrays, p):
    flat = np.concatenate([a.astype(np.float64).reshape(-1) for a in arrays]) if arrays else \
        np.zeros(0)
    if flat.size == 0:
        return 0.0
    if p == "inf":
        return float(np.max(np.abs(flat)))
    return float(np.sum(np.abs(flat) ** p) ** (1.0 / p))


def torch_clip_norm(arrays, max_norm, p):
    ts = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in arrays]
    for t, a in zip(ts, arrays):
        t.grad = torch.tensor(a, dtype=torch.float32)
    norm_type = float("inf") if p == "inf" else float(p)
    total = torch.nn.utils.clip_grad_norm_(ts, max_norm, norm_type=norm_type, foreach=False)
    return float(total), [enc_array(t.grad.numpy()) for t in ts]


def torch_clip_value(arrays, clip):
    ts = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in arrays]
    for t, a in zip(ts, arrays):
        t.grad = torch.tensor(a, dtype=torch.float32)
    torch.nn.utils.clip_grad_value_(ts, clip, foreach=False)
    return [enc_array(t.grad.numpy()) for t in ts]


def optax_apply(tx, arrays, params=None):
    updates = [jnp.asarray(a, dtype=jnp.float32) for a in arrays]
    ps = [jnp.asarray(a, dtype=jnp.float32) for a in params] if params is not None else updates
    state = tx.init(ps)
    out, _ = tx.update(updates, state, ps)
    return [enc_array(np.asarray(o)) for o in out]


def case(name, arrays, params=None):
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    c = {
        "name": name,
        "tensors": [{"name": f"t{i}", "shape": list(a.shape), "values": enc_array(a)}
                    for i, a in enumerate(arrays)],
        "torch_clip_grad_norm": [],
        "torch_clip_grad_value": [],
        "optax_clip_by_global_norm": [],
        "optax_clip": [],
        "optax_adaptive_grad_clip": [],
    }
    for p in [1, 2, 3, "inf"]:
        exact = exact_total(arrays, p)
        for max_norm in [1.0, 0.5, 1e-3, 1e6, float("inf")]:
            entry = {"max_norm": enc_scalar(max_norm), "norm_type": str(p),
                     "exact_total": enc_scalar(exact)}
            try:
                total, clipped = torch_clip_norm(arrays, max_norm, p)
                entry.update(total=enc_scalar(total), clipped=clipped)
            except RuntimeError as e:  # e.g. the inf-norm of an empty tensor
                entry["torch_error"] = str(e).splitlines()[0]
            c["torch_clip_grad_norm"].append(entry)
    for clip in [0.1, 1.0, 1e30]:
        try:
            c["torch_clip_grad_value"].append({"clip": clip,
                                               "clipped": torch_clip_value(arrays, clip)})
        except RuntimeError as e:  # e.g. an empty list of tensors
            c["torch_clip_grad_value"].append({"clip": clip,
                                               "torch_error": str(e).splitlines()[0]})
        c["optax_clip"].append({"max_delta": clip,
                                "clipped": optax_apply(optax.clip(clip), arrays)})
    for max_norm in [1.0, 0.5, 1e6]:
        c["optax_clip_by_global_norm"].append({
            "max_norm": max_norm,
            "clipped": optax_apply(optax.clip_by_global_norm(max_norm), arrays)})
    if params is not None:
        params = [np.asarray(a, dtype=np.float32) for a in params]
        c["params"] = [{"name": f"t{i}", "shape": list(a.shape), "values": enc_array(a)}
                       for i, a in enumerate(params)]
        for clipping, eps in [(0.01, 1e-3), (0.1, 1e-3), (1.0, 1e-3), (0.05, 0.5)]:
            c["optax_adaptive_grad_clip"].append({
                "clipping": clipping, "eps": eps,
                "clipped": optax_apply(optax.adaptive_grad_clip(clipping, eps), arrays, params)})
    return c


def main():
    rng = np.random.RandomState(20261129)
    normal = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    mixed = [normal(3), normal(4, 5), normal(2, 3, 4), normal(2, 2, 3, 3)]
    mixed_params = [normal(3) * 0.1, normal(4, 5) * 0.5, normal(2, 3, 4), normal(2, 2, 3, 3) * 2]
    zero_unit = normal(4, 5)
    zero_unit[:, 2] = 0.0
    zero_unit_params = normal(4, 5)
    zero_unit_params[:, 1] = 0.0
    many = [normal(int(rng.randint(1, 11))) for _ in range(300)]
    nan = normal(4, 5)
    nan[1, 3] = np.nan
    inf = normal(10)
    inf[7] = np.inf
    neginf = normal(10)
    neginf[2] = -np.inf
    cases = [
        case("mixed_shapes", mixed, mixed_params),
        case("agc_zero_units", [zero_unit, normal(5)], [zero_unit_params, normal(5) * 1e-4]),
        case("small_norm", [normal(6, 4) * 1e-3]),
        case("tiny", [np.full(8, 1e-20, np.float32), np.full(5, 3e-30, np.float32)]),
        case("zero", [np.zeros((3, 4), np.float32), np.zeros(2, np.float32)]),
        case("empty_tensor", [np.zeros(0, np.float32), normal(3)]),
        case("no_tensors", []),
        case("huge_1e19", [np.full(16, 1e19, np.float32), normal(4)]),
        case("huge_1e30", [np.full((4, 4), 1e30, np.float32), np.full(3, -2e30, np.float32)]),
        case("huge_3e38", [np.full(6, 3e38, np.float32), normal(3)]),
        case("nan", [normal(3), nan]),
        case("inf", [inf, normal(2, 2)]),
        case("neg_inf", [normal(5), neginf]),
        case("many_small_tensors", many),
        case("moderate_large", [normal(64, 32), normal(32), normal(32, 10), normal(10)],
             [normal(64, 32) * 0.2, np.zeros(32, np.float32), normal(32, 10) * 0.3,
              np.zeros(10, np.float32)]),
    ]
    doc = {
        "generated_by": "scripts/reference/make_fixtures.py",
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__,
                     "torch": torch.__version__, "jax": jax.__version__,
                     "optax": optax.__version__},
        "cases": cases,
    }
    with open(OUT + ".tmp", "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(OUT + ".tmp", OUT)
    print(f"wrote {os.path.normpath(OUT)}: {len(cases)} cases")


if __name__ == "__main__":
    main()
