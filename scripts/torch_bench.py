"""Time PyTorch on this machine, for the side-by-side with the Rust benches.

    python scripts/torch_bench.py matmul                        [--device cpu|cuda] [--json FILE]
    python scripts/torch_bench.py conv2d                        [--device cpu|cuda] [--batch 64]
    python scripts/torch_bench.py train  --preset tiny --batch 64 [--classes 10] [--seconds 20 | --steps N]
    python scripts/torch_bench.py sample --preset small --batch 64 --steps 50 [--classes 10 --guidance 2]

matmul: GFLOP/s (2*M*K*N / seconds) of torch.matmul on f32 [M,K] @ [K,N] at the
    U-Net's GEMM shapes, the same list as the Rust bench; median of timed runs
    after a warm-up.
conv2d: GFLOP/s of F.conv2d (cuDNN on the GPU, oneDNN on the CPU) and of its
    input and weight gradients, at the shapes of benches/conv2d.rs (batch 64).
train:  images/s of one training step = ddpm_ref.train_loss (random t, closed-form
    x_t, MSE on the noise) forward + backward + torch.optim.Adam step, model in
    train() mode (dropout on for `small`), x0 uniform in [-1, 1].
sample: denoising evaluations per second (batch * steps / seconds) of
    ddpm_ref.sample_ddim (eta = 0): one model forward per step (two with
    guidance, still counted once, as the Rust side does), under torch.no_grad
    in eval() mode.

Results go to stdout as a markdown table and as one JSON line (also to --json
FILE). train and sample end with the line `images/s: <number>`, like
`cargo xtask bench`. The thread count is PyTorch's default unless --threads.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddpm_ref  # noqa: E402

# (M, K, N) of the U-Net's convolutions as GEMMs (im2col: M = Cout, K = Cin*3*3,
# N = batch*H*W at batch 64), plus an attention-like product and two generic ones.
MATMUL_SHAPES = [
    (16, 9, 50176),
    (16, 144, 50176),
    (32, 288, 12544),
    (32, 288, 3136),
    (64, 576, 3136),
    (128, 1152, 3136),
    (256, 2304, 784),
    (3136, 64, 3136),  # attention-like: [hw, c] @ [c, hw]
    (64, 128, 512),
    (512, 512, 512),
]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_runs(fn, device, min_seconds, min_runs=5, warmup=3):
    """Seconds per call: warm-up, then timed calls until min_seconds and min_runs; median."""
    for _ in range(warmup):
        fn()
    sync(device)
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def header(device):
    info = dict(torch=torch.__version__, threads=torch.get_num_threads(), device=str(device),
                machine=platform.processor() or platform.machine(), cpus=os.cpu_count())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["loadavg"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        pass
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    return info


def bench_matmul(args, device):
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for m, k, n in MATMUL_SHAPES:
        a = torch.randn((m, k), generator=g, device=device)
        b = torch.randn((k, n), generator=g, device=device)
        sec, runs = time_runs(lambda: torch.matmul(a, b), device, args.min_seconds)
        gflops = 2.0 * m * k * n / sec / 1e9
        rows.append(dict(m=m, k=k, n=n, ms=sec * 1e3, gflops=gflops, runs=runs))
    print()
    print("| M | K | N | ms (median) | GFLOP/s | runs |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['m']} | {r['k']} | {r['n']} | {r['ms']:.3f} | {r['gflops']:.1f} | {r['runs']} |")
    return dict(bench="matmul", rows=rows)


# (C, K, H = W, kernel, stride, padding, name): the shapes of benches/conv2d.rs.
CONV_SHAPES = [
    (16, 16, 28, 3, 1, 1, "tiny 16->16 3x3 @28x28"),
    (32, 32, 14, 3, 1, 1, "tiny 32->32 3x3 @14x14"),
    (32, 32, 7, 3, 1, 1, "tiny 32->32 3x3 @7x7"),
    (16, 16, 28, 3, 2, 1, "tiny downsample 16->16 3x3 stride 2 @28->14"),
    (1, 16, 28, 3, 1, 1, "stem 1->16 3x3 @28x28"),
    (32, 96, 7, 1, 1, 0, "attention qkv 32->96 1x1 @7x7"),
    (32, 32, 28, 3, 1, 1, "small 32->32 3x3 @28x28"),
    (64, 64, 14, 3, 1, 1, "small 64->64 3x3 @14x14"),
    (128, 128, 7, 3, 1, 1, "small 128->128 3x3 @7x7"),
    (128, 384, 7, 1, 1, 0, "small attention qkv 128->384 1x1 @7x7"),
]


def bench_conv2d(args, device):
    import torch.nn.functional as F
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for c, k, hw, r, stride, pad, name in CONV_SHAPES:
        x = torch.randn((args.batch, c, hw, hw), generator=g, device=device)
        w = torch.randn((k, c, r, r), generator=g, device=device)
        y = F.conv2d(x, w, stride=stride, padding=pad)
        dy = torch.randn(y.shape, generator=g, device=device)
        flops = 2.0 * y.numel() * c * r * r
        row = dict(shape=name)
        for what, fn in [
            ("forward", lambda: F.conv2d(x, w, stride=stride, padding=pad)),
            ("d_input", lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, stride=stride, padding=pad)),
            ("d_weight", lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=stride, padding=pad)),
        ]:
            sec, _ = time_runs(fn, device, args.min_seconds)
            row[what] = flops / sec / 1e9
        rows.append(row)
    print()
    print("| shape | forward | d_input | d_weight |")
    print("|---|--:|--:|--:|")
    for r in rows:
        print(f"| {r['shape']} | {r['forward']:.0f} | {r['d_input']:.0f} | {r['d_weight']:.0f} |")
    return dict(bench="conv2d", rows=rows)


def make_labels(args, n, g, device):
    """Random digits, 10% of them the null label (as in classifier-free guidance training)."""
    if not args.classes:
        return None
    y = torch.randint(0, args.classes, (n,), generator=g, device=device)
    drop = torch.rand((n,), generator=g, device=device) < 0.1
    return torch.where(drop, torch.full_like(y, args.classes), y)


def bench_train(args, device):
    torch.manual_seed(args.seed)
    g = torch.Generator(device=device).manual_seed(args.seed)
    model = ddpm_ref.UNet(args.preset, args.classes).to(device).train()
    sched = ddpm_ref.Schedule(args.schedule, 1000)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x0 = torch.rand((args.batch, 1, 28, 28), generator=g, device=device) * 2 - 1
    y = make_labels(args, args.batch, g, device)

    def step():
        # train_loss draws t and eps from the default generator, on the default device.
        loss = ddpm_ref.train_loss(model, sched, x0, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    sync(device)
    times, start = [], time.perf_counter()
    while True:
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - t0)
        if args.steps and len(times) >= args.steps:
            break
        if not args.steps and time.perf_counter() - start >= args.seconds and len(times) >= 3:
            break
    total = sum(times)
    ips = args.batch * len(times) / total
    params = sum(p.numel() for p in model.parameters())
    res = dict(bench="train", preset=args.preset, classes=args.classes, batch=args.batch, params=params,
               steps=len(times), seconds=total, ms_per_step_median=statistics.median(times) * 1e3,
               images_per_s=ips, last_loss=loss.item())
    print()
    print("| preset | classes | params | batch | steps | s | ms/step (median) | images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.preset} | {args.classes} | {params} | {args.batch} | {len(times)} | {total:.1f} "
          f"| {res['ms_per_step_median']:.1f} | {ips:.1f} |")
    return res


def bench_sample(args, device):
    torch.manual_seed(args.seed)
    g = torch.Generator(device=device).manual_seed(args.seed)
    model = ddpm_ref.UNet(args.preset, args.classes).to(device).eval()
    sched = ddpm_ref.Schedule(args.schedule, 1000)
    x_T = torch.randn((args.batch, 1, 28, 28), generator=g, device=device)
    y = make_labels(args, args.batch, g, device)
    guidance = args.guidance if args.classes else 0.0

    def run():
        return ddpm_ref.sample_ddim(model, sched, x_T, args.steps, y=y, eta=0.0, guidance=guidance)

    with torch.no_grad():
        run()  # warm-up (also at the full step count: shapes are fixed)
        sync(device)
        times = []
        start = time.perf_counter()
        while not times or (time.perf_counter() - start < args.seconds and len(times) < args.repeats):
            t0 = time.perf_counter()
            run()
            sync(device)
            times.append(time.perf_counter() - t0)
    total = sum(times)
    evals = args.batch * args.steps * len(times)
    ips = evals / total
    res = dict(bench="sample", preset=args.preset, classes=args.classes, batch=args.batch, steps=args.steps,
               guidance=guidance, runs=len(times), seconds=total, images_per_s=ips)
    print()
    print("| preset | classes | batch | steps | guidance | runs | s | images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.preset} | {args.classes} | {args.batch} | {args.steps} | {guidance} | {len(times)} "
          f"| {total:.1f} | {ips:.1f} |")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", choices=["matmul", "conv2d", "train", "sample"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    ap.add_argument("--json", metavar="FILE", help="also write the JSON result to FILE")
    ap.add_argument("--preset", default="tiny", choices=sorted(ddpm_ref.PRESETS))
    ap.add_argument("--classes", type=int, default=0, choices=[0, 10])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=0,
                    help="train: timed steps (0: run for --seconds); sample: DDIM steps (default 50)")
    ap.add_argument("--seconds", type=float, default=20.0, help="minimum timed seconds for train/sample")
    ap.add_argument("--repeats", type=int, default=1000, help="sample: most timed sampler runs")
    ap.add_argument("--warmup", type=int, default=3, help="train: untimed steps first")
    ap.add_argument("--min-seconds", type=float, default=0.5, help="matmul: timed seconds per shape")
    ap.add_argument("--guidance", type=float, default=0.0, help="sample: classifier-free guidance weight")
    ap.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda asked for, but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    # ddpm_ref builds its tensors (schedule, t, eps, labels) on the default device.
    torch.set_default_device(device)
    if args.bench == "sample" and not args.steps:
        args.steps = 50

    info = header(device)
    res = dict(matmul=bench_matmul, conv2d=bench_conv2d, train=bench_train, sample=bench_sample)[args.bench](args, device)
    res.update(info)
    line = json.dumps(res)
    print()
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    if "images_per_s" in res:
        print(f"images/s: {res['images_per_s']:.1f}")


if __name__ == "__main__":
    main()
