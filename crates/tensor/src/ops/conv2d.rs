//! 2-D convolution as `torch.nn.functional.conv2d` computes it (a cross-correlation
//! with zero padding, no dilation, one group), and its three gradients.
//!
//! Shapes: x is [N, C, H, W], weight is [K, C, R, S], bias is [K], and y is
//! [N, K, Ho, Wo] with Ho = (H + 2P - R) / stride + 1 and Wo = (W + 2P - S) / stride + 1
//! (P is the padding, the same on all four sides):
//!
//!   y[n, k, oy, ox] = bias[k] + sum_{c, r, s} weight[k, c, r, s] * x[n, c, oy*stride + r - P, ox*stride + s - P]
//!
//! where x reads as 0 outside the image. [`conv2d_reference`] is that formula as a loop.
//!
//! The fast path is im2col + GEMM. For one sample, copy every receptive field into a
//! column: cols is [C*R*S, Ho*Wo] with cols[(c, r, s), (oy, ox)] = x[c, oy*stride + r - P, ox*stride + s - P].
//! The convolution of that sample is then one matrix product,
//!
//!   y_n [K, Ho*Wo] = weight [K, C*R*S] cols [C*R*S, Ho*Wo]   (plus bias[k] on row k),
//!
//! and the gradients are the other two products of the same three matrices:
//!
//!   d_cols [C*R*S, Ho*Wo] = weight^T d_out_n, which col2im adds back onto d_input_n
//!                           (a pixel sits in up to R*S receptive fields, so its gradients add up);
//!   d_weight [K, C*R*S]  += d_out_n cols^T, summed over the batch;
//!   d_bias [K]            = d_out summed over n, oy and ox.
//!
//! A 1x1 convolution with stride 1 and no padding needs no im2col: its cols would be
//! x_n viewed as [C, H*W], so the GEMMs read the tensors directly.
//!
//! On CPUs with AVX-512, the U-Net's stride-1 "same" convolutions (3x3, and the
//! forward pass and input gradient of 1x1) skip im2col and the GEMM altogether:
//! see `conv2d_direct.rs`, whose micro-kernels read the input where it lies.
//! The im2col path below serves every other shape and CPU.
//!
//! [`Tensor::conv2d_add`] also adds a per-sample shift [N, K] and a residual of
//! y's shape while y is written (the U-Net adds its time embedding after one
//! convolution and its skip connection after another): every path above
//! starts from, or finishes with, a pass over y that can take them on.
//!
//! Parallelism: the batch is split into a few contiguous runs of samples, one rayon
//! task each. A task allocates its cols buffer once and calls the single-threaded
//! GEMM once per sample; the weight gradient is summed per task, then across tasks.

use std::ops::Range;

use rayon::prelude::*;

use super::lanes::sum_f32;
use super::{sgemm, sgemm_parallel, Transpose};
use crate::backend::ConvShape;
use crate::pool;
use crate::{placement, Placement, Result, Shape, Tensor, TensorError};

#[cfg(target_arch = "x86_64")]
#[path = "conv2d_direct.rs"]
mod direct;

/// Elsewhere than x86-64 every convolution takes the im2col + GEMM path.
#[cfg(not(target_arch = "x86_64"))]
mod direct {
    pub(super) struct Direct;

    impl Direct {
        pub(super) fn new(_: &super::Geometry) -> Option<Direct> {
            None
        }
        pub(super) fn has_weight_grad(_: &super::Geometry) -> bool {
            false
        }
        pub(super) fn forward(
            &self,
            _: &super::Geometry,
            _: &[f32],
            _: &[f32],
            _: Option<&[f32]>,
            _: super::Addends,
        ) -> Vec<f32> {
            unreachable!("no direct convolution is made off x86-64")
        }
        pub(super) fn weight_grad(&self, _: &super::Geometry, _: &[f32], _: &[f32]) -> Vec<f32> {
            unreachable!("no direct convolution is made off x86-64")
        }
    }
}

/// Stride and zero padding of a 2-D convolution (the same on both axes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
}

/// Every extent of one convolution, checked once where a caller hands us shapes.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    r: usize,
    s: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    pad: usize,
}

impl Geometry {
    /// Checks an input shape [N, C, H, W] against a weight shape [K, C, R, S].
    fn new(op: &'static str, input: &Shape, weight: &Shape, p: Conv2dParams) -> Result<Geometry> {
        if p.stride == 0 {
            return Err(TensorError::invalid(op, "stride must be at least 1"));
        }
        let &[n, c, h, w] = input.dims() else {
            return Err(TensorError::invalid(op, format!("input must have rank 4 [N, C, H, W], got shape {input}")));
        };
        let &[k, wc, r, s] = weight.dims() else {
            return Err(TensorError::invalid(op, format!("weight must have rank 4 [K, C, R, S], got shape {weight}")));
        };
        if c != wc {
            return Err(TensorError::invalid(
                op,
                format!("input {input} has {c} channels but weight {weight} expects {wc}"),
            ));
        }
        if r == 0 || s == 0 {
            return Err(TensorError::invalid(op, format!("kernel {r}x{s} is empty")));
        }
        let (pad, stride) = (p.padding, p.stride);
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        if r > hp || s > wp {
            return Err(TensorError::invalid(
                op,
                format!("kernel {r}x{s} is larger than the padded input {hp}x{wp} (input {h}x{w}, padding {pad})"),
            ));
        }
        Ok(Geometry { n, c, h, w, k, r, s, ho: (hp - r) / stride + 1, wo: (wp - s) / stride + 1, stride, pad })
    }

    fn output_shape(&self) -> Shape {
        Shape::new([self.n, self.k, self.ho, self.wo])
    }

    /// The extents a device kernel takes.
    fn device_shape(&self) -> ConvShape {
        let Geometry { n, c, h, w, k, r, s, stride, pad, .. } = *self;
        ConvShape { n, c, h, w, k, r, s, stride, pad }
    }

    /// Values in one sample of the input, C*H*W.
    fn input_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Values in one sample of the output, K*Ho*Wo.
    fn output_len(&self) -> usize {
        self.k * self.ho * self.wo
    }

    /// Length of one receptive field, C*R*S: the rows of cols and the GEMM's reduction.
    fn patch(&self) -> usize {
        self.c * self.r * self.s
    }

    /// Output positions per channel, Ho*Wo: the columns of cols.
    fn positions(&self) -> usize {
        self.ho * self.wo
    }

    /// Stride 1 and an output as wide as the input (a "same" convolution, S = 2P + 1):
    /// a row of cols is then the input plane shifted, see [`shifted_copy`].
    fn is_same_width(&self) -> bool {
        self.stride == 1 && self.wo == self.w
    }

    /// A 1x1 stride-1 convolution without padding: cols is the input itself.
    fn is_pointwise(&self) -> bool {
        self.r == 1 && self.s == 1 && self.stride == 1 && self.pad == 0
    }

    /// Multiply-adds of the whole batch, counted twice (the usual flop count).
    fn flops(&self) -> usize {
        2 * self.n * self.k * self.patch() * self.positions()
    }

    /// The input index that output `o` reads through kernel tap `tap` along one
    /// axis of extent `len`, or None where it lands in the padding.
    fn source(&self, o: usize, tap: usize, len: usize) -> Option<usize> {
        (o * self.stride + tap).checked_sub(self.pad).filter(|&i| i < len)
    }

    /// The outputs `o` in 0..out_len whose source through tap `tap` lies inside
    /// 0..len (a contiguous range; the outputs outside it read padding).
    fn inside(&self, tap: usize, len: usize, out_len: usize) -> Range<usize> {
        // o*stride + tap - P >= 0  <=>  o >= ceil((P - tap) / stride)
        let lo = self.pad.saturating_sub(tap).div_ceil(self.stride);
        // o*stride + tap - P < len  <=>  o < ceil((len + P - tap) / stride)
        let hi = (len + self.pad).saturating_sub(tap).div_ceil(self.stride).min(out_len);
        lo.min(hi)..hi
    }

    /// Errors unless d_out has the shape this convolution outputs.
    fn check_d_out(&self, op: &'static str, d_out: &Tensor) -> Result<()> {
        let expected = self.output_shape();
        if d_out.shape() == &expected {
            Ok(())
        } else {
            Err(TensorError::invalid(
                op,
                format!("d_out has shape {} but the convolution outputs {expected}", d_out.shape()),
            ))
        }
    }
}

