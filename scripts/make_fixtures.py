"""Write the PyTorch parity fixtures that the Rust tests compare against.

Run:  python scripts/make_fixtures.py [--out tests/fixtures]

Every file is a safetensors file of float32 tensors (integer inputs such as
class labels, timesteps and embedding indices are stored as float32 too, and
the Rust side casts them back). Every fixture is deterministic: each one seeds
its own torch.Generator, so regenerating one file never changes another.
Rerunning gives identical tensors and metadata; the bytes may still differ,
because safetensors writes the metadata map in hash order.

Gradient convention. A fixture that checks a backward pass holds a random
upstream gradient `d_out` with the shape of the output; the scalar loss is

    L = sum(out * d_out)        so that dL/d(out) = d_out,

and `d_x`, `d_weight`, ... (for layers) or `grad.<key>` (for modules) are
dL/d(input) and dL/d(parameter). Module fixtures store parameters as
`param.<state_dict key>`.

Model definitions, the schedule and the samplers come from ddpm_ref.py in this
folder, a verbatim copy of the project's executable specification.

The `unet_small_c0` fixture stores no parameters. They are set by a formula
that the Rust test reproduces (see `sin_init`):

    walk model.named_parameters() in order (= state_dict() order, there are
    no buffers); keep one global counter i = 0, 1, 2, ... over all elements,
    parameter after parameter, each parameter in row-major order;
        v_i = scale * sin(0.7 * i + 0.3)        computed in float64,
    then cast to float32, where scale = 1 / sqrt(fan_in) for a tensor of rank
    >= 2 (fan_in = product of its shape after the first axis, PyTorch's own
    scale for conv and linear weights) and 0.1 for a rank-1 tensor (biases,
    GroupNorm scales and shifts); GroupNorm weights (keys ending in
    `norm1.weight`, `norm2.weight`, `norm.weight`, `out_norm.weight`) get
    1.0 + v_i instead (also computed in float64, then cast).

    The scales matter: with uniformly tiny weights (0.02) every GroupNorm
    divides near-constant groups, and the network's gradients become so
    ill-conditioned that PyTorch's own float32 result is 2e-3 away from its
    float64 result, hiding any difference smaller than that.

The parameter order is also written to that file's metadata ("param_order",
comma-separated keys) because safetensors sorts tensors by name.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddpm_ref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures")


def gen(seed):
    """Each fixture draws from its own generator (and pins the global one too)."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, scale=1.0):
    return torch.randn(shape, generator=g, dtype=torch.float32) * scale


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


class Writer:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.total = 0

    def save(self, name, tensors, metadata=None):
        tensors = {k: f32(v) for k, v in tensors.items()}
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        path = os.path.join(self.out_dir, name)
        save_file(tensors, path, metadata=meta or None)
        os.chmod(path, 0o644)  # safetensors creates files 0600
        size = os.path.getsize(path)
        self.total += size
        listed = {k: v for k, v in tensors.items() if not k.startswith(("param.", "grad."))}
        shapes = (", ".join(f"{k}{list(v.shape)}" for k, v in listed.items()) if len(listed) <= 16
                  else f"{len(listed)} tensors, {sum(v.numel() for v in listed.values())} values")
        n_param = sum(k.startswith("param.") for k in tensors)
        n_grad = sum(k.startswith("grad.") for k in tensors)
        extra = f" +{n_param} param.* +{n_grad} grad.*" if n_param or n_grad else ""
        short = {k: v for k, v in meta.items() if len(v) < 40}
        long_keys = [k for k, v in meta.items() if len(v) >= 40]
        meta_s = (f" meta={short}" if short else "") + (f" (+meta {','.join(long_keys)})" if long_keys else "")
        print(f"{name:38s} {size / 1024:9.1f} KiB  {shapes}{extra}{meta_s}")


