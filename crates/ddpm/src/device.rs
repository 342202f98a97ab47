//! The U-Net's forward pass and the sampling loop on a device: the GPU, or
//! in the tests the CPU emulation of the same kernels.
//!
//! [`DeviceUNet`] follows `ddpm_nn::UNet::forward` (the spec) layer by layer
//! with the ops of `ddpm_cuda::DeviceOps`; the weights are uploaded once and
//! every activation stays on the device. Per step of [`run_on_device`] the
//! host sends only what depends on t (the sinusoidal embedding, [N, base])
//! and receives nothing until the end: the guidance and the update with its
//! Philox noise are one fused kernel.

use std::collections::HashMap;
use std::rc::Rc;

use ddpm_autograd::{Result, Tensor, TensorError, Var};
use ddpm_cuda::launch::ConvShape;
use ddpm_cuda::{ConvKernel, CudaError, DeviceOps, MatmulShape, NormShape, Step};
use ddpm_nn::layers::{timestep_embedding, Conv2d, GroupNorm, Linear};
use ddpm_nn::unet::{AttnBlock, Block, ResBlock};
use ddpm_nn::{Module, UNet};

use crate::sampler::{self, ddim_update, ddpm_update, Conditioning, Method};
use crate::Schedule;

fn device_error(e: CudaError) -> TensorError {
    TensorError::invalid("device", e.to_string())
}

/// An activation on the device: [n, c, h, w] for the batch of the pass.
struct Act<B> {
    buf: Rc<B>,
    c: usize,
    h: usize,
    w: usize,
}

impl<B> Clone for Act<B> {
    fn clone(&self) -> Self {
        Act { buf: Rc::clone(&self.buf), c: self.c, h: self.h, w: self.w }
    }
}

/// A U-Net whose weights live on the device of `E`.
pub struct DeviceUNet<'m, E: DeviceOps> {
    model: &'m UNet,
    params: HashMap<usize, E::Buf>,
}

impl<'m, E: DeviceOps> DeviceUNet<'m, E> {
    /// Uploads every parameter of `model`.
    pub fn upload(e: &E, model: &'m UNet) -> Result<Self> {
        let mut params = HashMap::new();
        for (_, var) in model.named_params() {
            params.insert(var.id(), e.upload(var.value().as_slice()).map_err(device_error)?);
        }
        Ok(DeviceUNet { model, params })
    }

    pub fn model(&self) -> &UNet {
        self.model
    }

    fn p(&self, v: &Var) -> &E::Buf {
        &self.params[&v.id()]
    }

    /// The noise estimate for x [n, 1, 28, 28] (on the device) at timesteps
    /// `t`, conditioned on `y` as `UNet::forward` is; in eval mode.
    pub fn forward(&self, e: &E, x: &E::Buf, n: usize, t: &[usize], y: Option<&[usize]>) -> Result<E::Buf> {
        self.forward_inner(e, x, n, t, y).map_err(device_error)
    }

    fn forward_inner(
        &self,
        e: &E,
        x: &E::Buf,
        n: usize,
        t: &[usize],
        y: Option<&[usize]>,
    ) -> std::result::Result<E::Buf, CudaError> {
        let m = self.model;
        let invalid = |message: String| CudaError::Invalid { op: "unet", message };
        if t.len() != n || e.len(x) != n * 28 * 28 {
            return Err(invalid(format!("{} timesteps and {} pixels for a batch of {n}", t.len(), e.len(x))));
        }
        let temb = timestep_embedding(t, m.base).map_err(|e| invalid(e.to_string()))?;
        let hidden = e.silu(&self.linear(e, &m.time_mlp.0, &e.upload(temb.as_slice())?, n)?)?;
        let mut emb = self.linear(e, &m.time_mlp.1, &hidden, n)?;
        if let Some(class_emb) = &m.class_emb {
            let labels = match y {
                Some(y) if y.len() == n => y.to_vec(),
                Some(y) => return Err(invalid(format!("{} labels for a batch of {n}", y.len()))),
                None => vec![m.num_classes; n],
            };
            // The rows of the table are gathered on the host (like t's
            // embedding, they depend only on the inputs) and added on the device.
            let rows = class_emb.weight.value().index_select_rows(&labels).map_err(|e| invalid(e.to_string()))?;
            e.add_assign(&mut emb, &e.upload(rows.as_slice())?)?;
        }
        // Every ResBlock projects silu(emb): computed once.
        let emb_silu = e.silu(&emb)?;

        let mut h = self.conv(e, &m.stem, x, (28, 28), n)?;
        let mut hs = vec![h.clone()];
        for blk in &m.down {
            h = match blk {
                Block::Res(b) => self.res_block(e, b, &h, &emb_silu, n)?,
                Block::Attn(b) => self.attn_block(e, b, &h, n)?,
                Block::Down(b) => self.conv(e, &b.conv, &h.buf, (h.h, h.w), n)?,
                Block::Up(_) => unreachable!("no upsampling on the way down"),
            };
            match blk {
                Block::Attn(_) => *hs.last_mut().expect("a ResBlock came first") = h.clone(),
                _ => hs.push(h.clone()),
            }
        }
        h = self.res_block(e, &m.mid.0, &h, &emb_silu, n)?;
        h = self.attn_block(e, &m.mid.1, &h, n)?;
        h = self.res_block(e, &m.mid.2, &h, &emb_silu, n)?;
        for blk in &m.up {
            h = match blk {
                Block::Res(b) => {
                    let skip = hs.pop().expect("one skip per up ResBlock");
                    let hw = h.h * h.w;
                    let cat = e.concat2(&h.buf, &skip.buf, n, h.c * hw, skip.c * hw)?;
                    let cat = Act { buf: Rc::new(cat), c: h.c + skip.c, h: h.h, w: h.w };
                    self.res_block(e, b, &cat, &emb_silu, n)?
                }
                Block::Attn(b) => self.attn_block(e, b, &h, n)?,
                Block::Up(b) => {
                    let up = e.upsample2x(&h.buf, n * h.c, h.h, h.w)?;
                    self.conv(e, &b.conv, &up, (2 * h.h, 2 * h.w), n)?
                }
                Block::Down(_) => unreachable!("no downsampling on the way up"),
            };
        }
        let out = self.norm(e, &m.out_norm, &h, n, true)?;
        let out = self.conv(e, &m.out_conv, &out.buf, (h.h, h.w), n)?;
        Ok(Rc::try_unwrap(out.buf).unwrap_or_else(|_| unreachable!("the output has one owner")))
    }