fn check_bias(op: &'static str, bias: &Tensor, k: usize) -> Result<()> {
    if bias.dims() == [k] {
        Ok(())
    } else {
        Err(TensorError::invalid(
            op,
            format!("bias must have shape [{k}] (one per output channel), got {}", bias.shape()),
        ))
    }
}

/// cols [C*R*S, Ho*Wo] from one sample x_n [C, H, W]:
/// cols[(c, r, s), (oy, ox)] = x_n[c, oy*stride + r - P, ox*stride + s - P], or 0 in the padding.
/// Row i of cols starts at cols[i * ld]: ld is Ho*Wo for one sample alone, or a
/// multiple of it when several samples' columns sit side by side (see [`Plan::group`]).
fn im2col(g: &Geometry, x_n: &[f32], cols: &mut [f32], ld: usize) {
    let plane = g.h * g.w;
    let mut rows = cols.chunks_mut(ld).map(|row| &mut row[..g.positions()]);
    for c in 0..g.c {
        let x_c = &x_n[c * plane..(c + 1) * plane];
        for r in 0..g.r {
            let oys = g.inside(r, g.h, g.ho);
            for s in 0..g.s {
                let oxs = g.inside(s, g.w, g.wo);
                let row = rows.next().expect("cols has C*R*S rows");
                if g.is_same_width() {
                    shifted_copy(g, x_c, row, r, s, oys.clone(), oxs);
                    continue;
                }
                for (oy, out) in row.chunks_exact_mut(g.wo).enumerate() {
                    if !oys.contains(&oy) || oxs.is_empty() {
                        out.fill(0.0);
                        continue;
                    }
                    out[..oxs.start].fill(0.0);
                    out[oxs.end..].fill(0.0);
                    let iy = oy * g.stride + r - g.pad;
                    let ix = oxs.start * g.stride + s - g.pad;
                    let x_row = &x_c[iy * g.w..(iy + 1) * g.w];
                    let out = &mut out[oxs.clone()];
                    // One loop per stride, each with a constant step, so that the compiler vectorises it.
                    match g.stride {
                        1 => out.copy_from_slice(&x_row[ix..ix + out.len()]),
                        2 => {
                            // Pairs of pixels, keeping the first of each; the last pair may be cut short.
                            let (last, body) = out.split_last_mut().expect("oxs is not empty");
                            for (o, pair) in body.iter_mut().zip(x_row[ix..].chunks_exact(2)) {
                                *o = pair[0];
                            }
                            *last = x_row[ix + 2 * body.len()];
                        }
                        _ => out.iter_mut().zip(x_row[ix..].iter().step_by(g.stride)).for_each(|(o, &v)| *o = v),
                    }
                }
            }
        }
    }
}

/// The flat offset from an output position to the pixel it reads through tap (r, s),
/// when stride is 1 and Wo = W: (r - P) * W + (s - P).
fn flat_shift(g: &Geometry, r: usize, s: usize) -> isize {
    (r as isize - g.pad as isize) * g.w as isize + (s as isize - g.pad as isize)
}

/// The positions q of a row of cols in the output rows `oys` whose flat source
/// q + shift lies inside the plane.
fn flat_span(g: &Geometry, shift: isize, oys: &Range<usize>) -> Range<usize> {
    let plane = (g.h * g.w) as isize;
    let lo = ((oys.start * g.w) as isize).max(-shift);
    let hi = ((oys.end * g.w) as isize).min(plane - shift);
    if lo < hi {
        lo as usize..hi as usize
    } else {
        0..0
    }
}

/// One row (c, r, s) of im2col for a stride-1 convolution with Wo = W (a 3x3 kernel
/// with padding 1, say). Output (oy, ox) reads pixel (oy + r - P, ox + s - P), which
/// in the flattened plane is q + shift for q = oy*W + ox: the whole row is one copy
/// of the plane, shifted. The copy also fills the taps that hang over the left or
/// right edge, with pixels wrapped around from the neighbouring image row, so those
/// are zeroed afterwards.
fn shifted_copy(g: &Geometry, x_c: &[f32], row: &mut [f32], r: usize, s: usize, oys: Range<usize>, oxs: Range<usize>) {
    let shift = flat_shift(g, r, s);
    let span = flat_span(g, shift, &oys);
    row[..span.start].fill(0.0);
    row[span.end..].fill(0.0);
    if !span.is_empty() {
        let src = (span.start as isize + shift) as usize;
        row[span.clone()].copy_from_slice(&x_c[src..src + span.len()]);
    }
    if oxs.len() < g.wo {
        for oy in oys {
            let out = &mut row[oy * g.wo..(oy + 1) * g.wo];
            out[..oxs.start].fill(0.0);
            out[oxs.end..].fill(0.0);
        }
    }
}

/// The adjoint of [`im2col`]: d_x_n [C, H, W] = the sum, over every place a pixel
/// was copied to, of d_cols [C*R*S, Ho*Wo] there (rows `ld` apart, as in im2col).
/// Overwrites d_x_n; uses d_cols as scratch.
fn col2im(g: &Geometry, d_cols: &mut [f32], ld: usize, d_x_n: &mut [f32]) {
    d_x_n.fill(0.0);
    let plane = g.h * g.w;
    let mut rows = d_cols.chunks_mut(ld).map(|row| &mut row[..g.positions()]);
    for c in 0..g.c {
        let d_x_c = &mut d_x_n[c * plane..(c + 1) * plane];
        for r in 0..g.r {
            let oys = g.inside(r, g.h, g.ho);
            for s in 0..g.s {
                let oxs = g.inside(s, g.w, g.wo);
                let row = rows.next().expect("d_cols has C*R*S rows");
                if g.is_same_width() {
                    shifted_add(g, row, d_x_c, r, s, oys.clone(), oxs);
                    continue;
                }
                if oxs.is_empty() {
                    continue;
                }
                for oy in oys.clone() {
                    let d_col = &row[oy * g.wo..(oy + 1) * g.wo][oxs.clone()];
                    let iy = oy * g.stride + r - g.pad;
                    let ix = oxs.start * g.stride + s - g.pad;
                    let d_x_row = &mut d_x_c[iy * g.w..(iy + 1) * g.w];
                    match g.stride {
                        1 => d_x_row[ix..ix + d_col.len()].iter_mut().zip(d_col).for_each(|(d, &v)| *d += v),
                        2 => {
                            let (last, body) = d_col.split_last().expect("oxs is not empty");
                            for (pair, &v) in d_x_row[ix..].chunks_exact_mut(2).zip(body) {
                                pair[0] += v;
                            }
                            d_x_row[ix + 2 * body.len()] += last;
                        }
                        _ => d_x_row[ix..].iter_mut().step_by(g.stride).zip(d_col).for_each(|(d, &v)| *d += v),
                    }
                }
            }
        }
    }
}

/// The adjoint of [`shifted_copy`]: adds a row of d_cols, shifted, onto the plane
/// d_x_c. The entries of taps that hung over the left or right edge are zeroed first,
/// so that the one long add does not send them to the wrapped-around pixels.
fn shifted_add(
    g: &Geometry,
    row: &mut [f32],
    d_x_c: &mut [f32],
    r: usize,
    s: usize,
    oys: Range<usize>,
    oxs: Range<usize>,
) {
    let shift = flat_shift(g, r, s);
    let span = flat_span(g, shift, &oys);
    if oxs.len() < g.wo {
        for oy in oys {
            let d_col = &mut row[oy * g.wo..(oy + 1) * g.wo];
            d_col[..oxs.start].fill(0.0);
            d_col[oxs.end..].fill(0.0);
        }
    }
    if !span.is_empty() {
        let dst = (span.start as isize + shift) as usize;
        d_x_c[dst..dst + span.len()].iter_mut().zip(&row[span]).for_each(|(d, &v)| *d += v);
    }
}