def backward_with(out, g):
    """Random upstream gradient d_out; L = sum(out * d_out)."""
    d_out = randn(g, *out.shape)
    (out * d_out).sum().backward()
    return d_out


# ------------------------------------------------------------------ layers


def conv_fixture(w, name, seed, x_shape, w_shape, stride, padding):
    g = gen(seed)
    x, weight, bias = leaf(randn(g, *x_shape)), leaf(randn(g, *w_shape, scale=0.5)), leaf(randn(g, w_shape[0]))
    out = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    d_out = backward_with(out, g)
    w.save(name, dict(x=x, weight=weight, bias=bias, d_out=d_out, out=out,
                      d_x=x.grad, d_weight=weight.grad, d_bias=bias.grad),
           dict(stride=stride, padding=padding))


def layer_fixtures(w):
    conv_fixture(w, "conv2d_k3_s1_p1.safetensors", 101, (2, 3, 7, 6), (4, 3, 3, 3), 1, 1)
    conv_fixture(w, "conv2d_k3_s2_p1.safetensors", 102, (2, 3, 7, 6), (4, 3, 3, 3), 2, 1)
    conv_fixture(w, "conv2d_k1_s1_p0.safetensors", 103, (2, 4, 5, 5), (6, 4, 1, 1), 1, 0)

    # GroupNorm: biased variance over (C/G, H, W) per (n, g), then affine per channel.
    g = gen(104)
    x = leaf(randn(g, 2, 8, 5, 4, scale=2.0) + 0.5)
    weight, bias = leaf(1.0 + randn(g, 8, scale=0.5)), leaf(randn(g, 8, scale=0.5))
    out = F.group_norm(x, 4, weight, bias, eps=1e-5)
    d_out = backward_with(out, g)
    w.save("group_norm.safetensors", dict(x=x, weight=weight, bias=bias, d_out=d_out, out=out,
                                          d_x=x.grad, d_weight=weight.grad, d_bias=bias.grad),
           dict(groups=4, eps="1e-5"))

    # Linear: out = x W^T + b.
    g = gen(105)
    x, weight, bias = leaf(randn(g, 3, 5)), leaf(randn(g, 4, 5)), leaf(randn(g, 4))
    out = F.linear(x, weight, bias)
    d_out = backward_with(out, g)
    w.save("linear.safetensors", dict(x=x, weight=weight, bias=bias, d_out=d_out, out=out,
                                      d_x=x.grad, d_weight=weight.grad, d_bias=bias.grad))

    g = gen(106)
    x = leaf(randn(g, 3, 7, scale=3.0))
    out = F.silu(x)
    d_out = backward_with(out, g)
    w.save("silu.safetensors", dict(x=x, d_out=d_out, out=out, d_x=x.grad))

    g = gen(107)
    x = leaf(randn(g, 2, 3, 4, 4))
    out = F.interpolate(x, scale_factor=2, mode="nearest")
    d_out = backward_with(out, g)
    w.save("upsample.safetensors", dict(x=x, d_out=d_out, out=out, d_x=x.grad), dict(scale=2, mode="nearest"))

    # Embedding with a repeated index: the rows' gradients must accumulate.
    g = gen(108)
    weight = leaf(randn(g, 11, 6))
    idx = torch.tensor([0, 3, 3, 10, 7], dtype=torch.long)
    out = F.embedding(idx, weight)
    d_out = backward_with(out, g)
    w.save("embedding.safetensors", dict(weight=weight, idx=idx.float(), d_out=d_out, out=out,
                                         d_weight=weight.grad))

    t = torch.tensor([0, 1, 17, 500, 998, 999], dtype=torch.float32)
    out = ddpm_ref.timestep_embedding(t, 16)
    w.save("timestep_embedding.safetensors", dict(t=t, out=out), dict(dim=16))

    g = gen(110)
    x = leaf(randn(g, 2, 5, 7, scale=2.0))
    out = torch.softmax(x, dim=-1)
    d_out = backward_with(out, g)
    w.save("softmax.safetensors", dict(x=x, d_out=d_out, out=out, d_x=x.grad), dict(dim=-1))