    /// x [rows, in] W^T + b.
    fn linear(&self, e: &E, l: &Linear, x: &E::Buf, rows: usize) -> std::result::Result<E::Buf, CudaError> {
        let [out, inp] = l.weight.dims()[..] else { unreachable!("a linear weight is [out, in]") };
        let s = MatmulShape { transpose_b: true, ..MatmulShape::new(1, rows, out, inp) };
        e.matmul(&s, (x, 0), (self.p(&l.weight), 0), Some(self.p(&l.bias)), 1.0)
    }

    /// conv(x) for x [n, C, h, w] (C from the weight).
    fn conv(
        &self,
        e: &E,
        conv: &Conv2d,
        x: &E::Buf,
        (h, w): (usize, usize),
        n: usize,
    ) -> std::result::Result<Act<E::Buf>, CudaError> {
        let [k, c, r, s] = conv.weight.dims()[..] else { unreachable!("a conv weight is [K, C, R, S]") };
        let g = ConvShape { n, c, h, w, k, r, s, stride: conv.params.stride, pad: conv.params.padding };
        let y = e.conv2d_forward(ConvKernel::Tiled, &g, x, self.p(&conv.weight), Some(self.p(&conv.bias)))?;
        Ok(Act { buf: Rc::new(y), c: k, h: g.ho(), w: g.wo() })
    }

    fn norm(
        &self,
        e: &E,
        gn: &GroupNorm,
        x: &Act<E::Buf>,
        n: usize,
        silu: bool,
    ) -> std::result::Result<Act<E::Buf>, CudaError> {
        let g = NormShape { n, c: x.c, hw: x.h * x.w, groups: gn.groups, silu };
        let (y, _, _) = e.group_norm_forward(&g, &x.buf, self.p(&gn.weight), self.p(&gn.bias), GroupNorm::EPS)?;
        Ok(Act { buf: Rc::new(y), ..x.clone() })
    }

    /// ResBlock::forward in eval mode (dropout is the identity).
    fn res_block(
        &self,
        e: &E,
        b: &ResBlock,
        x: &Act<E::Buf>,
        emb_silu: &E::Buf,
        n: usize,
    ) -> std::result::Result<Act<E::Buf>, CudaError> {
        let hw = (x.h, x.w);
        let h = self.conv(e, &b.conv1, &self.norm(e, &b.norm1, x, n, true)?.buf, hw, n)?;
        let t = self.linear(e, &b.temb_proj, emb_silu, n)?;
        let mut h1 = Rc::try_unwrap(h.buf).unwrap_or_else(|_| unreachable!("fresh"));
        e.add_broadcast(&mut h1, &t, h.h * h.w)?;
        let h1 = Act { buf: Rc::new(h1), c: h.c, h: h.h, w: h.w };
        let h2 = self.conv(e, &b.conv2, &self.norm(e, &b.norm2, &h1, n, true)?.buf, hw, n)?;
        let mut out = Rc::try_unwrap(h2.buf).unwrap_or_else(|_| unreachable!("fresh"));
        match &b.skip {
            Some(skip) => e.add_assign(&mut out, &self.conv(e, skip, &x.buf, hw, n)?.buf)?,
            None => e.add_assign(&mut out, &x.buf)?,
        }
        Ok(Act { buf: Rc::new(out), c: h2.c, h: h2.h, w: h2.w })
    }