/// Lays `samples` ([count, rows, cols], contiguous) side by side as one matrix
/// out [rows, count*cols]: sample j fills columns j*cols..(j+1)*cols.
fn side_by_side(samples: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    let width = samples.len() / rows;
    for (j, sample) in samples.chunks_exact(rows * cols).enumerate() {
        for (src, dst) in sample.chunks_exact(cols).zip(out.chunks_exact_mut(width)) {
            dst[j * cols..(j + 1) * cols].copy_from_slice(src);
        }
    }
}

/// The inverse of [`side_by_side`], adding bias[i] (when there is one) to row i of
/// every sample, and the addends of `add` (which start at the first of these
/// samples): samples [count, rows, cols] from m [rows, count*cols].
fn split_side_by_side(m: &[f32], rows: usize, cols: usize, bias: Option<&[f32]>, add: Addends, samples: &mut [f32]) {
    let width = m.len() / rows;
    for (j, sample) in samples.chunks_exact_mut(rows * cols).enumerate() {
        for (i, (dst, src)) in sample.chunks_exact_mut(cols).zip(m.chunks_exact(width)).enumerate() {
            let b = bias.map_or(0.0, |b| b[i]) + add.shift.map_or(0.0, |s| s[j * rows + i]);
            let src = &src[j * cols..(j + 1) * cols];
            match add.residual {
                Some(r) => {
                    let r = &r[(j * rows + i) * cols..(j * rows + i + 1) * cols];
                    dst.iter_mut().zip(src).zip(r).for_each(|((d, &v), &r)| *d = v + b + r);
                }
                None => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + b),
            }
        }
    }
}

/// What a convolution adds to its output besides the bias, in the pass that
/// writes it (the U-Net's "+ time embedding" after a ResBlock's first
/// convolution and "+ skip" after its second):
///
///   y[n, k, q] = conv(x, w)[n, k, q] + bias[k] + shift[n, k] + residual[n, k, q].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Addends<'a> {
    /// [N, K]: one value per sample and output channel.
    pub(crate) shift: Option<&'a [f32]>,
    /// [N, K, Ho, Wo], the output's own shape.
    pub(crate) residual: Option<&'a [f32]>,
}

impl<'a> Addends<'a> {
    /// The addends of samples `samples` (each slice starts at the first of them).
    fn of(&self, g: &Geometry, samples: Range<usize>) -> Addends<'a> {
        Addends {
            shift: self.shift.map(|s| &s[samples.start * g.k..samples.end * g.k]),
            residual: self.residual.map(|r| &r[samples.start * g.output_len()..samples.end * g.output_len()]),
        }
    }

    /// bias[k] + shift[n, k] for one sample (the slice's first): the per-channel
    /// value a kernel adds to every output of that sample.
    fn sample_bias(&self, bias: Option<&[f32]>, k: usize) -> Option<Vec<f32>> {
        match (bias, self.shift) {
            (None, None) => None,
            (b, s) => Some((0..k).map(|i| b.map_or(0.0, |b| b[i]) + s.map_or(0.0, |s| s[i])).collect()),
        }
    }
}

/// Below this many flops a convolution runs on the calling thread (about 20 us of work).
const PARALLEL_FLOPS: usize = 1 << 21;

/// A GEMM is given at least this many columns (output positions) where the batch
/// allows: with fewer, as at 7x7 (49), matrixmultiply spends more time packing the
/// weight, which it does on every call, than multiplying. More is not better: each
/// extra sample in a group costs a copy in and out of the side-by-side layout.
/// Measured on the train step (batch 64): 1 -> tiny 259-277 images/s, 64 or 128 ->
/// ~320, 512 -> ~304, 2048 -> ~278 (small: 37-50, ~59.5, ~55, ~52).
const GEMM_COLUMNS: usize = 128;

/// The sum of the runs' partial weight gradients (`len` floats each), in run order.
fn sum_partials(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut partials = partials.into_iter();
    let mut sum = partials.next().unwrap_or_else(|| vec![0.0; len]);
    for partial in partials {
        sum.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
        pool::give(partial);
    }
    sum
}

/// The signature shared by [`sgemm`] and [`sgemm_parallel`].
type Gemm = fn(usize, usize, usize, &[f32], Transpose, &[f32], Transpose, f32, &mut [f32]);

/// How a call spreads its batch over rayon's threads and over GEMM calls.
struct Plan {
    /// Contiguous runs of samples, one rayon task each.
    runs: Vec<Range<usize>>,
    /// Samples per GEMM: their columns sit side by side in one [C*R*S, group*Ho*Wo]
    /// cols matrix. 1 unless Ho*Wo is small.
    group: usize,
    /// The GEMM a task calls: single-threaded when the runs already keep every
    /// thread busy, split across threads when the batch is too small for that.
    gemm: Gemm,
}

impl Plan {
    /// A few runs per thread, so that a thread slowed by other work on the machine
    /// does not hold up the rest.
    const RUNS_PER_THREAD: usize = 2;

    fn new(g: &Geometry) -> Plan {
        let threads = rayon::current_num_threads();
        let (tasks, gemm): (usize, Gemm) = if threads == 1 || g.flops() < PARALLEL_FLOPS {
            (1, sgemm)
        } else if g.n >= threads {
            (g.n.min(threads * Self::RUNS_PER_THREAD), sgemm)
        } else {
            (1, sgemm_parallel)
        };
        let per_run = g.n.div_ceil(tasks).max(1);
        let runs = (0..g.n).step_by(per_run).map(|first| first..(first + per_run).min(g.n)).collect();
        let group = GEMM_COLUMNS.div_ceil(g.positions()).min(per_run);
        Plan { runs, group, gemm }
    }

    /// Calls `task(samples, out_run)` for each run, where `out_run` is the part of
    /// `out` (`per_sample` values a sample) that those samples own.
    fn for_each_run(&self, out: &mut [f32], per_sample: usize, task: impl Fn(Range<usize>, &mut [f32]) + Sync + Send) {
        let mut pieces = Vec::with_capacity(self.runs.len());
        let mut rest = out;
        for run in &self.runs {
            let (piece, tail) = rest.split_at_mut(run.len() * per_sample);
            pieces.push((run.clone(), piece));
            rest = tail;
        }
        if pieces.len() == 1 {
            let (run, piece) = pieces.pop().expect("one piece");
            task(run, piece);
        } else {
            pieces.into_par_iter().for_each(|(run, piece)| task(run, piece));
        }
    }

    /// `task(samples)` for each run, in parallel, collecting the results in run order.
    fn map_runs<T: Send>(&self, task: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
        if self.runs.len() == 1 {
            vec![task(self.runs[0].clone())]
        } else {
            self.runs.par_iter().map(|run| task(run.clone())).collect()
        }
    }

    /// A run's samples in groups of at most `self.group`.
    fn groups(&self, run: Range<usize>) -> impl Iterator<Item = Range<usize>> {
        let (end, group) = (run.end, self.group);
        run.step_by(group).map(move |first| first..(first + group).min(end))
    }
}

/// The buffers one task reuses for every group of samples it handles.
struct Scratch {
    /// cols (forward, weight gradient) or d_cols (input gradient): [C*R*S, group*Ho*Wo].
    cols: Vec<f32>,
    /// y or d_out of a group laid side by side, [K, group*Ho*Wo]; unused when group is 1.
    side: Vec<f32>,
}

impl Scratch {
    fn new(g: &Geometry, plan: &Plan) -> Scratch {
        let columns = plan.group * g.positions();
        // A lone 1x1 sample needs no cols: the GEMMs read x_n itself.
        let cols = if g.is_pointwise() && plan.group == 1 { 0 } else { g.patch() * columns };
        let side = if plan.group == 1 { 0 } else { g.k * columns };
        // cols starts zeroed: im2col writes only the taps inside the image, the
        // padding stays 0. side is overwritten whole by each use.
        Scratch { cols: pool::take_zeroed(cols), side: pool::take(side) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.cols));
        pool::give(std::mem::take(&mut self.side));
    }
}

/// The cols matrix of the samples `group` of x [N, C, H, W], side by side:
/// [C*R*S, group.len()*Ho*Wo], built in `buf`, or x_n itself for a lone 1x1 sample.
fn group_cols<'a>(g: &Geometry, x: &'a [f32], group: Range<usize>, buf: &'a mut [f32]) -> &'a [f32] {
    let x_group = &x[group.start * g.input_len()..group.end * g.input_len()];
    if g.is_pointwise() && group.len() == 1 {
        return x_group;
    }
    let ld = group.len() * g.positions();
    for (j, x_n) in x_group.chunks_exact(g.input_len()).enumerate() {
        im2col(g, x_n, &mut buf[j * g.positions()..], ld);
    }
    &buf[..g.patch() * ld]
}

