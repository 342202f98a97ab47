//! The U-Net's building blocks, line for line with `ddpm_ref.py`.

use ddpm_autograd::{Result, Var};
use rand::Rng;

use crate::layers::{dropout, Conv2d, GroupNorm, Linear, Mode};
use crate::{Module, NamedParams};

/// A residual block conditioned on the time embedding:
///     h = conv1(silu(norm1(x))) + temb_proj(silu(temb))[:, :, None, None]
///     h = conv2(dropout(silu(norm2(h))))
///     out = skip(x) + h          (skip is a 1x1 conv when channels change)
pub struct ResBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub temb_proj: Linear,
    pub norm2: GroupNorm,
    pub dropout: f32,
    pub conv2: Conv2d,
    pub skip: Option<Conv2d>,
}

impl ResBlock {
    pub fn new(cin: usize, cout: usize, temb: usize, groups: usize, dropout: f32, rng: &mut impl Rng) -> ResBlock {
        ResBlock {
            norm1: GroupNorm::new(groups, cin),
            conv1: Conv2d::new(cin, cout, 3, 1, 1, rng),
            temb_proj: Linear::new(temb, cout, rng),
            norm2: GroupNorm::new(groups, cout),
            dropout,
            conv2: Conv2d::new(cout, cout, 3, 1, 1, rng),
            skip: (cin != cout).then(|| Conv2d::new(cin, cout, 1, 1, 0, rng)),
        }
    }

    /// x [N, Cin, H, W], temb [N, TEMB] -> [N, Cout, H, W].
    pub fn forward(&self, x: &Var, temb: &Var, mode: &mut Mode) -> Result<Var> {
        // h = conv1(silu(norm1(x))) + temb_proj(silu(temb)) [N, Cout] broadcast
        // over the positions: the add happens as conv1 writes h.
        let t = self.temb_proj.forward(&temb.silu()?)?;
        let h = self.conv1.forward_add(&self.norm1.forward_silu(x)?, Some(&t), None)?;
        let h = dropout(&self.norm2.forward_silu(&h)?, self.dropout, mode)?;
        // skip(x) + conv2(h), the sum again made as conv2 writes its output.
        let skip = match &self.skip {
            Some(skip) => skip.forward(x)?,
            None => x.clone(),
        };
        self.conv2.forward_add(&h, None, Some(&skip))
    }
}

impl Module for ResBlock {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        self.norm1.visit_params(&format!("{prefix}norm1."), out);
        self.conv1.visit_params(&format!("{prefix}conv1."), out);
        self.temb_proj.visit_params(&format!("{prefix}temb_proj."), out);
        self.norm2.visit_params(&format!("{prefix}norm2."), out);
        self.conv2.visit_params(&format!("{prefix}conv2."), out);
        if let Some(skip) = &self.skip {
            skip.visit_params(&format!("{prefix}skip."), out);
        }
    }
}

/// Single-head self-attention over the H*W positions:
///     q, k, v = split(qkv(norm(x)))             each [N, C, HW]
///     att = softmax(q^T k / sqrt(C))            [N, HW, HW], row i: how much position i looks at each j
///     out = x + proj(v att^T)
pub struct AttnBlock {
    pub norm: GroupNorm,
    pub qkv: Conv2d,
    pub proj: Conv2d,
}

impl AttnBlock {
    pub fn new(ch: usize, groups: usize, rng: &mut impl Rng) -> AttnBlock {
        AttnBlock {
            norm: GroupNorm::new(groups, ch),
            qkv: Conv2d::new(ch, 3 * ch, 1, 1, 0, rng),
            proj: Conv2d::new(ch, ch, 1, 1, 0, rng),
        }
    }

    /// [N, C, H, W] -> [N, C, H, W].
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let [n, c, h, w] = x.dims()[..] else { unreachable!("checked by the convolutions") };
        let qkv = self.qkv.forward(&self.norm.forward(x)?)?.reshape([n, 3 * c, h * w])?;
        let (q, k, v) = (qkv.narrow(1, 0, c)?, qkv.narrow(1, c, c)?, qkv.narrow(1, 2 * c, c)?);
        // q^T k without copying q: [N, HW, C] x [N, C, HW] -> [N, HW, HW].
        let att = q.matmul_tn(&k)?.scale(1.0 / (c as f32).sqrt())?.softmax()?;
        // v att^T: [N, C, HW] x [N, HW, HW]^T -> [N, C, HW].
        let out = v.matmul_nt(&att)?.reshape([n, c, h, w])?;
        self.proj.forward_add(&out, None, Some(x))
    }
}

impl Module for AttnBlock {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        self.norm.visit_params(&format!("{prefix}norm."), out);
        self.qkv.visit_params(&format!("{prefix}qkv."), out);
        self.proj.visit_params(&format!("{prefix}proj."), out);
    }
}

/// Halves H and W with a 3x3 convolution of stride 2.
pub struct Downsample {
    pub conv: Conv2d,
}

impl Downsample {
    pub fn new(ch: usize, rng: &mut impl Rng) -> Downsample {
        Downsample { conv: Conv2d::new(ch, ch, 3, 2, 1, rng) }
    }

    /// [N, C, H, W] -> [N, C, ceil(H/2), ceil(W/2)].
    pub fn forward(&self, x: &Var) -> Result<Var> {
        self.conv.forward(x)
    }
}

/// Doubles H and W: nearest-neighbour upsampling, then a 3x3 convolution.
pub struct Upsample {
    pub conv: Conv2d,
}

impl Upsample {
    pub fn new(ch: usize, rng: &mut impl Rng) -> Upsample {
        Upsample { conv: Conv2d::new(ch, ch, 3, 1, 1, rng) }
    }

    /// [N, C, H, W] -> [N, C, 2H, 2W].
    pub fn forward(&self, x: &Var) -> Result<Var> {
        self.conv.forward(&x.upsample_nearest2x()?)
    }
}

impl Module for Downsample {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        self.conv.visit_params(&format!("{prefix}conv."), out);
    }
}

impl Module for Upsample {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        self.conv.visit_params(&format!("{prefix}conv."), out);
    }
}
