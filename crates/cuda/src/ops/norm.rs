//! The launches of `kernels/norm.cu`: group norm (optionally followed by
//! SiLU) and its gradients.

use ddpm_tensor::backend::{NormShape, Reduction};

use super::{check_len, int, invalid, launch, In, Out};
use crate::exec::{Arg, Executor};
use crate::launch::per_row;
use crate::source::NORM;
use crate::Result;

/// Checks x [n, c, hw] against gamma and beta [c]; the (sample, group) count.
fn check(op: &'static str, s: &NormShape, x: usize, gamma: usize, beta: usize) -> Result<usize> {
    if s.groups == 0 || !s.c.is_multiple_of(s.groups) {
        return Err(invalid(op, format!("{} channels cannot be cut into {} groups", s.c, s.groups)));
    }
    check_len(op, "the input", x, s.n * s.c * s.hw)?;
    check_len(op, "the weight", gamma, s.c)?;
    check_len(op, "the bias", beta, s.c)?;
    int(op, "the elements of a group", s.c / s.groups * s.hw)?;
    Ok(s.n * s.groups)
}

/// The kernels' c, hw, groups.
fn shape_args<'a, B>(op: &'static str, s: &NormShape) -> Result<[Arg<'a, B>; 3]> {
    Ok([
        Arg::I32(int(op, "channels", s.c)?),
        Arg::I32(int(op, "positions", s.hw)?),
        Arg::I32(int(op, "groups", s.groups)?),
    ])
}

/// y = act(GroupNorm(x)), act = SiLU or the identity; mean and rstd per (sample, group).
#[allow(clippy::too_many_arguments)]
pub fn group_norm<E: Executor>(
    e: &E,
    s: &NormShape,
    x: In<'_, E::Buf>,
    gamma: In<'_, E::Buf>,
    beta: In<'_, E::Buf>,
    mut y: Out<'_, E::Buf>,
    mut mean: Out<'_, E::Buf>,
    mut rstd: Out<'_, E::Buf>,
    eps: f32,
    silu: bool,
) -> Result<()> {
    let op = if silu { "group_norm_silu" } else { "group_norm" };
    let rows = check(op, s, x.len(), gamma.len(), beta.len())?;
    check_len(op, "the output", y.len(), x.len())?;
    check_len(op, "the means", mean.len(), rows)?;
    check_len(op, "the inverse deviations", rstd.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let [c, hw, groups] = shape_args(op, s)?;
    let mut args = [
        x.arg(),
        gamma.arg(),
        beta.arg(),
        y.arg(),
        mean.arg(),
        rstd.arg(),
        c,
        hw,
        groups,
        Arg::F32(eps),
        Arg::I32(silu.into()),
    ];
    launch(e, op, &NORM, "group_norm_fwd_f32", per_row(rows), &mut args)
}

/// The buffers a group norm's backward pass writes: d_x, and d_gamma and
/// d_beta, each `[c]`, with their per-sample partial sums, each `[n, c]` (scratch).
pub struct NormGrads<'a, B> {
    pub d_x: Out<'a, B>,
    pub d_gamma: Out<'a, B>,
    pub d_beta: Out<'a, B>,
    pub d_gamma_part: Out<'a, B>,
    pub d_beta_part: Out<'a, B>,
}

/// The gradients of [`group_norm`] from its input, statistics and d_y: one
/// block per (sample, group) writes d_x and the sample's share of d_gamma
/// and d_beta, then reduce.cu's sum adds the shares over the samples.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward<E: Executor>(
    e: &E,
    s: &NormShape,
    x: In<'_, E::Buf>,
    gamma: In<'_, E::Buf>,
    beta: In<'_, E::Buf>,
    mean: In<'_, E::Buf>,
    rstd: In<'_, E::Buf>,
    d_y: In<'_, E::Buf>,
    grads: NormGrads<'_, E::Buf>,
    silu: bool,
) -> Result<()> {
    let op = "group_norm_backward";
    let NormGrads { mut d_x, d_gamma, d_beta, mut d_gamma_part, mut d_beta_part } = grads;
    let rows = check(op, s, x.len(), gamma.len(), beta.len())?;
    check_len(op, "the output gradient", d_y.len(), x.len())?;
    check_len(op, "the means", mean.len(), rows)?;
    check_len(op, "the inverse deviations", rstd.len(), rows)?;
    check_len(op, "the input gradient", d_x.len(), x.len())?;
    check_len(op, "the weight gradient", d_gamma.len(), s.c)?;
    check_len(op, "the bias gradient", d_beta.len(), s.c)?;
    check_len(op, "the weight gradient's partial sums", d_gamma_part.len(), s.n * s.c)?;
    check_len(op, "the bias gradient's partial sums", d_beta_part.len(), s.n * s.c)?;
    if rows > 0 {
        let [c, hw, groups] = shape_args(op, s)?;
        let mut args = vec![x.arg(), gamma.arg(), beta.arg(), d_y.arg(), mean.arg(), rstd.arg()];
        args.extend([d_x.arg(), d_gamma_part.arg(), d_beta_part.arg(), c, hw, groups, Arg::I32(silu.into())]);
        launch(e, op, &NORM, "group_norm_bwd_f32", per_row(rows), &mut args)?;
    }
    // d_gamma[c] = sum over the samples of d_gamma_part[n, c], and d_beta likewise.
    let over_samples = Reduction { kept: vec![(s.c, 1)], reduced: vec![(s.n, s.c)] };
    super::reduce::sum(e, d_gamma_part.as_in(), d_gamma, &over_samples)?;
    super::reduce::sum(e, d_beta_part.as_in(), d_beta, &over_samples)
}
