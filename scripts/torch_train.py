"""Trains the reference U-Net in PyTorch the way `cargo xtask train` trains it
in Rust, for the same wall-clock budget, and writes the EMA weights in the
interchange format: the "same budget in PyTorch" row of the README.

    python scripts/torch_train.py --minutes 15 --data-dir ../shared/data/mnist --out runs/torch-tiny-c10
    python scripts/torch_train.py --steps 4190 ...     # the same number of steps instead

Same recipe as crates/ddpm/src/train.rs: batch 64, Adam (lr 1e-3, linear
warm-up over 200 steps), gradient norm clipped at 1, EMA with decay
min(0.999, (1 + n) / (10 + n)), 10% of labels replaced by the null class,
the linear schedule with T = 1000, the loss `ddpm_ref.train_loss`. Writes
OUT/model.safetensors and OUT/log.jsonl.
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddpm_ref  # noqa: E402


def read_idx(path):
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    magic, count = struct.unpack(">II", raw[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", raw[8:16])
        data = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8)
        return data.reshape(count, 1, rows, cols)
    if magic == 0x801:
        return torch.frombuffer(bytearray(raw[8:]), dtype=torch.uint8).long()
    sys.exit(f"{path}: not an IDX file (magic {magic:#x})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps instead (overrides --minutes)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    images = read_idx(os.path.join(a.data_dir, "train-images-idx3-ubyte.gz")).float() / 127.5 - 1
    labels = read_idx(os.path.join(a.data_dir, "train-labels-idx1-ubyte.gz"))
    model = ddpm_ref.UNet(a.preset, a.classes)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sched = ddpm_ref.Schedule("linear", 1000)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "log.jsonl"), "w")

    step, start = 0, time.time()
    budget = a.minutes * 60

    def done():
        return step >= a.steps if a.steps is not None else time.time() - start >= budget

    while not done():
        perm = torch.randperm(len(images))
        for i in range(0, len(images) - a.batch + 1, a.batch):
            idx = perm[i:i + a.batch]
            x0, y = images[idx], labels[idx] if a.classes else None
            if y is not None:
                y = torch.where(torch.rand(len(y)) < 0.1, torch.full_like(y, a.classes), y)
            for g in opt.param_groups:
                g["lr"] = a.lr * min(1.0, (step + 1) / a.warmup)
            model.train()
            loss = ddpm_ref.train_loss(model, sched, x0, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            d = min(a.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].mul_(d).add_(v, alpha=1 - d)
            step += 1
            log.write(json.dumps(dict(step=step, loss=loss.item(), elapsed_s=round(time.time() - start, 2))) + "\n")
            if step % 500 == 0:
                print(f"step {step}: loss {loss.item():.4f}, {step * a.batch / (time.time() - start):.0f} images/s",
                      flush=True)
            if done():
                break
    secs = time.time() - start
    meta = dict(preset=a.preset, num_classes=str(a.classes), schedule="linear", timesteps="1000")
    save_file({k: v.contiguous() for k, v in ema.items()}, os.path.join(a.out, "model.safetensors"), meta)
    print(f"trained {step} steps in {secs / 60:.1f} min ({step * a.batch / secs:.0f} images/s); "
          f"wrote {a.out}/model.safetensors")


if __name__ == "__main__":
    main()
