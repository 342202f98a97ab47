"""Samples a checkpoint with the PyTorch reference sampler and records the
result as a fixture the Rust sampler must reproduce.

    python scripts/sample_checkpoint.py MODEL.safetensors OUT.safetensors [grid.png]

MODEL is a `model.safetensors` in the interchange format, written by
`cargo xtask train` (a Rust-trained model: does it sample the same in
PyTorch?) or by scripts/torch_train.py (a PyTorch-trained one: does it sample
the same in Rust?). The script loads it strictly into `ddpm_ref.UNet`, draws
x_T with a fixed torch generator, asks for digits 0-9 twice, and runs
`ddpm_ref.sample_ddim` (20 steps, eta 0) with and without guidance 1.0. OUT
holds x_T, y, and both results before and after the final clamp
(`crates/ddpm/tests/reference.rs` reruns them in Rust). With a third argument
it also saves the guided samples as a PNG grid (needs numpy only), to look at.
"""
import os
import sys
import zlib
import struct

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddpm_ref  # noqa: E402
from make_fixtures import ddim_unclamped  # noqa: E402

STEPS = 20
GUIDANCE = 1.0


def write_grid_png(path, images, cols):
    """images: [N, 1, 28, 28] in [-1, 1] -> a grayscale PNG grid (no gaps)."""
    n = images.shape[0]
    rows = (n + cols - 1) // cols
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0]
    canvas = torch.zeros(rows * 28, cols * 28, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28] = pixels[i]
    raw = b"".join(b"\x00" + bytes(row.tolist()) for row in canvas)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", canvas.shape[1], canvas.shape[0], 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main(model_path, out_path, png_path=None):
    with safe_open(model_path, "pt") as f:
        meta = f.metadata() or {}
    model = ddpm_ref.UNet(meta["preset"], int(meta["num_classes"])).eval()
    model.load_state_dict(load_file(model_path), strict=True)
    sched = ddpm_ref.Schedule(meta["schedule"], int(meta["timesteps"]))

    g = torch.Generator().manual_seed(2024)
    x_T = torch.randn((20, 1, 28, 28), generator=g)
    y = torch.arange(20) % 10
    out = ddpm_ref.sample_ddim(model, sched, x_T, STEPS, y=y, eta=0.0, guidance=0.0)
    out_guided = ddpm_ref.sample_ddim(model, sched, x_T, STEPS, y=y, eta=0.0, guidance=GUIDANCE)
    out_raw = ddim_unclamped(model, sched, x_T, STEPS, y, 0.0)
    out_guided_raw = ddim_unclamped(model, sched, x_T, STEPS, y, GUIDANCE)
    assert torch.equal(out_raw.clamp(-1, 1), out) and torch.equal(out_guided_raw.clamp(-1, 1), out_guided)
    save_file(dict(x_T=x_T, y=y.float(), out=out, out_guided=out_guided, out_raw=out_raw,
                   out_guided_raw=out_guided_raw),
              out_path,
              dict(checkpoint=os.path.basename(model_path), steps=str(STEPS), eta="0.0",
                   guidance_out="0.0", guidance_out_guided=str(GUIDANCE), sampler="ddpm_ref.sample_ddim"))
    print(f"wrote {out_path}: 20 samples, DDIM {STEPS} steps, guidance 0 and {GUIDANCE}")
    if png_path:
        write_grid_png(png_path, out_guided, 10)
        print(f"wrote {png_path}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
