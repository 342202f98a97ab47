//! The noise predictor eps_theta(x_t, t[, y]) for 1x28x28 images: the
//! reference's `UNet`, with the same module tree, so that every parameter has
//! the reference's `state_dict()` name.

mod blocks;
mod preset;

pub use blocks::{AttnBlock, Downsample, ResBlock, Upsample};
pub use preset::{Preset, PresetConfig};

use ddpm_autograd::{Result, TensorError, Var};
use rand::Rng;

use crate::layers::{timestep_embedding, Conv2d, Embedding, GroupNorm, Linear, Mode};
use crate::{Module, NamedParams};

/// One entry of the down or up path, in the reference's `ModuleList` order.
pub enum Block {
    Res(ResBlock),
    Attn(AttnBlock),
    Down(Downsample),
    Up(Upsample),
}

impl Module for Block {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        match self {
            Block::Res(b) => b.visit_params(prefix, out),
            Block::Attn(b) => b.visit_params(prefix, out),
            Block::Down(b) => b.visit_params(prefix, out),
            Block::Up(b) => b.visit_params(prefix, out),
        }
    }
}

/// The noise predictor f(x_t, t, y).
///
/// ```
/// use ddpm_autograd::{no_grad, Tensor, Var};
/// use ddpm_nn::layers::Mode;
/// use ddpm_nn::{Module, Preset, UNet};
/// use rand::{rngs::StdRng, SeedableRng};
///
/// let model = UNet::new(Preset::Tiny, 10, &mut StdRng::seed_from_u64(0));
/// assert_eq!(model.num_params(), 280_881);
/// // eps_theta(x_t, t, y) for two images at t = 10 and 900, asked for digits 3 and 7
/// // (`model.to_device(device)` first, and the x_t there, to run on a GPU).
/// let x_t = Var::constant(Tensor::randn([2, 1, 28, 28], &mut StdRng::seed_from_u64(1)));
/// let eps = no_grad(|| model.forward(&x_t, &[10, 900], Some(&[3, 7]), &mut Mode::Eval))?;
/// assert_eq!(eps.dims(), vec![2, 1, 28, 28]);
/// # Ok::<(), ddpm_autograd::TensorError>(())
/// ```
pub struct UNet {
    pub preset: Preset,
    pub num_classes: usize,
    pub base: usize,
    /// Linear(base, 4 base), SiLU, Linear(4 base, 4 base): names time_mlp.0 and time_mlp.2.
    pub time_mlp: (Linear, Linear),
    /// num_classes + 1 rows: the last is "no label", for classifier-free guidance.
    pub class_emb: Option<Embedding>,
    pub stem: Conv2d,
    pub down: Vec<Block>,
    pub mid: (ResBlock, AttnBlock, ResBlock),
    pub up: Vec<Block>,
    pub out_norm: GroupNorm,
    pub out_conv: Conv2d,
}

impl UNet {
    /// A freshly initialised U-Net (PyTorch's default initialisation).
    pub fn new(preset: Preset, num_classes: usize, rng: &mut impl Rng) -> UNet {
        let p = preset.config();
        let (base, groups, drop) = (p.base, p.groups, p.dropout);
        let temb = 4 * base;
        let time_mlp = (Linear::new(base, temb, rng), Linear::new(temb, temb, rng));
        let class_emb = (num_classes > 0).then(|| Embedding::new(num_classes + 1, temb, rng));
        let stem = Conv2d::new(1, base, 3, 1, 1, rng);

        // The down path remembers each output's channels for the skip connections.
        let (mut down, mut skips, mut ch, mut res) = (vec![], vec![base], base, 28);
        for (i, &m) in p.mults.iter().enumerate() {
            for _ in 0..p.res_blocks {
                down.push(Block::Res(ResBlock::new(ch, base * m, temb, groups, drop, rng)));
                ch = base * m;
                if p.attn_res.contains(&res) {
                    down.push(Block::Attn(AttnBlock::new(ch, groups, rng)));
                }
                skips.push(ch);
            }
            if i != p.mults.len() - 1 {
                down.push(Block::Down(Downsample::new(ch, rng)));
                skips.push(ch);
                res /= 2;
            }
        }

        let mid = (
            ResBlock::new(ch, ch, temb, groups, drop, rng),
            AttnBlock::new(ch, groups, rng),
            ResBlock::new(ch, ch, temb, groups, drop, rng),
        );

        // The up path takes one skip per ResBlock (res_blocks + 1 per level).
        let mut up = vec![];
        for (i, &m) in p.mults.iter().enumerate().rev() {
            for _ in 0..p.res_blocks + 1 {
                let skip = skips.pop().expect("one skip per up ResBlock");
                up.push(Block::Res(ResBlock::new(ch + skip, base * m, temb, groups, drop, rng)));
                ch = base * m;
                if p.attn_res.contains(&res) {
                    up.push(Block::Attn(AttnBlock::new(ch, groups, rng)));
                }
            }
            if i != 0 {
                up.push(Block::Up(Upsample::new(ch, rng)));
                res *= 2;
            }
        }

        UNet {
            preset,
            num_classes,
            base,
            time_mlp,
            class_emb,
            stem,
            down,
            mid,
            up,
            out_norm: GroupNorm::new(groups, ch),
            out_conv: Conv2d::new(ch, 1, 3, 1, 1, rng),
        }
    }

