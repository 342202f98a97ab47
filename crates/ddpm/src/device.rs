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

use crate::sampler::{self, Conditioning, Method};
use crate::Schedule;

pub(crate) fn device_error(e: CudaError) -> TensorError {
    TensorError::invalid("device", e.to_string())
}

type R<T> = std::result::Result<T, CudaError>;

/// The tape's node of the network's input image, and of anything else that
/// takes no gradient (t's embedding): gradients sent to them are dropped.
const INPUT: usize = 0;
const CONSTANT: usize = 1;

/// An activation on the device, [n, c, h, w] for the batch of the pass
/// ([n, c] with h = w = 1 for vectors), and its node on the tape.
struct Act<B> {
    buf: Rc<B>,
    id: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl<B> Clone for Act<B> {
    fn clone(&self) -> Self {
        Act { buf: Rc::clone(&self.buf), id: self.id, c: self.c, h: self.h, w: self.w }
    }
}

impl<B> Act<B> {
    /// The buffer of an activation nothing else holds, to update in place.
    fn into_buf(self) -> B {
        Rc::try_unwrap(self.buf).unwrap_or_else(|_| unreachable!("an activation updated in place has one owner"))
    }
}

/// What the backward pass needs of one op: its inputs' and output's nodes
/// (parameters by their `Var` id) and the values its derivative reads.
enum Rec<B> {
    Linear {
        x: usize,
        out: usize,
        x_buf: Rc<B>,
        weight: usize,
        bias: usize,
        rows: usize,
        inputs: usize,
        outputs: usize,
    },
    Silu {
        x: usize,
        out: usize,
        x_buf: Rc<B>,
    },
    Add {
        a: usize,
        b: usize,
        out: usize,
    },
    /// x [rows, inner] += v [rows].
    AddBroadcast {
        x: usize,
        v: usize,
        out: usize,
        rows: usize,
        inner: usize,
    },
    Gather {
        out: usize,
        table: usize,
        idx: Rc<B>,
        rows: usize,
        dim: usize,
    },
    Conv {
        x: usize,
        out: usize,
        x_buf: Rc<B>,
        g: ConvShape,
        weight: usize,
        bias: usize,
    },
    Norm {
        x: usize,
        out: usize,
        x_buf: Rc<B>,
        mean: B,
        rstd: B,
        g: NormShape,
        gamma: usize,
        beta: usize,
    },
    Concat {
        a: usize,
        b: usize,
        out: usize,
        outer: usize,
        ca: usize,
        cb: usize,
    },
    /// Inverted dropout with the mask of Philox stream `seed`.
    Dropout {
        x: usize,
        out: usize,
        p: f32,
        seed: u64,
    },
    Upsample {
        x: usize,
        out: usize,
        planes: usize,
        h: usize,
        w: usize,
    },
    /// out = v softmax(q^T k / sqrt(c))^T, q, k, v inside qkv [n, 3c, hw].
    Attention {
        qkv: usize,
        out: usize,
        qkv_buf: Rc<B>,
        att: Rc<B>,
        n: usize,
        c: usize,
        hw: usize,
    },
}

/// The record of one forward pass, in order, for [`DeviceUNet::backward`].
pub struct Tape<B> {
    recs: Vec<Rec<B>>,
    next: usize,
    output: usize,
    /// The seeds of the dropout masks still to draw, in the order of the
    /// ResBlocks (the order the CPU's forward pass draws them in).
    dropout_seeds: std::collections::VecDeque<u64>,
}

impl<B> Tape<B> {
    fn new(dropout_seeds: &[u64]) -> Tape<B> {
        Tape {
            recs: vec![],
            next: CONSTANT + 1,
            output: CONSTANT,
            dropout_seeds: dropout_seeds.iter().copied().collect(),
        }
    }
}

/// Records an op when a tape is running; returns its output's node.
fn record<B>(tape: &mut Option<Tape<B>>, rec: impl FnOnce(usize) -> Rec<B>) -> usize {
    match tape {
        Some(t) => {
            let id = t.next;
            t.next += 1;
            t.recs.push(rec(id));
            id
        }
        None => CONSTANT,
    }
}

/// Adds `g` to the gradient of node `id` (dropped for the input and constants).
fn accumulate<E: DeviceOps>(e: &E, grads: &mut HashMap<usize, E::Buf>, id: usize, g: E::Buf) -> R<()> {
    if id == INPUT || id == CONSTANT {
        return Ok(());
    }
    accumulate_param(e, grads, id, g)
}

/// Adds `g` to the gradient of the parameter whose `Var` id is `id`.
fn accumulate_param<E: DeviceOps>(e: &E, grads: &mut HashMap<usize, E::Buf>, id: usize, g: E::Buf) -> R<()> {
    match grads.get_mut(&id) {
        Some(have) => e.add_assign(have, &g),
        None => {
            grads.insert(id, g);
            Ok(())
        }
    }
}

/// The model a [`DeviceUNet`] follows: its layers give the structure and
/// name the parameters (the values on the device are the ones that count).
enum ModelRef<'m> {
    Borrowed(&'m UNet),
    Owned(Box<UNet>),
}

/// A U-Net whose weights live on the device of `E`.
pub struct DeviceUNet<'m, E: DeviceOps> {
    model: ModelRef<'m>,
    params: HashMap<usize, E::Buf>,
}

