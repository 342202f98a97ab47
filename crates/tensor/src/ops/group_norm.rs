//! Group normalisation (Wu & He, 2018), fused forward and backward.
//!
//! x is [N, C, H, W]; the C channels are cut into G groups of C/G channels.
//! For each sample n and group g, over its M = (C/G) H W elements:
//!     mu = mean(x),  var = mean((x - mu)^2)  (biased, as PyTorch),
//!     xhat = (x - mu) * rstd,  rstd = 1 / sqrt(var + eps),
//!     y = gamma_c xhat + beta_c            (gamma, beta are [C]).
//! Backward, with g = dL/dy and dxhat = g gamma_c:
//!     dbeta_c  = sum_{n,h,w} g,      dgamma_c = sum_{n,h,w} g xhat,
//!     dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))   (means over the group).
//!
//! The U-Net always follows a group norm by SiLU, silu(z) = z sigmoid(z), except in
//! attention. [`Tensor::group_norm_silu`] fuses the two: y = silu(gamma xhat + beta)
//! is written in the same pass, so the normalised tensor never goes to memory
//! (these two ops were 30% of a `tiny` train step, all of it memory traffic).
//! Its backward first turns g into dz = g silu'(z), then proceeds as above with dz.

use rayon::prelude::*;

use super::lanes::{dot_f32, sum_f32, sum_sq_dev_f32};
use super::wide::wide;

use ndarray::{s, Array3, Ix1, IxDyn, Zip};

use crate::backend::NormShape;
use crate::interop::{from_f64, to_f64};
use crate::{placement, Placement, Result, Shape, Tensor, TensorError};

/// What the forward pass keeps for the backward pass: per (n, g), [N * G]
/// each, on the input's device.
#[derive(Debug, Clone)]
pub struct GroupNormStats {
    pub mean: Tensor,
    pub rstd: Tensor,
}

/// Checks x [N, C, H, W] (or [N, C]) against groups, gamma [C] and beta [C];
/// returns (N, C, H*W).
fn check(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor) -> Result<(usize, usize, usize)> {
    let (n, c) = match x.dims() {
        [n, c, ..] if x.rank() >= 2 => (*n, *c),
        _ => return Err(TensorError::invalid("group_norm", format!("needs [N, C, ...], got {}", x.shape()))),
    };
    if groups == 0 || c % groups != 0 {
        return Err(TensorError::invalid("group_norm", format!("{c} channels cannot be cut into {groups} groups")));
    }
    gamma.expect_shape("group_norm (weight)", &Shape::new([c]))?;
    beta.expect_shape("group_norm (bias)", &Shape::new([c]))?;
    Ok((n, c, x.numel() / (n * c).max(1)))
}

/// What the fused kernel applies after the normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    Identity,
    Silu,
}

impl Activation {
    fn name(self) -> &'static str {
        match self {
            Activation::Identity => "group_norm",
            Activation::Silu => "group_norm_silu",
        }
    }

    #[inline(always)]
    fn forward(self, z: f32) -> f32 {
        match self {
            Activation::Identity => z,
            Activation::Silu => z * super::sigmoid(z),
        }
    }

    /// g * d act(z) / dz; silu'(z) = s (1 + z (1 - s)) with s = sigmoid(z).
    #[inline(always)]
    fn backward(self, z: f32, g: f32) -> f32 {
        match self {
            Activation::Identity => g,
            Activation::Silu => {
                let s = super::sigmoid(z);
                g * s * (1.0 + z * (1.0 - s))
            }
        }
    }
}

impl Tensor {
    /// y = GroupNorm(x) and the statistics that its backward needs.
    pub fn group_norm(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, GroupNormStats)> {
        group_norm_forward(self, groups, gamma, beta, eps, Activation::Identity)
    }

    /// y = silu(GroupNorm(x)) in one pass, and the statistics of the norm.
    pub fn group_norm_silu(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, GroupNormStats)> {
        group_norm_forward(self, groups, gamma, beta, eps, Activation::Silu)
    }
}