# ----------------------------------------------------------------- modules


@torch.no_grad()
def perturb(module, g, scale):
    """Move every parameter away from PyTorch's init (GroupNorm's 1/0 included)."""
    for p in module.parameters():
        p.add_(randn(g, *p.shape, scale=scale))


@torch.no_grad()
def sin_init(model):
    """The closed-form parameters of `unet_small_c0` (see the module docstring)."""
    i = 0
    norm_suffixes = ("norm1.weight", "norm2.weight", "norm.weight", "out_norm.weight")
    for name, p in model.named_parameters():
        n = p.numel()
        idx = np.arange(i, i + n, dtype=np.float64)
        scale = 1.0 / np.sqrt(np.prod(p.shape[1:])) if p.dim() >= 2 else 0.1
        v = scale * np.sin(0.7 * idx + 0.3)
        if name.endswith(norm_suffixes):
            v = 1.0 + v
        p.copy_(torch.from_numpy(v.astype(np.float32)).reshape(p.shape))
        i += n
    return i


def module_tensors(module, with_params=True):
    out = {}
    for k, p in module.named_parameters():
        if with_params:
            out[f"param.{k}"] = p
        out[f"grad.{k}"] = p.grad
    return out


def module_fixtures(w):
    g = gen(201)
    blk = ddpm_ref.AttnBlock(8, groups=4)
    perturb(blk, g, 0.3)
    x = leaf(randn(g, 2, 8, 3, 3))
    out = blk(x)
    d_out = backward_with(out, g)
    w.save("attn_block.safetensors", dict(x=x, d_out=d_out, out=out, d_x=x.grad, **module_tensors(blk)),
           dict(channels=8, groups=4))

    g = gen(202)
    blk = ddpm_ref.ResBlock(8, 16, temb=12, groups=4, dropout=0.0)
    perturb(blk, g, 0.2)
    x, temb = leaf(randn(g, 2, 8, 4, 4)), leaf(randn(g, 2, 12))
    out = blk(x, temb)
    d_out = backward_with(out, g)
    w.save("res_block.safetensors",
           dict(x=x, temb=temb, d_out=d_out, out=out, d_x=x.grad, d_temb=temb.grad, **module_tensors(blk)),
           dict(cin=8, cout=16, temb=12, groups=4))

    # The whole tiny class-conditional U-Net, one label being the null label 10.
    g = gen(203)
    model = ddpm_ref.UNet("tiny", 10).eval()
    perturb(model, g, 0.05)
    x = leaf(randn(g, 2, 1, 28, 28))
    t = torch.tensor([5.0, 730.0])
    y = torch.tensor([3.0, 10.0])
    out = model(x, t.long(), y.long())
    d_out = backward_with(out, g)
    w.save("unet_tiny_c10.safetensors",
           dict(x=x, t=t, y=y, d_out=d_out, out=out, d_x=x.grad, **module_tensors(model)),
           dict(preset="tiny", num_classes=10, param_order=",".join(k for k, _ in model.named_parameters())))

    # The small unconditional U-Net with formula weights (not stored). Its
    # expected values are computed in float64, the exact answer up to float64
    # rounding; metadata "torch_f32_err" records, per tensor, how far
    # PyTorch's own float32 computation lands from it (max error / max
    # magnitude), so the Rust test can ask to be as close as PyTorch is.
    g = gen(204)
    x = randn(g, 1, 1, 28, 28)
    t = torch.tensor([421.0])
    d_out = randn(g, 1, 1, 28, 28)
    runs = {}
    for dtype in (torch.float32, torch.float64):
        model = ddpm_ref.UNet("small", 0).eval()
        n = sin_init(model)
        assert n == 3939393, n
        model = model.to(dtype)
        xd = x.detach().to(dtype).clone().requires_grad_(True)
        # The reference embeds timesteps in float32; carry that into float64.
        emb = ddpm_ref.timestep_embedding
        ddpm_ref.timestep_embedding = lambda t_, dim: emb(t_, dim).to(dtype)
        try:
            out = model(xd, t.long())
        finally:
            ddpm_ref.timestep_embedding = emb
        (out * d_out.to(dtype)).sum().backward()
        runs[dtype] = dict(out=out.detach(), d_x=xd.grad,
                           **{f"grad.{k}": p.grad for k, p in model.named_parameters()})
    exact, f32 = runs[torch.float64], runs[torch.float32]
    rel = lambda a, b: ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    missing = [(k, d) for d, r in runs.items() for k, v in r.items() if v is None]
    assert not missing, missing
    torch_err = {k: f"{rel(f32[k], v):.3e}" for k, v in exact.items()}
    import json
    w.save("unet_small_c0.safetensors",
           dict(x=x, t=t, d_out=d_out, **{k: v.float() for k, v in exact.items()}),
           dict(preset="small", num_classes=0,
                init="v_i = scale*sin(0.7*i+0.3) (f64->f32), scale = 1/sqrt(fan_in) for rank>=2 else 0.1, GroupNorm weights 1+v_i",
                expected="computed in float64", torch_f32_err=json.dumps(torch_err),
                param_order=",".join(k for k, _ in model.named_parameters())))