impl<'m, E: DeviceOps> DeviceUNet<'m, E> {
    /// Uploads every parameter of `model`.
    pub fn upload(e: &E, model: &'m UNet) -> Result<Self> {
        let values: Vec<Tensor> = model.named_params().iter().map(|(_, v)| v.value()).collect();
        Self::with_values(e, ModelRef::Borrowed(model), &values)
    }

    /// Takes `model` for its structure and uploads `values` as its
    /// parameters (in the order of `named_params`).
    pub fn upload_values(e: &E, model: UNet, values: &[Tensor]) -> Result<DeviceUNet<'static, E>> {
        DeviceUNet::with_values(e, ModelRef::Owned(Box::new(model)), values)
    }

    fn with_values(e: &E, model: ModelRef<'m>, values: &[Tensor]) -> Result<Self> {
        let named = match &model {
            ModelRef::Borrowed(m) => m.named_params(),
            ModelRef::Owned(m) => m.named_params(),
        };
        if named.len() != values.len() {
            return Err(TensorError::invalid(
                "device",
                format!("{} values for {} parameters", values.len(), named.len()),
            ));
        }
        let mut params = HashMap::new();
        for ((name, var), value) in named.iter().zip(values) {
            value.expect_shape("device upload", &var.shape()).map_err(|_| {
                TensorError::invalid(
                    "device",
                    format!("{name}: shape {} for a parameter of {}", value.shape(), var.shape()),
                )
            })?;
            params.insert(var.id(), e.upload(value.as_slice()).map_err(device_error)?);
        }
        Ok(DeviceUNet { model, params })
    }

    pub fn model(&self) -> &UNet {
        match &self.model {
            ModelRef::Borrowed(m) => m,
            ModelRef::Owned(m) => m,
        }
    }

    fn p(&self, v: &Var) -> &E::Buf {
        &self.params[&v.id()]
    }

    /// The device buffer of parameter `v` (by its `Var`).
    pub fn param(&self, v: &Var) -> &E::Buf {
        self.p(v)
    }

    /// The device buffer of parameter `v`, to update in place (the optimiser).
    pub fn param_mut(&mut self, v: &Var) -> &mut E::Buf {
        self.params.get_mut(&v.id()).expect("a parameter of this model")
    }

    /// The noise estimate for x [n, 1, 28, 28] (on the device) at timesteps
    /// `t`, conditioned on `y` as `UNet::forward` is; in eval mode.
    pub fn forward(&self, e: &E, x: &E::Buf, n: usize, t: &[usize], y: Option<&[usize]>) -> Result<E::Buf> {
        let x = e.copy(x).map_err(device_error)?;
        let (out, _) = self.run(e, Rc::new(x), n, t, y, &mut None).map_err(device_error)?;
        Ok(out)
    }

    /// The forward pass in training mode, recorded for
    /// [`DeviceUNet::backward`]. Each ResBlock with dropout takes the next
    /// of `dropout_seeds` for its mask (see `ddpm_nn::layers::dropout`).
    pub fn forward_recorded(
        &self,
        e: &E,
        x: E::Buf,
        n: usize,
        t: &[usize],
        y: Option<&[usize]>,
        dropout_seeds: &[u64],
    ) -> Result<(E::Buf, Tape<E::Buf>)> {
        let mut tape = Some(Tape::new(dropout_seeds));
        let (out, id) = self.run(e, Rc::new(x), n, t, y, &mut tape).map_err(device_error)?;
        let mut tape = tape.expect("recording");
        tape.output = id;
        Ok((out, tape))
    }

    fn run(
        &self,
        e: &E,
        x: Rc<E::Buf>,
        n: usize,
        t: &[usize],
        y: Option<&[usize]>,
        tape: &mut Option<Tape<E::Buf>>,
    ) -> R<(E::Buf, usize)> {
        let m = self.model();
        let invalid = |message: String| CudaError::Invalid { op: "unet", message };
        if t.len() != n || e.len(&x) != n * 28 * 28 {
            return Err(invalid(format!("{} timesteps and {} pixels for a batch of {n}", t.len(), e.len(&x))));
        }
        // t's sinusoidal embedding is computed on the host: [n, base] numbers.
        let temb = timestep_embedding(t, m.base).map_err(|e| invalid(e.to_string()))?;
        let temb = Act { buf: Rc::new(e.upload(temb.as_slice())?), id: CONSTANT, c: m.base, h: 1, w: 1 };
        let hidden = self.linear(e, tape, &m.time_mlp.0, &temb, n)?;
        let hidden = self.silu(e, tape, &hidden)?;
        let mut emb = self.linear(e, tape, &m.time_mlp.1, &hidden, n)?;
        if let Some(class_emb) = &m.class_emb {
            let labels = match y {
                Some(y) if y.len() == n => y.to_vec(),
                Some(y) => return Err(invalid(format!("{} labels for a batch of {n}", y.len()))),
                None => vec![m.num_classes; n],
            };
            let idx: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
            let rows = self.gather(e, tape, &class_emb.weight, Rc::new(e.upload(&idx)?))?;
            emb = self.add(e, tape, emb, &rows)?;
        }
        // Every ResBlock projects silu(emb): computed once.
        let emb_silu = self.silu(e, tape, &emb)?;

        let input = Act { buf: x, id: INPUT, c: 1, h: 28, w: 28 };
        let mut h = self.conv(e, tape, &m.stem, &input, n)?;
        let mut hs = vec![h.clone()];
        for blk in &m.down {
            h = match blk {
                Block::Res(b) => self.res_block(e, tape, b, &h, &emb_silu, n)?,
                Block::Attn(b) => self.attn_block(e, tape, b, &h, n)?,
                Block::Down(b) => self.conv(e, tape, &b.conv, &h, n)?,
                Block::Up(_) => unreachable!("no upsampling on the way down"),
            };
            match blk {
                Block::Attn(_) => *hs.last_mut().expect("a ResBlock came first") = h.clone(),
                _ => hs.push(h.clone()),
            }
        }
        h = self.res_block(e, tape, &m.mid.0, &h, &emb_silu, n)?;
        h = self.attn_block(e, tape, &m.mid.1, &h, n)?;
        h = self.res_block(e, tape, &m.mid.2, &h, &emb_silu, n)?;
        for blk in &m.up {
            h = match blk {
                Block::Res(b) => {
                    let skip = hs.pop().expect("one skip per up ResBlock");
                    let cat = self.concat(e, tape, &h, &skip, n)?;
                    self.res_block(e, tape, b, &cat, &emb_silu, n)?
                }
                Block::Attn(b) => self.attn_block(e, tape, b, &h, n)?,
                Block::Up(b) => {
                    let up = self.upsample(e, tape, &h, n)?;
                    self.conv(e, tape, &b.conv, &up, n)?
                }
                Block::Down(_) => unreachable!("no downsampling on the way up"),
            };
        }
        let out = self.norm(e, tape, &m.out_norm, &h, n, true)?;
        let out = self.conv(e, tape, &m.out_conv, &out, n)?;
        let id = out.id;
        Ok((out.into_buf(), id))
    }

    /// x [rows, in] W^T + b.
    fn linear(
        &self,
        e: &E,
        tape: &mut Option<Tape<E::Buf>>,
        l: &Linear,
        x: &Act<E::Buf>,
        rows: usize,
    ) -> R<Act<E::Buf>> {
        let [outputs, inputs] = l.weight.dims()[..] else { unreachable!("a linear weight is [out, in]") };
        let s = MatmulShape { transpose_b: true, ..MatmulShape::new(1, rows, outputs, inputs) };
        let y = e.matmul(&s, (&x.buf, 0), (self.p(&l.weight), 0), Some(self.p(&l.bias)), 1.0)?;
        let (weight, bias) = (l.weight.id(), l.bias.id());
        let id =
            record(tape, |out| Rec::Linear { x: x.id, out, x_buf: x.buf.clone(), weight, bias, rows, inputs, outputs });
        Ok(Act { buf: Rc::new(y), id, c: outputs, h: 1, w: 1 })
    }

    fn silu(&self, e: &E, tape: &mut Option<Tape<E::Buf>>, x: &Act<E::Buf>) -> R<Act<E::Buf>> {
        let y = e.silu(&x.buf)?;
        let id = record(tape, |out| Rec::Silu { x: x.id, out, x_buf: x.buf.clone() });
        Ok(Act { buf: Rc::new(y), id, ..x.clone() })
    }

    /// a + b, in place on a (which nothing else holds).
    fn add(&self, e: &E, tape: &mut Option<Tape<E::Buf>>, a: Act<E::Buf>, b: &Act<E::Buf>) -> R<Act<E::Buf>> {
        let (a_id, dims) = (a.id, (a.c, a.h, a.w));
        let mut buf = a.into_buf();
        e.add_assign(&mut buf, &b.buf)?;
        let id = record(tape, |out| Rec::Add { a: a_id, b: b.id, out });
        Ok(Act { buf: Rc::new(buf), id, c: dims.0, h: dims.1, w: dims.2 })
    }

    /// x [n, c, h, w] + v [n, c] over the positions, in place on x.
    fn add_broadcast(&self, e: &E, tape: &mut Option<Tape<E::Buf>>, x: Act<E::Buf>, v: &Act<E::Buf>) -> R<Act<E::Buf>> {
        let (x_id, c, h, w) = (x.id, x.c, x.h, x.w);
        let mut buf = x.into_buf();
        e.add_broadcast(&mut buf, &v.buf, h * w)?;
        let rows = e.len(&v.buf);
        let id = record(tape, |out| Rec::AddBroadcast { x: x_id, v: v.id, out, rows, inner: h * w });
        Ok(Act { buf: Rc::new(buf), id, c, h, w })
    }

    /// Rows `idx` (as floats) of an embedding table.
    fn gather(&self, e: &E, tape: &mut Option<Tape<E::Buf>>, table: &Var, idx: Rc<E::Buf>) -> R<Act<E::Buf>> {
        let [rows, dim] = table.dims()[..] else { unreachable!("an embedding table is [rows, dim]") };
        let y = e.gather_rows(self.p(table), &idx, dim)?;
        let id = record(tape, |out| Rec::Gather { out, table: table.id(), idx: idx.clone(), rows, dim });
        Ok(Act { buf: Rc::new(y), id, c: dim, h: 1, w: 1 })
    }

    fn conv(&self, e: &E, tape: &mut Option<Tape<E::Buf>>, conv: &Conv2d, x: &Act<E::Buf>, n: usize) -> R<Act<E::Buf>> {
        let [k, c, r, s] = conv.weight.dims()[..] else { unreachable!("a conv weight is [K, C, R, S]") };
        let g = ConvShape { n, c, h: x.h, w: x.w, k, r, s, stride: conv.params.stride, pad: conv.params.padding };
        let y = e.conv2d_forward(ConvKernel::Tiled, &g, &x.buf, self.p(&conv.weight), Some(self.p(&conv.bias)))?;
        let (weight, bias) = (conv.weight.id(), conv.bias.id());
        let id = record(tape, |out| Rec::Conv { x: x.id, out, x_buf: x.buf.clone(), g, weight, bias });
        Ok(Act { buf: Rc::new(y), id, c: k, h: g.ho(), w: g.wo() })
    }

    fn norm(
        &self,
        e: &E,
        tape: &mut Option<Tape<E::Buf>>,
        gn: &GroupNorm,
        x: &Act<E::Buf>,
        n: usize,
        silu: bool,
    ) -> R<Act<E::Buf>> {
        let g = NormShape { n, c: x.c, hw: x.h * x.w, groups: gn.groups, silu };
        let (y, mean, rstd) = e.group_norm_forward(&g, &x.buf, self.p(&gn.weight), self.p(&gn.bias), GroupNorm::EPS)?;
        let (gamma, beta) = (gn.weight.id(), gn.bias.id());
        let id = record(tape, |out| Rec::Norm { x: x.id, out, x_buf: x.buf.clone(), mean, rstd, g, gamma, beta });
        Ok(Act { buf: Rc::new(y), id, ..x.clone() })
    }

    /// [a; b] along the channels.
    fn concat(
        &self,
        e: &E,
        tape: &mut Option<Tape<E::Buf>>,
        a: &Act<E::Buf>,
        b: &Act<E::Buf>,
        n: usize,
    ) -> R<Act<E::Buf>> {
        let hw = a.h * a.w;
        let (ca, cb) = (a.c * hw, b.c * hw);
        let y = e.concat2(&a.buf, &b.buf, n, ca, cb)?;
        let id = record(tape, |out| Rec::Concat { a: a.id, b: b.id, out, outer: n, ca, cb });
        Ok(Act { buf: Rc::new(y), id, c: a.c + b.c, h: a.h, w: a.w })
    }

    fn upsample(&self, e: &E, tape: &mut Option<Tape<E::Buf>>, x: &Act<E::Buf>, n: usize) -> R<Act<E::Buf>> {
        let y = e.upsample2x(&x.buf, n * x.c, x.h, x.w)?;
        let (planes, h, w) = (n * x.c, x.h, x.w);
        let id = record(tape, |out| Rec::Upsample { x: x.id, out, planes, h, w });
        Ok(Act { buf: Rc::new(y), id, c: x.c, h: 2 * h, w: 2 * w })
    }

    /// Inverted dropout with the next seed of the tape; none without a tape
    /// (evaluation).
    fn dropout(&self, e: &E, tape: &mut Option<Tape<E::Buf>>, x: Act<E::Buf>, p: f32) -> R<Act<E::Buf>> {
        let Some(t) = tape.as_mut() else { return Ok(x) };
        let seed = t.dropout_seeds.pop_front().ok_or_else(|| CudaError::Invalid {
            op: "unet",
            message: "more dropout layers than dropout seeds".into(),
        })?;
        let y = e.dropout(&x.buf, p, seed)?;
        let id = record(tape, |out| Rec::Dropout { x: x.id, out, p, seed });
        Ok(Act { buf: Rc::new(y), id, ..x })
    }

    /// ResBlock::forward; dropout only when recording (training).
    fn res_block(
        &self,
        e: &E,
        tape: &mut Option<Tape<E::Buf>>,
        b: &ResBlock,
        x: &Act<E::Buf>,
        emb_silu: &Act<E::Buf>,
        n: usize,
    ) -> R<Act<E::Buf>> {
        let h = self.norm(e, tape, &b.norm1, x, n, true)?;
        let h = self.conv(e, tape, &b.conv1, &h, n)?;
        let t = self.linear(e, tape, &b.temb_proj, emb_silu, n)?;
        let h = self.add_broadcast(e, tape, h, &t)?;
        let mut h = self.norm(e, tape, &b.norm2, &h, n, true)?;
        if b.dropout > 0.0 {
            h = self.dropout(e, tape, h, b.dropout)?;
        }
        let h = self.conv(e, tape, &b.conv2, &h, n)?;
        match &b.skip {
            Some(skip) => {
                let s = self.conv(e, tape, skip, x, n)?;
                self.add(e, tape, h, &s)
            }
            None => self.add(e, tape, h, x),
        }
    }

    /// AttnBlock::forward: q, k, v read in place out of one qkv tensor.
    fn attn_block(
        &self,
        e: &E,
        tape: &mut Option<Tape<E::Buf>>,
        b: &AttnBlock,
        x: &Act<E::Buf>,
        n: usize,
    ) -> R<Act<E::Buf>> {
        let qkv = self.norm(e, tape, &b.norm, x, n, false)?;
        let qkv = self.conv(e, tape, &b.qkv, &qkv, n)?;
        let (c, hw) = (x.c, x.h * x.w);
        // att[i, j] = softmax_j(q[:, i] . k[:, j] / sqrt(C)): [HW, C] x [C, HW] per sample.
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
        let att = Rc::new(att);
        let id = record(tape, |out| Rec::Attention {
            qkv: qkv.id,
            out,
            qkv_buf: qkv.buf.clone(),
            att: att.clone(),
            n,
            c,
            hw,
        });
        let out = Act { buf: Rc::new(out), id, ..x.clone() };
        let out = self.conv(e, tape, &b.proj, &out, n)?;
        self.add(e, tape, out, x)
    }

    /// The gradients of every parameter (by `Var` id) of the recorded pass,
    /// given the gradient of its output: the ops of the tape in reverse,
    /// each with its derivative (`crates/autograd/src/backward.rs` has the
    /// same rules for the CPU).
    pub fn backward(&self, e: &E, tape: Tape<E::Buf>, d_out: E::Buf) -> Result<HashMap<usize, E::Buf>> {
        self.backward_inner(e, tape, d_out).map_err(device_error)
    }

    fn backward_inner(&self, e: &E, tape: Tape<E::Buf>, d_out: E::Buf) -> R<HashMap<usize, E::Buf>> {
        let mut grads: HashMap<usize, E::Buf> = HashMap::from([(tape.output, d_out)]);
        let mut params: HashMap<usize, E::Buf> = HashMap::new();
        for rec in tape.recs.into_iter().rev() {
            match rec {
                Rec::Linear { x, out, x_buf, weight, bias, rows, inputs, outputs } => {
                    let Some(dy) = grads.remove(&out) else { continue };
                    // dW = dy^T x, db = the column sums of dy, dx = dy W.
                    let s = MatmulShape { transpose_a: true, ..MatmulShape::new(1, outputs, inputs, rows) };
                    accumulate_param(e, &mut params, weight, e.matmul(&s, (&dy, 0), (&x_buf, 0), None, 1.0)?)?;
                    accumulate_param(e, &mut params, bias, e.sum_rows(&dy, rows, outputs)?)?;
                    if x != CONSTANT {
                        let s = MatmulShape::new(1, rows, inputs, outputs);
                        let w = &self.params[&weight];
                        accumulate(e, &mut grads, x, e.matmul(&s, (&dy, 0), (w, 0), None, 1.0)?)?;
                    }
                }
                Rec::Silu { x, out, x_buf } => {
                    let Some(dy) = grads.remove(&out) else { continue };
                    accumulate(e, &mut grads, x, e.silu_backward(&x_buf, &dy)?)?;
                }
                Rec::Add { a, b, out } => {
                    let Some(dy) = grads.remove(&out) else { continue };
                    accumulate(e, &mut grads, b, e.copy(&dy)?)?;
                    accumulate(e, &mut grads, a, dy)?;
                }
                Rec::AddBroadcast { x, v, out, rows, inner } => {
                    let Some(dy) = grads.remove(&out) else { continue };
                    accumulate(e, &mut grads, v, e.sum_inner(&dy, rows, inner)?)?;
                    accumulate(e, &mut grads, x, dy)?;
                }
                Rec::Gather { out, table, idx, rows, dim } => {
                    let Some(dy) = grads.remove(&out) else { continue };
                    accumulate_param(e, &mut params, table, e.scatter_rows(&dy, &idx, rows, dim)?)?;
                }
                Rec::Conv { x, out, x_buf, g, weight, bias } => {
                    let Some(dy) = grads.remove(&out) else { continue };
                    accumulate_param(
                        e,
                        &mut params,
                        weight,
                        e.conv2d_backward_weight(ConvKernel::Tiled, &g, &x_buf, &dy)?,
                    )?;
                    let per_sample = e.sum_inner(&dy, g.n * g.k, g.ho() * g.wo())?;
                    accumulate_param(e, &mut params, bias, e.sum_rows(&per_sample, g.n, g.k)?)?;
                    if x != INPUT {
                        let w = &self.params[&weight];
                        accumulate(e, &mut grads, x, e.conv2d_backward_input(ConvKernel::Tiled, &g, &dy, w)?)?;
                    }
                }
                Rec::Norm { x, out, x_buf, mean, rstd, g, gamma, beta } => {
                    let Some(dy) = grads.remove(&out) else { continue };
                    let (gm, bt) = (&self.params[&gamma], &self.params[&beta]);
                    let (dx, dgamma, dbeta) = e.group_norm_backward(&g, &x_buf, gm, bt, &mean, &rstd, &dy)?;
                    accumulate_param(e, &mut params, gamma, dgamma)?;
                    accumulate_param(e, &mut params, beta, dbeta)?;
                    accumulate(e, &mut grads, x, dx)?;
                }
                Rec::Concat { a, b, out, outer, ca, cb } => {
                    let Some(dy) = grads.remove(&out) else { continue };
                    let (da, db) = e.split2(&dy, outer, ca, cb)?;
                    accumulate(e, &mut grads, a, da)?;
                    accumulate(e, &mut grads, b, db)?;
                }
                Rec::Dropout { x, out, p, seed } => {
                    let Some(dy) = grads.remove(&out) else { continue };
                    accumulate(e, &mut grads, x, e.dropout(&dy, p, seed)?)?;
                }
                Rec::Upsample { x, out, planes, h, w } => {
                    let Some(dy) = grads.remove(&out) else { continue };
                    accumulate(e, &mut grads, x, e.upsample2x_backward(&dy, planes, h, w)?)?;
                }
                Rec::Attention { qkv, out, qkv_buf, att, n, c, hw } => {
                    let Some(d_o) = grads.remove(&out) else { continue };
                    let alpha = 1.0 / (c as f32).sqrt();
                    let (chw, stride) = (c * hw, 3 * c * hw);
                    // O = v A^T: dv = dO A, dA = dO^T v.
                    let s = MatmulShape { stride_b: hw * hw, ..MatmulShape::new(n, c, hw, hw) };
                    let dv = e.matmul(&s, (&d_o, 0), (&att, 0), None, 1.0)?;
                    let s = MatmulShape {
                        transpose_a: true,
                        stride_a: chw,
                        stride_b: stride,
                        ..MatmulShape::new(n, hw, hw, c)
                    };
                    let mut d_s = e.matmul(&s, (&d_o, 0), (&qkv_buf, 2 * chw), None, 1.0)?;
                    // A = softmax(S), S = alpha q^T k: dq = alpha k dS^T, dk = alpha q dS.
                    e.softmax_rows_backward(&att, &mut d_s, hw)?;
                    let s = MatmulShape {
                        transpose_b: true,
                        stride_a: stride,
                        stride_b: hw * hw,
                        ..MatmulShape::new(n, c, hw, hw)
                    };
                    let dq = e.matmul(&s, (&qkv_buf, chw), (&d_s, 0), None, alpha)?;
                    let s = MatmulShape { stride_a: stride, stride_b: hw * hw, ..MatmulShape::new(n, c, hw, hw) };
                    let dk = e.matmul(&s, (&qkv_buf, 0), (&d_s, 0), None, alpha)?;
                    let dqk = e.concat2(&dq, &dk, n, chw, chw)?;
                    accumulate(e, &mut grads, qkv, e.concat2(&dqk, &dv, n, 2 * chw, chw)?)?;
                }
            }
        }
        Ok(params)
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
    let labels = guided.map(|y| sampler::guided_labels(y, model.model().num_classes));
    for (i, &t) in ts.iter().enumerate() {
        let eps = match &labels {
            // Both estimates in one pass over [x; x] with labels [y; null].
            Some(both) => {
                let xx = e.concat2(&x, &x, 1, e.len(&x), e.len(&x)).map_err(device_error)?;
                model.forward(e, &xx, 2 * n, &vec![t; 2 * n], Some(both))?
            }
            None => model.forward(e, &x, n, &vec![t; n], cond.labels)?,
        };
        let update = match method.update(schedule, &ts, i) {
            sampler::Update::Ddpm { eps_coef, sqrt_a, sigma } => ddpm_cuda::Update::Ddpm { eps_coef, sqrt_a, sigma },
            sampler::Update::Ddim { ab, ab_prev, sigma, dir } => ddpm_cuda::Update::Ddim { ab, ab_prev, sigma, dir },
        };
        let step = Step { update, guidance: guided.map(|_| cond.guidance), seed: noise, offset: i as u64 };
        e.sampling_step(&mut x, &eps, &step).map_err(device_error)?;
        let fetch = || Tensor::from_vec(e.download(&x).map_err(device_error)?, x_t.shape().clone());
        observe(i, t, &fetch);
    }
    let out = e.download(&x).map_err(device_error)?;
    Tensor::from_vec(out, x_t.shape().clone())
}