fn group_norm_forward(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    act: Activation,
) -> Result<(Tensor, GroupNormStats)> {
    let (n, c, hw) = check(x, groups, gamma, beta)?;
    if let Placement::Device(backend) = placement(act.name(), &[x, gamma, beta])? {
        let s = NormShape { n, c, hw, groups };
        let (mut y, mut mean, mut rstd) =
            (backend.alloc(x.numel())?, backend.alloc(n * groups)?, backend.alloc(n * groups)?);
        let silu = act == Activation::Silu;
        backend.group_norm(
            x.buffer(),
            gamma.buffer(),
            beta.buffer(),
            &mut *y,
            &mut *mean,
            &mut *rstd,
            &s,
            eps,
            silu,
        )?;
        let stats_shape = Shape::new([n * groups]);
        let stats = GroupNormStats {
            mean: Tensor::from_device(&backend, mean, stats_shape.clone()),
            rstd: Tensor::from_device(&backend, rstd, stats_shape),
        };
        return Ok((Tensor::from_device(&backend, y, x.shape().clone()), stats));
    }
    let cg = c / groups; // channels per group
    let m = cg * hw; // elements per group
    let (xs, gam, bet) = (x.as_slice(), gamma.as_slice(), beta.as_slice());
    let mut y = crate::pool::take(x.numel());
    let mut mean = vec![0.0; n * groups];
    let mut rstd = vec![0.0; n * groups];
    // One task per (n, g): its elements are one contiguous block of M.
    y.par_chunks_mut(m.max(1)).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).enumerate().for_each(
        |(ng, (yb, (mu_out, rstd_out)))| {
            let xb = &xs[ng * m..(ng + 1) * m];
            // Two passes: the mean, then the variance around it (no cancellation),
            // each channel's sum in vector lanes and the channels' sums in f64.
            let mu = (xb.chunks(hw.max(1)).map(|c| sum_f32(c) as f64).sum::<f64>() / m as f64) as f32;
            let var = xb.chunks(hw.max(1)).map(|c| sum_sq_dev_f32(c, mu) as f64).sum::<f64>() / m as f64;
            let r = 1.0 / (var + eps as f64).sqrt();
            *mu_out = mu;
            *rstd_out = r as f32;
            let g0 = (ng % groups) * cg;
            for (j, (yc, xc)) in yb.chunks_mut(hw).zip(xb.chunks(hw)).enumerate() {
                // z = gamma (x - mu) rstd + beta = a x + b per channel; y = act(z).
                let a = gam[g0 + j] * r as f32;
                let b = bet[g0 + j] - a * mu;
                wide(|| yc.iter_mut().zip(xc).for_each(|(o, &v)| *o = act.forward(a * v + b)));
            }
        },
    );
    let stats_shape = Shape::new([n * groups]);
    let stats = GroupNormStats {
        mean: Tensor::from_parts(mean, stats_shape.clone()),
        rstd: Tensor::from_parts(rstd, stats_shape),
    };
    Ok((Tensor::from_parts(y, x.shape().clone()), stats))
}

/// The gradients of group norm: (d_input, d_gamma, d_beta).
pub fn group_norm_backward(
    x: &Tensor,
    stats: &GroupNormStats,
    gamma: &Tensor,
    groups: usize,
    d_out: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    // beta does not enter the norm's own backward; gamma stands in for its shape.
    group_norm_backward_with(x, stats, gamma, gamma, groups, d_out, Activation::Identity)
}

/// The gradients of y = silu(GroupNorm(x)): (d_input, d_gamma, d_beta).
pub fn group_norm_silu_backward(
    x: &Tensor,
    stats: &GroupNormStats,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    d_out: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    group_norm_backward_with(x, stats, gamma, beta, groups, d_out, Activation::Silu)
}

