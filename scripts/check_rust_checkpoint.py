"""Loads a checkpoint written by the Rust side into the PyTorch reference and
checks that the reference computes the same noise prediction as Rust did.

    python scripts/check_rust_checkpoint.py MODEL.safetensors EXPECT.safetensors

EXPECT holds x, t, y (as float32) and `out`, the Rust model's output on them.
Exits non-zero with a message on any mismatch: a tensor name or shape the
reference does not know (load_state_dict is strict), wrong metadata, or an
output more than 1e-4 (relative to its scale) away.
"""
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddpm_ref  # noqa: E402


def main(model_path, expect_path):
    with safe_open(model_path, "pt") as f:
        meta = f.metadata() or {}
    for key in ("preset", "num_classes", "schedule", "timesteps"):
        if key not in meta:
            sys.exit(f"{model_path}: metadata has no {key!r}")
    model = ddpm_ref.UNet(meta["preset"], int(meta["num_classes"])).eval()
    model.load_state_dict(load_file(model_path), strict=True)
    e = load_file(expect_path)
    with torch.no_grad():
        out = model(e["x"], e["t"].long(), e["y"].long() if "y" in e else None)
    err = ((out - e["out"]).abs().max() / e["out"].abs().max()).item()
    print(f"PyTorch reproduces the Rust output: relative error {err:.2e}")
    if err > 1e-4:
        sys.exit(f"mismatch: relative error {err:.2e} > 1e-4")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