/// d_out [N, K, Ho, Wo] of the samples `group` as one matrix [K, group.len()*Ho*Wo],
/// laid side by side in `buf`, or d_out_n itself for a lone sample.
fn group_d_out<'a>(g: &Geometry, d_y: &'a [f32], group: Range<usize>, buf: &'a mut [f32]) -> &'a [f32] {
    let d_y_group = &d_y[group.start * g.output_len()..group.end * g.output_len()];
    if group.len() == 1 {
        return d_y_group;
    }
    let buf = &mut buf[..d_y_group.len()];
    side_by_side(d_y_group, g.k, g.positions(), buf);
    buf
}

impl Tensor {
    /// 2-D convolution: x `[N, C, H, W]`, weight `[K, C, R, S]`, bias `[K]` -> y `[N, K, Ho, Wo]`,
    /// Ho = (H + 2P - R) / stride + 1. Same numbers as `torch.nn.functional.conv2d`.
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
        self.conv2d_add(weight, bias, None, None, p)
    }

    /// conv2d(x, weight) + bias, plus `shift` `[N, K]` (one value per sample and
    /// output channel, broadcast over the positions) and `residual` (y's own
    /// shape), added as the output is written rather than in passes of their own.
    pub fn conv2d_add(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        shift: Option<&Tensor>,
        residual: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        let g = Geometry::new("conv2d", self.shape(), weight.shape(), p)?;
        if let Some(b) = bias {
            check_bias("conv2d", b, g.k)?;
        }
        if let Some(s) = shift {
            s.expect_shape("conv2d shift", &Shape::new([g.n, g.k]))?;
        }
        if let Some(r) = residual {
            r.expect_shape("conv2d residual", &g.output_shape())?;
        }
        let operands: Vec<&Tensor> = [Some(self), Some(weight), bias, shift, residual].into_iter().flatten().collect();
        if let Placement::Device(backend) = placement("conv2d", &operands)? {
            let mut y = backend.alloc(g.n * g.output_len())?;
            let [bias, shift, residual] = [bias, shift, residual].map(|t| t.map(Tensor::buffer));
            backend.conv2d(self.buffer(), weight.buffer(), bias, shift, residual, &mut *y, &g.device_shape())?;
            return Ok(Tensor::from_device(&backend, y, g.output_shape()));
        }
        let (x, w, bias) = (self.as_slice(), weight.as_slice(), bias.map(Tensor::as_slice));
        let add = Addends { shift: shift.map(Tensor::as_slice), residual: residual.map(Tensor::as_slice) };
        if let Some(direct) = direct::Direct::new(&g) {
            return Ok(Tensor::from_parts(direct.forward(&g, x, w, bias, add), g.output_shape()));
        }
        // Every element is written: by the bias fill and GEMM, or by the side-by-side split.
        let mut y = pool::take(g.n * g.output_len());
        if y.is_empty() {
            return Ok(Tensor::from_parts(y, g.output_shape()));
        }
        let plan = Plan::new(&g);
        plan.for_each_run(&mut y, g.output_len(), |run, y_run| {
            let mut scratch = Scratch::new(&g, &plan);
            for (group, y_group) in plan.groups(run).zip(y_run.chunks_mut(plan.group * g.output_len())) {
                let columns = group.len() * g.positions();
                let cols = group_cols(&g, x, group.clone(), &mut scratch.cols);
                let add = add.of(&g, group.clone());
                if group.len() == 1 {
                    // y_n starts as bias + shift, broadcast along each row, plus the
                    // residual; the GEMM adds onto it.
                    let sample_bias = add.sample_bias(bias, g.k);
                    let b_k = |k: usize| sample_bias.as_ref().map_or(0.0, |b| b[k]);
                    let rows = y_group.chunks_exact_mut(g.positions()).enumerate();
                    let beta = match add.residual {
                        Some(r) => {
                            for ((k, row), r) in rows.zip(r.chunks_exact(g.positions())) {
                                row.iter_mut().zip(r).for_each(|(y, &r)| *y = b_k(k) + r);
                            }
                            1.0
                        }
                        None if sample_bias.is_some() => {
                            rows.for_each(|(k, row)| row.fill(b_k(k)));
                            1.0
                        }
                        None => 0.0,
                    };
                    // y_n [K, Ho*Wo] = weight [K, C*R*S] cols [C*R*S, Ho*Wo]
                    (plan.gemm)(g.k, g.patch(), columns, w, Transpose::No, cols, Transpose::No, beta, y_group);
                } else {
                    // The same product for the whole group, y_side [K, group*Ho*Wo]; then each
                    // sample's columns go to its own y_n, plus the bias and addends.
                    let y_side = &mut scratch.side[..g.k * columns];
                    (plan.gemm)(g.k, g.patch(), columns, w, Transpose::No, cols, Transpose::No, 0.0, y_side);
                    split_side_by_side(y_side, g.k, g.positions(), bias, add, y_group);
                }
            }
        });
        Ok(Tensor::from_parts(y, g.output_shape()))
    }
}

/// d_input [N, C, H, W] from d_out [N, K, Ho, Wo] and weight [K, C, R, S]. The input's
/// shape is passed in because the output does not determine it: with stride 2, inputs
/// of height 13 and 14 both give Ho = 7.
pub fn conv2d_backward_input(d_out: &Tensor, weight: &Tensor, input_shape: &Shape, p: Conv2dParams) -> Result<Tensor> {
    let op = "conv2d_backward_input";
    let g = Geometry::new(op, input_shape, weight.shape(), p)?;
    g.check_d_out(op, d_out)?;
    if let Placement::Device(backend) = placement(op, &[d_out, weight])? {
        let mut d_x = backend.alloc(g.n * g.input_len())?;
        backend.conv2d_backward_input(d_out.buffer(), weight.buffer(), &mut *d_x, &g.device_shape())?;
        return Ok(Tensor::from_device(&backend, d_x, input_shape.clone()));
    }
    if g.stride == 1 && g.r == g.s && g.pad < g.r {
        return transposed_as_convolution(&g, d_out, weight);
    }
    let (d_y, w) = (d_out.as_slice(), weight.as_slice());
    // col2im adds into d_x, so it starts at zero.
    let mut d_x = pool::take_zeroed(g.n * g.input_len());
    if d_x.is_empty() {
        return Ok(Tensor::from_parts(d_x, input_shape.clone()));
    }
    let plan = Plan::new(&g);
    plan.for_each_run(&mut d_x, g.input_len(), |run, d_x_run| {
        let mut scratch = Scratch::new(&g, &plan);
        for (group, d_x_group) in plan.groups(run).zip(d_x_run.chunks_mut(plan.group * g.input_len())) {
            let columns = group.len() * g.positions();
            let d_y_group = group_d_out(&g, d_y, group.clone(), &mut scratch.side);
            if g.is_pointwise() && group.len() == 1 {
                // d_x_n [C, H*W] = weight^T [C, K] d_out_n [K, H*W]
                (plan.gemm)(g.c, g.k, columns, w, Transpose::Yes, d_y_group, Transpose::No, 0.0, d_x_group);
                continue;
            }
            // d_cols [C*R*S, group*Ho*Wo] = weight^T [C*R*S, K] d_out [K, group*Ho*Wo]
            let d_cols = &mut scratch.cols[..g.patch() * columns];
            (plan.gemm)(g.patch(), g.k, columns, w, Transpose::Yes, d_y_group, Transpose::No, 0.0, d_cols);
            for (j, d_x_n) in d_x_group.chunks_exact_mut(g.input_len()).enumerate() {
                col2im(&g, &mut d_cols[j * g.positions()..], columns, d_x_n);
            }
        }
    });
    Ok(Tensor::from_parts(d_x, input_shape.clone()))
}

