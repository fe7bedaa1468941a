"""Dynamic loss scaling reference: a recorded sequence of overflow / no-overflow steps replayed
through PyTorch's own `torch.amp.GradScaler` (on the CPU), with the scale each step used, whether
the optimizer step was skipped, and the scale after `update()`.

Writes crates/gradguard/tests/fixtures/loss_scale.json, which tests/loss_scale.rs reads:

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch
    /tmp/refvenv/bin/python scripts/reference/make_loss_scale_fixture.py

One parameter p (SGD, lr 1) and a loss p * x: x = inf makes every scaled gradient inf (an
overflow); x = 1 gives the unscaled gradient 1, so a step that is taken moves p by exactly -1 and
a skipped one leaves it, which is how a skip is read back.
"""

import json
import os
import random

import torch


def replay(config, overflows):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    scaler = torch.amp.GradScaler(
        "cpu",
        init_scale=config["init_scale"],
        growth_factor=config["growth_factor"],
        backoff_factor=config["backoff_factor"],
        growth_interval=config["growth_interval"],
    )
    steps = []
    for overflow in overflows:
        opt.zero_grad()
        scale = scaler.get_scale()
        x = torch.tensor([float("inf") if overflow else 1.0])
        loss = (p * x).sum()
        scaler.scale(loss).backward()
        before = p.detach().clone()
        scaler.step(opt)
        scaler.update()
        skipped = bool(torch.equal(before, p.detach()))
        steps.append(
            {
                "overflow": overflow,
                "scale": scale,
                "skipped": skipped,
                "next_scale": scaler.get_scale(),
            }
        )
    return steps


def main():
    rng = random.Random(7)
    short = {"init_scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3}
    short_flags = [rng.random() < 0.2 for _ in range(80)]
    defaults = {"init_scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    # Two growths (steps 2000 and 4000 of an unbroken streak), overflows around them.
    long_flags = [False] * 4500
    for i in (5, 6, 2100, 4490):
        long_flags[i] = True
    other = {"init_scale": 8.0, "growth_factor": 3.0, "backoff_factor": 0.25, "growth_interval": 5}
    other_flags = [rng.random() < 0.3 for _ in range(60)]
    out = {
        "torch": torch.__version__,
        "cases": [
            {"config": c, "steps": replay(c, f)}
            for c, f in ((short, short_flags), (defaults, long_flags), (other, other_flags))
        ],
    }
    path = os.path.join(
        os.path.dirname(__file__), "..", "..", "crates", "gradguard", "tests", "fixtures",
        "loss_scale.json",
    )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, path)
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