# --------------------------------------------------------------- optimizer


def adam_fixture(w):
    g = gen(301)
    p0 = randn(g, 4, 3)
    g1, g2 = randn(g, 4, 3), randn(g, 4, 3, scale=0.1)
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    snaps = []
    for grad in (g1, g2):
        p.grad = grad.clone()
        opt.step()
        snaps.append(p.detach().clone())

    # clip_grad_norm_: one global L2 norm over all gradients; coef = max_norm / (norm + 1e-6), clamped to 1.
    clip_g = randn(g, 10, scale=2.0)
    pg = torch.nn.Parameter(torch.zeros(10))
    pg.grad = clip_g.clone()
    norm_g = torch.nn.utils.clip_grad_norm_([pg], max_norm=1.0)
    clip_a, clip_b = randn(g, 3, 4), randn(g, 5, scale=0.5)
    pa, pb = torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))
    pa.grad, pb.grad = clip_a.clone(), clip_b.clone()
    norm_ab = torch.nn.utils.clip_grad_norm_([pa, pb], max_norm=1.0)
    assert norm_g > 1 and norm_ab > 1
    w.save("adam.safetensors",
           dict(p0=p0, g1=g1, g2=g2, p1=snaps[0], p2=snaps[1],
                clip_g=clip_g, clip_out=pg.grad, clip_a=clip_a, clip_b=clip_b,
                clip_a_out=pa.grad, clip_b_out=pb.grad),
           dict(lr="1e-3", beta1="0.9", beta2="0.999", eps="1e-8", weight_decay="0", max_norm="1.0",
                clip_g_norm=f"{norm_g.item():.9g}", clip_ab_norm=f"{norm_ab.item():.9g}"))


# ------------------------------------------------------ checkpoint, sampler


def checkpoint_model():
    g = gen(401)
    model = ddpm_ref.UNet("tiny", 10).eval()
    perturb(model, g, 0.05)
    return model


@torch.no_grad()
def ddim_unclamped(model, sched, x_T, steps, y, guidance):
    """ddpm_ref.sample_ddim (eta = 0) line for line, minus the final clamp.

    With random weights the trajectory leaves [-1, 1] (|x| ~ 60 at the end), so
    the clamped output is ~99% +-1 and would hide almost any bug; the raw
    values check every step. main() asserts clamp(raw) == sample_ddim's output.
    """
    x = x_T.clone()
    ts = ddpm_ref.ddim_timesteps(sched.T, steps)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        eps = model(x, tt, y)
        if guidance and y is not None:
            eps = (1 + guidance) * eps - guidance * model(x, tt, None)
        z = torch.zeros_like(x)
        x = sched.ddim_step(x.double(), t, t_prev, eps.double(), z.double(), 0.0).float()
    return x