/// The input gradient of a stride-1 convolution is itself a convolution:
///     d_x[c, y, x] = sum_{k,r,s} w[k, c, r, s] d_out[k, y + P - r, x + P - s]
///                  = conv(d_out, w')[c, y, x] with padding R - 1 - P,
/// where w'[c, k, r, s] = w[k, c, R-1-r, S-1-s] (channels swapped, taps flipped).
/// That runs on the forward path: one GEMM per sample whose inner dimension is
/// K*R*S, instead of a GEMM over only K followed by a scatter-add (col2im).
fn transposed_as_convolution(g: &Geometry, d_out: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (k, c, r, s) = (g.k, g.c, g.r, g.s);
    let w = weight.as_slice();
    let mut flipped = pool::take(w.len());
    for ki in 0..k {
        for ci in 0..c {
            for ri in 0..r {
                for si in 0..s {
                    flipped[((ci * k + ki) * r + ri) * s + si] =
                        w[((ki * c + ci) * r + (r - 1 - ri)) * s + (s - 1 - si)];
                }
            }
        }
    }
    let flipped = Tensor::from_parts(flipped, Shape::new([c, k, r, s]));
    d_out.conv2d(&flipped, None, Conv2dParams { stride: 1, padding: g.r - 1 - g.pad })
}

/// d_weight [K, C, R, S] = sum over the batch of d_out_n [K, Ho*Wo] cols_n^T, from
/// input [N, C, H, W] and d_out [N, K, Ho, Wo].
pub fn conv2d_backward_weight(input: &Tensor, d_out: &Tensor, weight_shape: &Shape, p: Conv2dParams) -> Result<Tensor> {
    let op = "conv2d_backward_weight";
    let g = Geometry::new(op, input.shape(), weight_shape, p)?;
    g.check_d_out(op, d_out)?;
    if let Placement::Device(backend) = placement(op, &[input, d_out])? {
        let mut d_w = backend.alloc(weight_shape.numel())?;
        backend.conv2d_backward_weight(input.buffer(), d_out.buffer(), &mut *d_w, &g.device_shape())?;
        return Ok(Tensor::from_device(&backend, d_w, weight_shape.clone()));
    }
    let (x, d_y) = (input.as_slice(), d_out.as_slice());
    if let Some(direct) = direct::Direct::new(&g).filter(|_| direct::Direct::has_weight_grad(&g)) {
        return Ok(Tensor::from_parts(direct.weight_grad(&g, x, d_y), weight_shape.clone()));
    }
    let weight_len = weight_shape.numel();
    let plan = Plan::new(&g);
    // Each run sums its own samples into a private d_weight (the GEMM's beta = 1
    // accumulates); the runs' partial sums are added at the end.
    let partials = plan.map_runs(|run| {
        let mut d_w = pool::take_zeroed(weight_len);
        let mut scratch = Scratch::new(&g, &plan);
        for group in plan.groups(run) {
            let columns = group.len() * g.positions();
            let cols = group_cols(&g, x, group.clone(), &mut scratch.cols);
            let d_y_group = group_d_out(&g, d_y, group, &mut scratch.side);
            // d_w [K, C*R*S] += d_out [K, group*Ho*Wo] cols^T [group*Ho*Wo, C*R*S]
            (plan.gemm)(g.k, columns, g.patch(), d_y_group, Transpose::No, cols, Transpose::Yes, 1.0, &mut d_w);
        }
        d_w
    });
    Ok(Tensor::from_parts(sum_partials(partials, weight_len), weight_shape.clone()))
}

/// d_bias `[K]` = d_out `[N, K, Ho, Wo]` summed over N, Ho and Wo (each `bias[k]` is added
/// to every output of channel k).
pub fn conv2d_backward_bias(d_out: &Tensor) -> Result<Tensor> {
    if let Placement::Device(_) = placement("conv2d_backward_bias", &[d_out])? {
        rank4("conv2d_backward_bias", d_out)?;
        return d_out.sum_axes(&[0, 2, 3], false);
    }
    let (k, per_sample) = sums_per_sample_and_channel("conv2d_backward_bias", d_out)?;
    let mut d_b = vec![0.0f64; k];
    for sums in &per_sample {
        d_b.iter_mut().zip(sums).for_each(|(d, s)| *d += s);
    }
    Ok(Tensor::from_parts(d_b.into_iter().map(|v| v as f32).collect(), Shape::new([k])))
}

/// d_shift `[N, K]` = d_out `[N, K, Ho, Wo]` summed over Ho and Wo: the gradient of
/// [`Tensor::conv2d_add`]'s shift, which is added to every output of its sample and channel.
pub fn conv2d_backward_shift(d_out: &Tensor) -> Result<Tensor> {
    if let Placement::Device(_) = placement("conv2d_backward_shift", &[d_out])? {
        rank4("conv2d_backward_shift", d_out)?;
        return d_out.sum_axes(&[2, 3], false);
    }
    let (k, per_sample) = sums_per_sample_and_channel("conv2d_backward_shift", d_out)?;
    let n = per_sample.len();
    Ok(Tensor::from_parts(per_sample.into_iter().flatten().map(|v| v as f32).collect(), Shape::new([n, k])))
}

/// That d_out has the rank of a convolution's output, [N, K, Ho, Wo].
fn rank4(op: &'static str, d_out: &Tensor) -> Result<[usize; 4]> {
    match *d_out.dims() {
        [n, k, ho, wo] => Ok([n, k, ho, wo]),
        _ => {
            Err(TensorError::invalid(op, format!("d_out must have rank 4 [N, K, Ho, Wo], got shape {}", d_out.shape())))
        }
    }
}

/// K, and for each sample the sum of each channel's plane of d_out [N, K, Ho, Wo]
/// (in f64, one sample per task).
fn sums_per_sample_and_channel(op: &'static str, d_out: &Tensor) -> Result<(usize, Vec<Vec<f64>>)> {
    let [n, k, ho, wo] = rank4(op, d_out)?;
    if k * ho * wo == 0 {
        return Ok((k, vec![vec![0.0f64; k]; n]));
    }
    let per_sample =
        |sample: &[f32]| -> Vec<f64> { sample.chunks_exact(ho * wo).map(|plane| sum_f32(plane) as f64).collect() };
    Ok((k, d_out.as_slice().par_chunks_exact(k * ho * wo).map(per_sample).collect()))
}