fn group_norm_backward_with(
    x: &Tensor,
    stats: &GroupNormStats,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    d_out: &Tensor,
    act: Activation,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, hw) = check(x, groups, gamma, beta)?;
    d_out.expect_shape("group_norm_backward", x.shape())?;
    let stats_shape = Shape::new([n * groups]);
    stats.mean.expect_shape("group_norm_backward (mean)", &stats_shape)?;
    stats.rstd.expect_shape("group_norm_backward (rstd)", &stats_shape)?;
    let operands = [x, gamma, beta, &stats.mean, &stats.rstd, d_out];
    if let Placement::Device(backend) = placement("group_norm_backward", &operands)? {
        let s = NormShape { n, c, hw, groups };
        let (mut dx, mut dgamma, mut dbeta) = (backend.alloc(x.numel())?, backend.alloc(c)?, backend.alloc(c)?);
        backend.group_norm_backward(
            x.buffer(),
            gamma.buffer(),
            beta.buffer(),
            stats.mean.buffer(),
            stats.rstd.buffer(),
            d_out.buffer(),
            &mut *dx,
            &mut *dgamma,
            &mut *dbeta,
            &s,
            act == Activation::Silu,
        )?;
        let channels = Shape::new([c]);
        return Ok((
            Tensor::from_device(&backend, dx, x.shape().clone()),
            Tensor::from_device(&backend, dgamma, channels.clone()),
            Tensor::from_device(&backend, dbeta, channels),
        ));
    }
    let cg = c / groups;
    let m = cg * hw;
    let (xs, gs, gam, bet) = (x.as_slice(), d_out.as_slice(), gamma.as_slice(), beta.as_slice());
    let (means, rstds) = (stats.mean.as_slice(), stats.rstd.as_slice());
    let mut dx = crate::pool::take(x.numel());
    // Per (n, g): dx, plus this sample's contribution to d_gamma and d_beta of its channels.
    let partial: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(m.max(1))
        .enumerate()
        .map(|(ng, dxb)| {
            let (mu, r) = (means[ng], rstds[ng]);
            let (xb, gb) = (&xs[ng * m..(ng + 1) * m], &gs[ng * m..(ng + 1) * m]);
            let g0 = (ng % groups) * cg;
            let (mut dgamma, mut dbeta) = (vec![0.0f64; cg], vec![0.0f64; cg]);
            // Pass 1: dz = g act'(z) into dx's place (the block is small and stays
            // in cache), with the sums over the group of dxhat and dxhat * xhat.
            let (mut sum_d, mut sum_dx) = (0.0f64, 0.0f64);
            for j in 0..cg {
                let range = j * hw..(j + 1) * hw;
                let (gm, bt) = (gam[g0 + j], bet[g0 + j]);
                let (dz, xc) = (&mut dxb[range.clone()], &xb[range.clone()]);
                wide(|| {
                    for ((dz, &v), &g) in dz.iter_mut().zip(xc).zip(&gb[range]) {
                        *dz = act.backward(gm * (v - mu) * r + bt, g);
                    }
                });
                // sum dz, and sum dz xhat = r (sum dz x - mu sum dz).
                let s_g = sum_f32(dz) as f64;
                let s_gx = r as f64 * (dot_f32(dz, xc) as f64 - mu as f64 * s_g);
                dbeta[j] = s_g;
                dgamma[j] = s_gx;
                sum_d += s_g * gm as f64;
                sum_dx += s_gx * gm as f64;
            }
            // Pass 2: dx = rstd (dz gamma - mean(dxhat) - xhat mean(dxhat xhat)), in place.
            let (mean_d, mean_dx) = ((sum_d / m as f64) as f32, (sum_dx / m as f64) as f32);
            for j in 0..cg {
                let gm = gam[g0 + j];
                let range = j * hw..(j + 1) * hw;
                for (o, &v) in dxb[range.clone()].iter_mut().zip(&xb[range]) {
                    let xhat = (v - mu) * r;
                    *o = r * (*o * gm - mean_d - xhat * mean_dx);
                }
            }
            (dgamma, dbeta)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (ng, (dg, db)) in partial.iter().enumerate() {
        let g0 = (ng % groups) * cg;
        for j in 0..cg {
            dgamma[g0 + j] += dg[j];
            dbeta[g0 + j] += db[j];
        }
    }
    let to_tensor = |v: Vec<f64>| Tensor::from_parts(v.into_iter().map(|x| x as f32).collect(), Shape::new([c]));
    Ok((Tensor::from_parts(dx, x.shape().clone()), to_tensor(dgamma), to_tensor(dbeta)))
}

/// The specification of [`Tensor::group_norm`]: the formulas above over
/// ndarray arrays, in f64. For each sample n and group g, the group is the
/// slice x[n, g*C/G..(g+1)*C/G, :] of x viewed as [N, C, H*W].
pub fn group_norm_reference(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    let op = "group_norm_reference";
    let (n, c, hw) = check(x, groups, gamma, beta)?;
    let x3 = to_f64::<IxDyn>(op, x)?
        .into_shape_with_order((n, c, hw))
        .map_err(|e| TensorError::invalid(op, e.to_string()))?;
    let (gamma, beta) = (to_f64::<Ix1>(op, gamma)?, to_f64::<Ix1>(op, beta)?);
    let cg = c / groups; // channels per group
    let mut y = Array3::<f64>::zeros((n, c, hw));
    for n in 0..n {
        for g in 0..groups {
            let channels = g * cg..(g + 1) * cg;
            let group = x3.slice(s![n, channels.clone(), ..]);
            let Some(mu) = group.mean() else { continue }; // an empty group has nothing to normalise
            let var = group.mapv(|v| (v - mu).powi(2)).mean().unwrap_or(0.0); // biased, as PyTorch
            let rstd = 1.0 / (var + eps as f64).sqrt();
            // Channel by channel (the rows of the group): y = gamma_c (x - mu) rstd + beta_c.
            Zip::from(y.slice_mut(s![n, channels.clone(), ..]).rows_mut())
                .and(group.rows())
                .and(gamma.slice(s![channels.clone()]))
                .and(beta.slice(s![channels]))
                .for_each(|mut y_c, x_c, &gamma_c, &beta_c| {
                    Zip::from(&mut y_c).and(&x_c).for_each(|y, &x| *y = gamma_c * (x - mu) * rstd + beta_c);
                });
        }
    }
    let y = y.into_shape_with_order(x.dims()).map_err(|e| TensorError::invalid(op, e.to_string()))?;
    Ok(from_f64(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn forward_matches_the_reference() {
        let mut rng = StdRng::seed_from_u64(0);
        for (dims, groups) in [([2, 8, 5, 4], 4), ([3, 16, 7, 7], 8), ([64, 32, 28, 28], 8)] {
            let x = Tensor::randn(dims, &mut rng).affine(2.0, 0.5).unwrap();
            let gamma = Tensor::randn([dims[1]], &mut rng);
            let beta = Tensor::randn([dims[1]], &mut rng);
            let (y, _) = x.group_norm(groups, &gamma, &beta, 1e-5).unwrap();
            let r = group_norm_reference(&x, groups, &gamma, &beta, 1e-5).unwrap();
            assert!(y.max_abs_diff(&r).unwrap() < 1e-4, "{dims:?}");
        }
    }

    #[test]
    fn forward_matches_the_reference_where_eps_matters() {
        // Variances near eps (and a constant group, variance 0, where 1/sqrt(eps)
        // alone scales it): the place of eps decides the numbers here.
        let mut rng = StdRng::seed_from_u64(3);
        let mut x = Tensor::randn([2, 8, 5, 4], &mut rng).scale(3e-3).unwrap();
        x.as_mut_slice()[..40].fill(0.25);
        let (gamma, beta) = (Tensor::randn([8], &mut rng), Tensor::randn([8], &mut rng));
        let (y, _) = x.group_norm(4, &gamma, &beta, 1e-5).unwrap();
        let r = group_norm_reference(&x, 4, &gamma, &beta, 1e-5).unwrap();
        let err = y.max_abs_diff(&r).unwrap();
        assert!(err < 1e-4, "{err}");
    }

    #[test]
    fn normalised_groups_have_zero_mean_and_unit_variance() {
        let x = Tensor::randn([2, 4, 3, 3], &mut StdRng::seed_from_u64(1)).affine(5.0, 3.0).unwrap();
        let (y, stats) = x.group_norm(2, &Tensor::ones([4]), &Tensor::zeros([4]), 1e-5).unwrap();
        for block in y.as_slice().chunks(18) {
            let mean: f32 = block.iter().sum::<f32>() / 18.0;
            let var: f32 = block.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 18.0;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "{mean} {var}");
        }
        assert_eq!(stats.mean.numel(), 4);
    }

    #[test]
    fn fused_silu_matches_norm_then_silu() {
        let mut rng = StdRng::seed_from_u64(2);
        let x = Tensor::randn([3, 16, 7, 7], &mut rng);
        let (gamma, beta) = (Tensor::randn([16], &mut rng), Tensor::randn([16], &mut rng));
        let (fused, _) = x.group_norm_silu(8, &gamma, &beta, 1e-5).unwrap();
        let (plain, _) = x.group_norm(8, &gamma, &beta, 1e-5).unwrap();
        assert!(fused.max_abs_diff(&plain.silu().unwrap()).unwrap() < 1e-6);
    }

    #[test]
    fn bad_groups_are_an_error() {
        let x = Tensor::zeros([1, 6, 2, 2]);
        let e = x.group_norm(4, &Tensor::ones([6]), &Tensor::zeros([6]), 1e-5).unwrap_err();
        assert_eq!(e.to_string(), "group_norm: 6 channels cannot be cut into 4 groups");
    }
}