def checkpoint_fixtures(w):
    model = checkpoint_model()
    # Interchange format: names = state_dict keys, nothing else.
    w.save("checkpoint_tiny_c10.safetensors", dict(model.state_dict()),
           dict(preset="tiny", num_classes="10", schedule="linear", timesteps="1000"))

    g = gen(402)
    x = randn(g, 2, 1, 28, 28)
    t = torch.tensor([0.0, 999.0])
    y = torch.tensor([7.0, 10.0])
    with torch.no_grad():
        out = model(x, t.long(), y.long())
    w.save("checkpoint_tiny_c10_expect.safetensors", dict(x=x, t=t, y=y, out=out))

    sched = ddpm_ref.Schedule("linear", 1000)
    g = gen(403)
    x_T = randn(g, 4, 1, 28, 28)
    y = torch.tensor([0, 3, 7, 10])
    out = ddpm_ref.sample_ddim(model, sched, x_T, 10, y=y, eta=0.0, guidance=0.0)
    out_guided = ddpm_ref.sample_ddim(model, sched, x_T, 10, y=y, eta=0.0, guidance=2.0)
    out_raw = ddim_unclamped(model, sched, x_T, 10, y, 0.0)
    out_guided_raw = ddim_unclamped(model, sched, x_T, 10, y, 2.0)
    assert torch.equal(out_raw.clamp(-1, 1), out) and torch.equal(out_guided_raw.clamp(-1, 1), out_guided)
    w.save("ddim_tiny_c10.safetensors", dict(x_T=x_T, y=y.float(), out=out, out_guided=out_guided,
                                             out_raw=out_raw, out_guided_raw=out_guided_raw),
           dict(checkpoint="checkpoint_tiny_c10.safetensors", schedule="linear", timesteps=1000,
                steps=10, eta="0.0", guidance_out="0.0", guidance_out_guided="2.0",
                raw="out*_raw: the same trajectory before the final clamp"))
    for k, v in (("out", out), ("out_guided", out_guided)):
        frac = (v.abs() >= 1).float().mean().item()
        print(f"    ddim {k}: {100 * frac:.1f}% of pixels at the clamp (hence the *_raw tensors)")


def schedule_fixtures(w):
    tensors = {}
    for kind in ("linear", "cosine"):
        s = ddpm_ref.Schedule(kind, 1000)
        tensors[f"{kind}.betas"] = s.betas
        tensors[f"{kind}.alphas_cumprod"] = s.alphas_cumprod
        tensors[f"{kind}.posterior_var"] = s.posterior_var
    w.save("schedule.safetensors", tensors, dict(timesteps=1000, note="computed in f64, stored f32"))

    s = ddpm_ref.Schedule("linear", 1000)
    g = gen(501)
    x, eps_hat, z = randn(g, 2, 1, 4, 4), randn(g, 2, 1, 4, 4), randn(g, 2, 1, 4, 4)
    outs = {f"out_t{t}": s.ddpm_step(x, t, eps_hat, z) for t in (0, 1, 500, 999)}
    w.save("ddpm_step.safetensors", dict(x=x, eps_hat=eps_hat, z=z, **outs),
           dict(schedule="linear", timesteps=1000))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.manual_seed(0)  # nothing below should use the global generator; this pins it anyway
    torch.set_num_threads(1)  # the same reduction order on every machine
    w = Writer(args.out)
    layer_fixtures(w)
    module_fixtures(w)
    adam_fixture(w)
    checkpoint_fixtures(w)
    schedule_fixtures(w)
    print(f"total {w.total / 2**20:.2f} MiB in {args.out}")


if __name__ == "__main__":
    main()
