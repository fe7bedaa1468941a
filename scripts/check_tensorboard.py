#!/usr/bin/env python3
"""Reads gradguard's TensorBoard event files with TensorBoard's own EventAccumulator.

    python scripts/check_tensorboard.py RUN_DIR EXPECTED_JSON

EXPECTED_JSON is a list of {"step", "loss", "grad_norm", "lr", "skipped"} objects (null for a
value that was not finite and so not written), each with an optional "tags" object of further
scalar tags and their values (a language model's "log_z/mean", "attention_logit_max/layer0"). Exits non-zero, saying what differs, if the
scalars TensorBoard reads are not those.
"""

import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    run_dir, expected = sys.argv[1], json.loads(sys.argv[2])
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for needed in ["loss", "grad_norm/before", "grad_norm/after", "lr", "skipped",
                   "tensor_norm/layers.0.weight"]:
        if needed not in tags:
            sys.exit(f"missing tag {needed}; found {sorted(tags)}")
    series = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in tags}
    for row in expected:
        step = row["step"]
        checks = [(row[key], tag) for key, tag in
                  [("loss", "loss"), ("grad_norm", "grad_norm/before"), ("lr", "lr")]]
        checks += [(want, tag) for tag, want in row.get("tags", {}).items()]
        for want, tag in checks:
            if tag not in series:
                sys.exit(f"missing tag {tag}; found {sorted(tags)}")
            got = series[tag].get(step)
            if want is None:
                if got is not None:
                    sys.exit(f"step {step}: {tag} should be absent, found {got}")
                continue
            if got is None or not math.isclose(got, want, rel_tol=1e-6):
                sys.exit(f"step {step}: {tag} is {got}, expected {want}")
        if series["skipped"][step] != (1.0 if row["skipped"] else 0.0):
            sys.exit(f"step {step}: skipped is {series['skipped'][step]}")
    print(f"TensorBoard read {len(expected)} steps and {len(tags)} scalar tags: all match")


if __name__ == "__main__":
    main()
