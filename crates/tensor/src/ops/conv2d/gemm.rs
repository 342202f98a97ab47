//! im2col + GEMM: every convolution that the direct kernels don't take (stride 2,
//! kernels other than 3x3 and 1x1, the weight gradients they leave, and every
//! convolution on a CPU without AVX-512), as the module doc's products of weight,
//! cols and d_out (y, d_cols and d_weight; d_bias is a plain sum, in `backward.rs`). [`forward`], [`backward_input`] and [`backward_weight`]
//! take checked host slices; the entry points in `mod.rs` and `backward.rs` call them.

use std::ops::Range;

use super::geometry::{flat_shift, Geometry};
use super::plan::{side_by_side, split_side_by_side, sum_partials, Plan};
use super::Addends;
use crate::ops::Transpose;
use crate::pool;

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

/// y = conv2d(x, w) + bias + the addends, [N, K, Ho, Wo].
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, add: Addends) -> Vec<f32> {
    // Every element is written: by the bias fill and GEMM, or by the side-by-side split.
    let mut y = pool::take(g.n * g.output_len());
    if y.is_empty() {
        return y;
    }
    let plan = Plan::new(g);
    plan.for_each_run(&mut y, g.output_len(), |run, y_run| {
        let mut scratch = Scratch::new(g, &plan);
        for (group, y_group) in plan.groups(run).zip(y_run.chunks_mut(plan.group * g.output_len())) {
            let columns = group.len() * g.positions();
            let cols = group_cols(g, x, group.clone(), &mut scratch.cols);
            let add = add.of(g, group.clone());
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
    y
}

/// d_input [N, C, H, W] from d_out [N, K, Ho, Wo] and weight [K, C, R, S]:
/// d_cols = weight^T d_out_n, added back onto d_input_n by col2im.
pub(super) fn backward_input(g: &Geometry, d_y: &[f32], w: &[f32]) -> Vec<f32> {
    // col2im adds into d_x, so it starts at zero.
    let mut d_x = pool::take_zeroed(g.n * g.input_len());
    if d_x.is_empty() {
        return d_x;
    }
    let plan = Plan::new(g);
    plan.for_each_run(&mut d_x, g.input_len(), |run, d_x_run| {
        let mut scratch = Scratch::new(g, &plan);
        for (group, d_x_group) in plan.groups(run).zip(d_x_run.chunks_mut(plan.group * g.input_len())) {
            let columns = group.len() * g.positions();
            let d_y_group = group_d_out(g, d_y, group.clone(), &mut scratch.side);
            if g.is_pointwise() && group.len() == 1 {
                // d_x_n [C, H*W] = weight^T [C, K] d_out_n [K, H*W]
                (plan.gemm)(g.c, g.k, columns, w, Transpose::Yes, d_y_group, Transpose::No, 0.0, d_x_group);
                continue;
            }
            // d_cols [C*R*S, group*Ho*Wo] = weight^T [C*R*S, K] d_out [K, group*Ho*Wo]
            let d_cols = &mut scratch.cols[..g.patch() * columns];
            (plan.gemm)(g.patch(), g.k, columns, w, Transpose::Yes, d_y_group, Transpose::No, 0.0, d_cols);
            for (j, d_x_n) in d_x_group.chunks_exact_mut(g.input_len()).enumerate() {
                col2im(g, &mut d_cols[j * g.positions()..], columns, d_x_n);
            }
        }
    });
    d_x
}

/// d_weight [K, C, R, S] = sum over the batch of d_out_n [K, Ho*Wo] cols_n^T: one
/// GEMM per group of samples, summed per run, then across the runs.
pub(super) fn backward_weight(g: &Geometry, x: &[f32], d_y: &[f32]) -> Vec<f32> {
    let weight_len = g.k * g.patch();
    let plan = Plan::new(g);
    // Each run sums its own samples into a private d_weight (the GEMM's beta = 1
    // accumulates); the runs' partial sums are added at the end.
    let partials = plan.map_runs(|run| {
        let mut d_w = pool::take_zeroed(weight_len);
        let mut scratch = Scratch::new(g, &plan);
        for group in plan.groups(run) {
            let columns = group.len() * g.positions();
            let cols = group_cols(g, x, group.clone(), &mut scratch.cols);
            let d_y_group = group_d_out(g, d_y, group, &mut scratch.side);
            // d_w [K, C*R*S] += d_out [K, group*Ho*Wo] cols^T [group*Ho*Wo, C*R*S]
            (plan.gemm)(g.k, columns, g.patch(), d_y_group, Transpose::No, cols, Transpose::Yes, 1.0, &mut d_w);
        }
        d_w
    });
    sum_partials(partials, weight_len)
}