    /// eps_theta(x_t, t, y): the predicted noise, [N, 1, 28, 28].
    /// `y` holds class labels (num_classes means "no label"); `None` is "no label" for all.
    pub fn forward(&self, x: &Var, t: &[usize], y: Option<&[usize]>, mode: &mut Mode) -> Result<Var> {
        let n = x.dims()[0];
        if t.len() != n {
            return Err(TensorError::invalid("unet", format!("{} timesteps for a batch of {n}", t.len())));
        }
        // t's sinusoidal embedding is made on the host, then goes where x is.
        let temb = Var::constant(timestep_embedding(t, self.base)?.to(x.value().device())?);
        let mut emb = self.time_mlp.1.forward(&self.time_mlp.0.forward(&temb)?.silu()?)?;
        if let Some(class_emb) = &self.class_emb {
            let labels = match y {
                Some(y) if y.len() == n => y.to_vec(),
                Some(y) => return Err(TensorError::invalid("unet", format!("{} labels for a batch of {n}", y.len()))),
                None => vec![self.num_classes; n],
            };
            emb = emb.add(&class_emb.forward(&labels)?)?;
        }

        let mut h = self.stem.forward(x)?;
        let mut hs = vec![h.clone()];
        for blk in &self.down {
            h = match blk {
                Block::Res(b) => b.forward(&h, &emb, mode)?,
                Block::Attn(b) => b.forward(&h)?,
                Block::Down(b) => b.forward(&h)?,
                Block::Up(_) => unreachable!("no upsampling on the way down"),
            };
            match blk {
                // Attention refines the skip that its ResBlock pushed.
                Block::Attn(_) => *hs.last_mut().expect("a ResBlock came first") = h.clone(),
                _ => hs.push(h.clone()),
            }
        }
        h = self.mid.0.forward(&h, &emb, mode)?;
        h = self.mid.1.forward(&h)?;
        h = self.mid.2.forward(&h, &emb, mode)?;
        for blk in &self.up {
            h = match blk {
                Block::Res(b) => {
                    let skip = hs.pop().expect("one skip per up ResBlock");
                    b.forward(&Var::concat(&[&h, &skip], 1)?, &emb, mode)?
                }
                Block::Attn(b) => b.forward(&h)?,
                Block::Up(b) => b.forward(&h)?,
                Block::Down(_) => unreachable!("no downsampling on the way up"),
            };
        }
        self.out_conv.forward(&self.out_norm.forward_silu(&h)?)
    }
}

impl Module for UNet {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        self.time_mlp.0.visit_params(&format!("{prefix}time_mlp.0."), out);
        self.time_mlp.1.visit_params(&format!("{prefix}time_mlp.2."), out);
        if let Some(e) = &self.class_emb {
            e.visit_params(&format!("{prefix}class_emb."), out);
        }
        self.stem.visit_params(&format!("{prefix}stem."), out);
        for (i, b) in self.down.iter().enumerate() {
            b.visit_params(&format!("{prefix}down.{i}."), out);
        }
        self.mid.0.visit_params(&format!("{prefix}mid.0."), out);
        self.mid.1.visit_params(&format!("{prefix}mid.1."), out);
        self.mid.2.visit_params(&format!("{prefix}mid.2."), out);
        for (i, b) in self.up.iter().enumerate() {
            b.visit_params(&format!("{prefix}up.{i}."), out);
        }
        self.out_norm.visit_params(&format!("{prefix}out_norm."), out);
        self.out_conv.visit_params(&format!("{prefix}out_conv."), out);
    }
}