/// Every term of the defining sum of a convolution,
///     y[n, k, oy, ox] = bias[k] + sum_{c, r, s} w[k, c, r, s] x[n, c, oy*stride + r - P, ox*stride + s - P],
/// as flat indices (x, w, y) into the three buffers, in plain nested loops.
/// Taps that land in the padding read 0 and add nothing, so they are skipped.
/// The three references below are this loop with a different accumulation.
fn for_each_term(g: &Geometry, mut term: impl FnMut(usize, usize, usize)) {
    for n in 0..g.n {
        for k in 0..g.k {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let y = ((n * g.k + k) * g.ho + oy) * g.wo + ox;
                    for c in 0..g.c {
                        for r in 0..g.r {
                            for s in 0..g.s {
                                let (Some(iy), Some(ix)) = (g.source(oy, r, g.h), g.source(ox, s, g.w)) else {
                                    continue;
                                };
                                term(((n * g.c + c) * g.h + iy) * g.w + ix, ((k * g.c + c) * g.r + r) * g.s + s, y);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The specification of [`Tensor::conv2d`]: the defining sum, accumulated in f64.
pub fn conv2d_reference(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    let g = Geometry::new("conv2d_reference", x.shape(), weight.shape(), p)?;
    if let Some(b) = bias {
        check_bias("conv2d_reference", b, g.k)?;
    }
    let (xs, ws) = (x.as_slice(), weight.as_slice());
    let mut y = vec![0.0f64; g.n * g.output_len()];
    if let Some(b) = bias {
        for (i, v) in y.iter_mut().enumerate() {
            *v = b.as_slice()[(i / g.positions()) % g.k] as f64;
        }
    }
    for_each_term(&g, |xi, wi, yi| y[yi] += ws[wi] as f64 * xs[xi] as f64);
    Ok(Tensor::from_parts(y.into_iter().map(|v| v as f32).collect(), g.output_shape()))
}

/// The specification of [`conv2d_backward_input`]: each x[n, c, iy, ix] collects
/// w[k, c, r, s] * d_out[n, k, oy, ox] over every term of the sum it appeared in.
pub fn conv2d_backward_input_reference(
    d_out: &Tensor,
    weight: &Tensor,
    input_shape: &Shape,
    p: Conv2dParams,
) -> Result<Tensor> {
    let op = "conv2d_backward_input_reference";
    let g = Geometry::new(op, input_shape, weight.shape(), p)?;
    g.check_d_out(op, d_out)?;
    let (d_ys, ws) = (d_out.as_slice(), weight.as_slice());
    let mut d_x = vec![0.0f64; g.n * g.input_len()];
    for_each_term(&g, |xi, wi, yi| d_x[xi] += ws[wi] as f64 * d_ys[yi] as f64);
    Ok(Tensor::from_parts(d_x.into_iter().map(|v| v as f32).collect(), input_shape.clone()))
}

/// The specification of [`conv2d_backward_weight`]: d_weight[k, c, r, s] collects
/// x[n, c, iy, ix] * d_out[n, k, oy, ox] over every term of the sum that used that weight.
pub fn conv2d_backward_weight_reference(
    input: &Tensor,
    d_out: &Tensor,
    weight_shape: &Shape,
    p: Conv2dParams,
) -> Result<Tensor> {
    let op = "conv2d_backward_weight_reference";
    let g = Geometry::new(op, input.shape(), weight_shape, p)?;
    g.check_d_out(op, d_out)?;
    let (xs, d_ys) = (input.as_slice(), d_out.as_slice());
    let mut d_w = vec![0.0f64; weight_shape.numel()];
    for_each_term(&g, |xi, wi, yi| d_w[wi] += xs[xi] as f64 * d_ys[yi] as f64);
    Ok(Tensor::from_parts(d_w.into_iter().map(|v| v as f32).collect(), weight_shape.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn params(stride: usize, padding: usize) -> Conv2dParams {
        Conv2dParams { stride, padding }
    }

    /// f32 sums of `terms` products of N(0, 1) numbers: the error grows like sqrt(terms).
    fn close(what: &str, fast: &Tensor, reference: &Tensor, terms: usize) {
        let tol = 1e-5 * (terms.max(1) as f32).sqrt() * 4.0;
        let err = fast.max_abs_diff(reference).unwrap();
        assert!(err < tol, "{what}: error {err} > {tol}");
    }

    /// One convolution to test: x [n, c, h, w], weight [k, c, r, s].
    #[derive(Debug, Clone, Copy)]
    struct Case {
        n: usize,
        c: usize,
        k: usize,
        h: usize,
        w: usize,
        r: usize,
        s: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    }

    /// Runs the four fast kernels and their references on random data and compares them.
    fn check_against_reference(case: Case, seed: u64) {
        let Case { n, c, k, h, w, r, s, stride, pad, bias } = case;
        let p = params(stride, pad);
        let mut rng = StdRng::seed_from_u64(seed);
        let x = Tensor::randn([n, c, h, w], &mut rng);
        let weight = Tensor::randn([k, c, r, s], &mut rng);
        let b = bias.then(|| Tensor::randn([k], &mut rng));
        let y = x.conv2d(&weight, b.as_ref(), p).unwrap();
        close(&format!("forward {case:?}"), &y, &conv2d_reference(&x, &weight, b.as_ref(), p).unwrap(), c * r * s);

        let d_out = Tensor::randn(y.shape().clone(), &mut rng);
        let d_x = conv2d_backward_input(&d_out, &weight, x.shape(), p).unwrap();
        let d_x_ref = conv2d_backward_input_reference(&d_out, &weight, x.shape(), p).unwrap();
        close(&format!("backward input {case:?}"), &d_x, &d_x_ref, k * r * s);

        let d_w = conv2d_backward_weight(&x, &d_out, weight.shape(), p).unwrap();
        let d_w_ref = conv2d_backward_weight_reference(&x, &d_out, weight.shape(), p).unwrap();
        let [_, _, ho, wo] = *y.dims() else { unreachable!() };
        close(&format!("backward weight {case:?}"), &d_w, &d_w_ref, n * ho * wo);

        // d_bias[k] = sum over n, oy, ox of d_out[n, k, oy, ox], summed here in f64.
        let mut d_b_ref = vec![0.0f64; k];
        for (i, &v) in d_out.as_slice().iter().enumerate() {
            d_b_ref[(i / (ho * wo)) % k] += v as f64;
        }
        let d_b_ref = Tensor::from_vec(d_b_ref.into_iter().map(|v| v as f32).collect(), [k]).unwrap();
        close(&format!("backward bias {case:?}"), &conv2d_backward_bias(&d_out).unwrap(), &d_b_ref, n * ho * wo);
    }

    /// check_against_reference on each case, with seeds first_seed, first_seed + 1, ...
    fn check_cases(cases: &[Case], first_seed: u64) {
        for (seed, &case) in (first_seed..).zip(cases) {
            check_against_reference(case, seed);
        }
    }

    #[test]
    fn fast_kernels_match_the_reference_on_many_shapes() {
        let mut cases = Vec::new();
        for (r, s) in [(1, 1), (3, 3), (2, 3)] {
            for stride in [1, 2] {
                for pad in [0, 1] {
                    for (h, w) in [(7, 7), (5, 6)] {
                        for (n, c, k) in [(1, 1, 1), (3, 2, 5), (3, 4, 3)] {
                            let bias = (n + r + stride + pad) % 2 == 0;
                            cases.push(Case { n, c, k, h, w, r, s, stride, pad, bias });
                        }
                    }
                }
            }
        }
        check_cases(&cases, 0);
    }

    #[test]
    fn fast_kernels_match_the_reference_at_unet_shapes() {
        // Large enough to take the parallel paths: split over the batch, and (N = 1)
        // one GEMM split across threads.
        let cases = [
            Case { n: 4, c: 16, k: 16, h: 28, w: 28, r: 3, s: 3, stride: 1, pad: 1, bias: true },
            Case { n: 5, c: 16, k: 32, h: 14, w: 14, r: 3, s: 3, stride: 2, pad: 1, bias: false },
            Case { n: 3, c: 32, k: 16, h: 7, w: 7, r: 1, s: 1, stride: 1, pad: 0, bias: true },
            Case { n: 1, c: 32, k: 32, h: 28, w: 28, r: 3, s: 3, stride: 1, pad: 1, bias: true },
            Case { n: 1, c: 64, k: 64, h: 28, w: 28, r: 1, s: 1, stride: 1, pad: 0, bias: false },
            // 7x7: several samples share one GEMM, and 13 samples leave a short last group.
            Case { n: 13, c: 16, k: 16, h: 7, w: 7, r: 3, s: 3, stride: 1, pad: 1, bias: true },
            Case { n: 13, c: 32, k: 96, h: 7, w: 7, r: 1, s: 1, stride: 1, pad: 0, bias: true },
        ];
        check_cases(&cases, 100);
    }

    /// Shapes for the direct kernels: a sample per row (28x28), samples side by
    /// side (14x14, 7x7) with a short last group, output channels in whole and
    /// partial tiles of 8 (K = 12, and K = 1 as in the output convolution),
    /// input channels in 1 to 5 vectors of 16 (whole and partial tiles of 3
    /// vectors), 1x1 convolutions (forward only; their weight gradient is a
    /// GEMM), and input channels the weight gradient can't take (C = 24).
    const DIRECT_CASES: [Case; 9] = [
        Case { n: 2, c: 16, k: 8, h: 28, w: 28, r: 3, s: 3, stride: 1, pad: 1, bias: true },
        Case { n: 7, c: 32, k: 24, h: 14, w: 14, r: 3, s: 3, stride: 1, pad: 1, bias: false },
        Case { n: 19, c: 48, k: 16, h: 7, w: 7, r: 3, s: 3, stride: 1, pad: 1, bias: true },
        Case { n: 3, c: 80, k: 8, h: 5, w: 6, r: 3, s: 3, stride: 1, pad: 1, bias: true },
        Case { n: 3, c: 16, k: 12, h: 7, w: 7, r: 3, s: 3, stride: 1, pad: 1, bias: true },
        Case { n: 3, c: 24, k: 16, h: 7, w: 7, r: 3, s: 3, stride: 1, pad: 1, bias: false },
        Case { n: 2, c: 32, k: 1, h: 28, w: 28, r: 3, s: 3, stride: 1, pad: 1, bias: true },
        Case { n: 5, c: 32, k: 96, h: 7, w: 7, r: 1, s: 1, stride: 1, pad: 0, bias: true },
        Case { n: 2, c: 48, k: 20, h: 14, w: 14, r: 1, s: 1, stride: 1, pad: 0, bias: false },
    ];

    #[test]
    fn the_direct_kernels_match_the_reference() {
        check_cases(&DIRECT_CASES, 300);
    }

    /// The comparisons above test the direct kernels only where this CPU picks
    /// them: on x86-64 with AVX-512 it must, for the shapes they can take.
    #[test]
    fn the_direct_kernels_are_used_where_they_apply() {
        let avx512 = cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx512f");
        let forced_off = std::env::var_os("DDPM_CONV").is_some_and(|v| v == "gemm");
        for case in DIRECT_CASES {
            let input = Shape::new([case.n, case.c, case.h, case.w]);
            let weight = Shape::new([case.k, case.c, case.r, case.s]);
            let g = Geometry::new("test", &input, &weight, params(case.stride, case.pad)).unwrap();
            let direct = direct::Direct::new(&g).is_some();
            assert_eq!(direct, avx512 && !forced_off, "{case:?}");
            assert_eq!(
                direct && direct::Direct::has_weight_grad(&g),
                direct && case.c % 16 == 0 && case.r == 3,
                "{case:?}"
            );
        }
        let other = |r: usize, stride: usize, pad: usize| {
            let g = Geometry::new("test", &Shape::new([2, 16, 8, 8]), &Shape::new([16, 16, r, r]), params(stride, pad));
            direct::Direct::new(&g.unwrap()).is_none()
        };
        assert!(other(3, 2, 1) && other(3, 1, 0) && other(1, 1, 1) && other(5, 1, 2));
    }

    #[test]
    fn kernels_that_overhang_a_tiny_image() {
        // Most taps land in the padding, and whole rows of cols are zero; proptest
        // once found an index overflow at the first of these.
        let cases = [
            Case { n: 1, c: 1, k: 1, h: 1, w: 1, r: 1, s: 3, stride: 1, pad: 1, bias: false },
            Case { n: 1, c: 1, k: 1, h: 1, w: 1, r: 1, s: 1, stride: 1, pad: 2, bias: false },
            Case { n: 2, c: 2, k: 3, h: 2, w: 1, r: 3, s: 3, stride: 1, pad: 1, bias: true },
            Case { n: 2, c: 1, k: 2, h: 1, w: 2, r: 3, s: 3, stride: 2, pad: 2, bias: false },
        ];
        check_cases(&cases, 200);
    }

    #[test]
    fn the_fused_adds_are_the_adds() {
        // conv2d_add(x, w, b, shift, residual) = conv2d(x, w, b) + shift[n, k] + residual,
        // on every path: direct with one sample a row (28x28) and side by side
        // (7x7), 1x1, and im2col + GEMM (stride 2, and a 5x5 kernel).
        let cases = [
            (3, 8, 12, 28, 3, 1, 1),
            (20, 16, 8, 7, 3, 1, 1),
            (5, 16, 24, 7, 1, 1, 0),
            (4, 6, 10, 9, 3, 2, 1),
            (3, 4, 5, 6, 5, 1, 2),
        ];
        let mut rng = StdRng::seed_from_u64(41);
        for (n, c, k, hw, r, stride, pad) in cases {
            let p = params(stride, pad);
            let x = Tensor::randn([n, c, hw, hw], &mut rng);
            let w = Tensor::randn([k, c, r, r], &mut rng);
            let b = Tensor::randn([k], &mut rng);
            let plain = x.conv2d(&w, Some(&b), p).unwrap();
            let shift = Tensor::randn([n, k], &mut rng);
            let residual = Tensor::randn(plain.shape().clone(), &mut rng);
            let positions = plain.numel() / (n * k);
            let expected: Vec<f32> = (0..plain.numel())
                .map(|i| plain.as_slice()[i] + shift.as_slice()[i / positions] + residual.as_slice()[i])
                .collect();
            let expected = Tensor::from_vec(expected, plain.shape().clone()).unwrap();
            for (s, res) in [(Some(&shift), Some(&residual)), (Some(&shift), None), (None, Some(&residual))] {
                let fused = x.conv2d_add(&w, Some(&b), s, res, p).unwrap();
                let want = match (s, res) {
                    (Some(_), Some(_)) => expected.clone(),
                    (Some(_), None) => expected.sub(&residual).unwrap(),
                    _ => plain.add(&residual).unwrap(),
                };
                let scale = 1.0 + want.as_slice().iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let err = fused.max_abs_diff(&want).unwrap();
                assert!(err <= 1e-5 * scale, "n {n} c {c} k {k} {hw}x{hw} r {r} stride {stride}: {err}");
            }
            // Without a bias, the shift alone is the per-sample bias.
            let no_bias = x.conv2d_add(&w, None, Some(&shift), None, p).unwrap();
            let want = x.conv2d(&w, None, p).unwrap();
            let want: Vec<f32> =
                want.as_slice().iter().enumerate().map(|(i, v)| v + shift.as_slice()[i / positions]).collect();
            assert!(no_bias.max_abs_diff(&Tensor::from_vec(want, plain.shape().clone()).unwrap()).unwrap() < 1e-4);
            // Misshaped addends are refused.
            assert!(x.conv2d_add(&w, Some(&b), Some(&Tensor::zeros([n, k + 1])), None, p).is_err());
            assert!(x.conv2d_add(&w, Some(&b), None, Some(&Tensor::zeros([n, k, 1, 1])), p).is_err());
        }
    }

    #[test]
    fn the_shift_gradient_sums_each_samples_positions() {
        let d_out = Tensor::from_vec((0..2 * 3 * 4).map(|v| v as f32).collect(), [2, 3, 2, 2]).unwrap();
        // Sample 0: channels 0..3 hold 0..4, 4..8, 8..12; sample 1 continues from 12.
        let d_shift = conv2d_backward_shift(&d_out).unwrap();
        assert_eq!(d_shift.dims(), &[2, 3]);
        assert_eq!(d_shift.to_vec(), vec![6., 22., 38., 54., 70., 86.]);
        assert_eq!(conv2d_backward_bias(&d_out).unwrap().to_vec(), vec![60., 92., 124.]);
        assert!(conv2d_backward_shift(&Tensor::zeros([2, 3])).is_err());
    }

    #[test]
    fn a_nan_reaches_only_the_outputs_that_read_it() {
        // The direct kernel loads whole vectors and switches off the lanes that
        // fall in the padding; a NaN in such a lane (here at the end of a row, whose
        // next flat neighbour starts the row below) must not leak into outputs
        // whose window does not hold it. One NaN at (y, x) of channel 1 of sample 1
        // makes NaN exactly the outputs of sample 1 within one pixel of it.
        let (n, c, k, h, w) = (3, 16, 8, 28, 28);
        for (ny, nx) in [(5, w - 1), (9, 0), (0, 13), (h - 1, w - 1)] {
            let mut x = Tensor::randn([n, c, h, w], &mut StdRng::seed_from_u64(7)).to_vec();
            x[((c + 1) * h + ny) * w + nx] = f32::NAN; // sample 1, channel 1
            let x = Tensor::from_vec(x, [n, c, h, w]).unwrap();
            let weight = Tensor::randn([k, c, 3, 3], &mut StdRng::seed_from_u64(8));
            let y = x.conv2d(&weight, None, params(1, 1)).unwrap().to_vec();
            for (i, v) in y.iter().enumerate() {
                let (sample, oy, ox) = (i / (k * h * w), i / w % h, i % w);
                let reads_it = sample == 1 && oy.abs_diff(ny) <= 1 && ox.abs_diff(nx) <= 1;
                assert_eq!(v.is_nan(), reads_it, "output {i} (sample {sample}, y {oy}, x {ox}), NaN at ({ny}, {nx})");
            }
        }
    }

    #[test]
    fn a_hand_computed_example() {
        // x is 1..=16 on a 4x4 grid, the kernel is all ones: with padding 1, each
        // output is the sum of the 3x3 neighbourhood that lies inside the grid.
        //   1  2  3  4
        //   5  6  7  8
        //   9 10 11 12
        //  13 14 15 16
        let x = Tensor::from_vec((1..=16).map(|v| v as f32).collect(), [1, 1, 4, 4]).unwrap();
        let ones = Tensor::ones([1, 1, 3, 3]);
        let y = x.conv2d(&ones, None, params(1, 1)).unwrap();
        let expected = [14., 24., 30., 22., 33., 54., 63., 45., 57., 90., 99., 69., 46., 72., 78., 54.];
        assert_eq!(y.to_vec(), expected);
        // Stride 2 keeps the outputs centred on (0, 0), (0, 2), (2, 0), (2, 2); a bias adds 0.5.
        let bias = Tensor::from_vec(vec![0.5], [1]).unwrap();
        let y2 = x.conv2d(&ones, Some(&bias), params(2, 1)).unwrap();
        assert_eq!(y2.dims(), &[1, 1, 2, 2]);
        assert_eq!(y2.to_vec(), vec![14.5, 30.5, 57.5, 99.5]);
        // The all-ones d_out sends back to each pixel the number of windows it sat in.
        let d_x = conv2d_backward_input(&Tensor::ones([1, 1, 4, 4]), &ones, x.shape(), params(1, 1)).unwrap();
        let counts = [4., 6., 6., 4., 6., 9., 9., 6., 6., 9., 9., 6., 4., 6., 6., 4.];
        assert_eq!(d_x.to_vec(), counts);
    }

    #[test]
    fn backward_functions_are_adjoints_of_the_forward() {
        // conv2d without bias is linear in x and in weight, so for any g of y's shape
        //   d/dx <conv(x, w), g> = backward_input(g, w)   gives <conv(x, w), g> = <x, backward_input(g, w)>,
        //   d/dw <conv(x, w), g> = backward_weight(x, g)  gives <conv(x, w), g> = <w, backward_weight(x, g)>.
        fn dot(a: &Tensor, b: &Tensor) -> f64 {
            a.as_slice().iter().zip(b.as_slice()).map(|(&a, &b)| a as f64 * b as f64).sum()
        }
        let mut rng = StdRng::seed_from_u64(7);
        for (c, k, h, w, r, stride, pad) in [(3, 4, 9, 8, 3, 1, 1), (2, 5, 9, 8, 3, 2, 1), (6, 2, 5, 5, 1, 1, 0)] {
            let p = params(stride, pad);
            let x = Tensor::randn([2, c, h, w], &mut rng);
            let weight = Tensor::randn([k, c, r, r], &mut rng);
            let y = x.conv2d(&weight, None, p).unwrap();
            let g = Tensor::randn(y.shape().clone(), &mut rng);
            let lhs = dot(&y, &g);
            let via_input = dot(&x, &conv2d_backward_input(&g, &weight, x.shape(), p).unwrap());
            let via_weight = dot(&weight, &conv2d_backward_weight(&x, &g, weight.shape(), p).unwrap());
            let tol = 1e-4 * (y.numel() as f64).sqrt() * (c * r * r) as f64;
            assert!((lhs - via_input).abs() < tol, "<conv(x), g> = {lhs} but <x, d_input> = {via_input}");
            assert!((lhs - via_weight).abs() < tol, "<conv(x), g> = {lhs} but <w, d_weight> = {via_weight}");
        }
    }

    #[test]
    fn stride_two_needs_the_input_shape_to_go_back() {
        // Heights 13 and 14 both give Ho = 7 at stride 2, padding 1, kernel 3; the
        // gradient of the 13-row input has 13 rows.
        let mut rng = StdRng::seed_from_u64(8);
        let weight = Tensor::randn([2, 3, 3, 3], &mut rng);
        let d_out = Tensor::randn([1, 2, 7, 7], &mut rng);
        for h in [13, 14] {
            let shape = Shape::new([1, 3, h, 13]);
            let d_x = conv2d_backward_input(&d_out, &weight, &shape, params(2, 1)).unwrap();
            close(
                "stride 2",
                &d_x,
                &conv2d_backward_input_reference(&d_out, &weight, &shape, params(2, 1)).unwrap(),
                18,
            );
        }
    }

    #[test]
    fn an_empty_batch_gives_empty_results() {
        let x = Tensor::zeros([0, 2, 5, 5]);
        let weight = Tensor::ones([3, 2, 3, 3]);
        let y = x.conv2d(&weight, None, params(1, 1)).unwrap();
        assert_eq!(y.dims(), &[0, 3, 5, 5]);
        assert_eq!(conv2d_backward_input(&y, &weight, x.shape(), params(1, 1)).unwrap().dims(), &[0, 2, 5, 5]);
        let d_w = conv2d_backward_weight(&x, &y, weight.shape(), params(1, 1)).unwrap();
        assert_eq!(d_w.to_vec(), vec![0.0; 54]);
        assert_eq!(conv2d_backward_bias(&y).unwrap().to_vec(), vec![0.0; 3]);
    }

    #[test]
    fn bad_shapes_are_errors_with_a_message() {
        let x = Tensor::zeros([2, 3, 5, 5]);
        let w = Tensor::zeros([4, 3, 3, 3]);
        let err = |r: Result<Tensor>| r.unwrap_err().to_string();
        assert_eq!(
            err(Tensor::zeros([3, 5, 5]).conv2d(&w, None, params(1, 1))),
            "conv2d: input must have rank 4 [N, C, H, W], got shape [3, 5, 5]"
        );
        assert_eq!(
            err(x.conv2d(&Tensor::zeros([4, 3, 3]), None, params(1, 1))),
            "conv2d: weight must have rank 4 [K, C, R, S], got shape [4, 3, 3]"
        );
        assert_eq!(
            err(x.conv2d(&Tensor::zeros([4, 2, 3, 3]), None, params(1, 1))),
            "conv2d: input [2, 3, 5, 5] has 3 channels but weight [4, 2, 3, 3] expects 2"
        );
        assert_eq!(
            err(x.conv2d(&w, Some(&Tensor::zeros([3])), params(1, 1))),
            "conv2d: bias must have shape [4] (one per output channel), got [3]"
        );
        assert_eq!(
            err(x.conv2d(&Tensor::zeros([4, 3, 7, 7]), None, params(1, 0))),
            "conv2d: kernel 7x7 is larger than the padded input 5x5 (input 5x5, padding 0)"
        );
        assert_eq!(err(x.conv2d(&w, None, params(0, 1))), "conv2d: stride must be at least 1");
        assert_eq!(err(x.conv2d(&Tensor::zeros([4, 3, 0, 3]), None, params(1, 1))), "conv2d: kernel 0x3 is empty");
        // The gradients check d_out against the shape the forward would produce.
        let d_out = Tensor::zeros([2, 4, 4, 4]);
        assert_eq!(
            err(conv2d_backward_input(&d_out, &w, x.shape(), params(1, 1))),
            "conv2d_backward_input: d_out has shape [2, 4, 4, 4] but the convolution outputs [2, 4, 5, 5]"
        );
        assert_eq!(
            err(conv2d_backward_weight(&x, &d_out, w.shape(), params(1, 1))),
            "conv2d_backward_weight: d_out has shape [2, 4, 4, 4] but the convolution outputs [2, 4, 5, 5]"
        );
        assert_eq!(
            err(conv2d_backward_bias(&Tensor::zeros([4, 4]))),
            "conv2d_backward_bias: d_out must have rank 4 [N, K, Ho, Wo], got shape [4, 4]"
        );
        assert!(conv2d_reference(&x, &w, None, params(0, 0)).is_err());
    }

    proptest! {
        #[test]
        fn any_small_convolution_matches_the_reference(
            n in 1usize..4, c in 1usize..5, k in 1usize..5, h in 1usize..10, w in 1usize..10,
            r in 1usize..4, s in 1usize..4, stride in 1usize..4, pad in 0usize..3, bias: bool, seed in 0u64..1000,
        ) {
            prop_assume!(r <= h + 2 * pad && s <= w + 2 * pad);
            check_against_reference(Case { n, c, k, h, w, r, s, stride, pad, bias }, seed);
        }
    }
}