    /// AttnBlock::forward: q, k, v read in place out of one qkv tensor.
    fn attn_block(
        &self,
        e: &E,
        b: &AttnBlock,
        x: &Act<E::Buf>,
        n: usize,
    ) -> std::result::Result<Act<E::Buf>, CudaError> {
        let (c, hw) = (x.c, x.h * x.w);
        let qkv = self.conv(e, &b.qkv, &self.norm(e, &b.norm, x, n, false)?.buf, (x.h, x.w), n)?;
        // att[i, j] = q[:, i] . k[:, j] / sqrt(C): [HW, C] x [C, HW] per sample.
        let s = MatmulShape {
            transpose_a: true,
            stride_a: 3 * c * hw,
            stride_b: 3 * c * hw,
            ..MatmulShape::new(n, hw, hw, c)
        };
        let mut att = e.matmul(&s, (&qkv.buf, 0), (&qkv.buf, c * hw), None, 1.0 / (c as f32).sqrt())?;
        e.softmax_rows(&mut att, hw)?;
        // v att^T: [C, HW] x [HW, HW]^T per sample.
        let s = MatmulShape {
            transpose_b: true,
            stride_a: 3 * c * hw,
            stride_b: hw * hw,
            ..MatmulShape::new(n, c, hw, hw)
        };
        let out = e.matmul(&s, (&qkv.buf, 2 * c * hw), (&att, 0), None, 1.0)?;
        let out = self.conv(e, &b.proj, &out, (x.h, x.w), n)?;
        let mut out = Rc::try_unwrap(out.buf).unwrap_or_else(|_| unreachable!("fresh"));
        e.add_assign(&mut out, &x.buf)?;
        Ok(Act { buf: Rc::new(out), ..x.clone() })
    }
}

/// Downloads the current x when called: what [`run_on_device`]'s observer gets.
pub type Fetch<'a> = dyn Fn() -> Result<Tensor> + 'a;

/// `sampler::run` on a device: from x_T, the reverse process of `method`
/// with the noise of Philox stream `noise` (draw i at step i, as on the CPU),
/// returning the last x before the final clamp. `observe(i, t, fetch)` is
/// called after each step; `fetch()` downloads x (only when asked: frames
/// of the chain), so a progress bar costs no transfer. The lecture's formula
/// is CPU-only.
#[allow(clippy::too_many_arguments)]
pub fn run_on_device<E: DeviceOps>(
    e: &E,
    model: &DeviceUNet<'_, E>,
    schedule: &Schedule,
    x_t: &Tensor,
    method: Method,
    cond: Conditioning,
    noise: u64,
    observe: &mut dyn FnMut(usize, usize, &Fetch),
) -> Result<Tensor> {
    let n = x_t.dims()[0];
    sampler::check_method(schedule, method)?;
    let ts = method.timesteps(schedule);
    let mut x = e.upload(x_t.as_slice()).map_err(device_error)?;
    let guided = cond.labels.filter(|_| cond.guidance != 0.0);
    let labels: Option<Vec<usize>> =
        guided.map(|y| y.iter().copied().chain(std::iter::repeat_n(model.model().num_classes, n)).collect());
    for (i, &t) in ts.iter().enumerate() {
        let eps = match &labels {
            // Both estimates in one pass over [x; x] with labels [y; null].
            Some(both) => {
                let xx = e.concat2(&x, &x, 1, e.len(&x), e.len(&x)).map_err(device_error)?;
                model.forward(e, &xx, 2 * n, &vec![t; 2 * n], Some(both))?
            }
            None => model.forward(e, &x, n, &vec![t; n], cond.labels)?,
        };
        let update = match method {
            Method::Ddpm => ddpm_update(schedule, t),
            Method::Ddim { eta, .. } => ddim_update(schedule, t, ts.get(i + 1).copied(), eta),
            Method::Lecture => {
                return Err(TensorError::invalid("sample", "the lecture's formula runs on the CPU only"))
            }
        };
        let step = Step { update, guidance: guided.map(|_| cond.guidance), seed: noise, offset: i as u64 };
        e.sampling_step(&mut x, &eps, &step).map_err(device_error)?;
        let fetch = || Tensor::from_vec(e.download(&x).map_err(device_error)?, x_t.shape().clone());
        observe(i, t, &fetch);
    }
    let out = e.download(&x).map_err(device_error)?;
    Tensor::from_vec(out, x_t.shape().clone())
}
