//! The launches of `kernels/sampling.cu`: Philox normals, and one fused
//! sampling step (guidance, the DDPM or DDIM update, fresh noise).

use ddpm_tensor::ops::{SamplingStep, Update};

use super::{check_len, launch, In, Out};
use crate::exec::{Arg, Executor};
use crate::launch::elementwise;
use crate::source::SAMPLING;
use crate::Result;

/// `out[i] = philox::normal(seed, offset, i)`.
pub fn randn<E: Executor>(e: &E, mut out: Out<'_, E::Buf>, seed: u64, offset: u64) -> Result<()> {
    let n = out.len();
    if n == 0 {
        return Ok(());
    }
    let mut args = [out.arg(), Arg::U64(n as u64), Arg::U64(seed), Arg::U64(offset)];
    launch(e, "randn_philox", &SAMPLING, "randn_f32", elementwise(n), &mut args)
}

/// out = x' of one step from x and the noise estimate eps (x's length, or
/// twice it when the step is guided: the conditional half first).
pub fn step<E: Executor>(
    e: &E,
    x: In<'_, E::Buf>,
    eps: In<'_, E::Buf>,
    mut out: Out<'_, E::Buf>,
    s: &SamplingStep,
) -> Result<()> {
    let op = "sampling_step";
    let n = x.len();
    let guided = s.guidance.is_some();
    check_len(op, "the noise estimate", eps.len(), n * (1 + usize::from(guided)))?;
    check_len(op, "the output", out.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let mut args = vec![x.arg(), eps.arg(), out.arg(), Arg::U64(n as u64), Arg::I32(guided.into())];
    args.push(Arg::F32(s.guidance.unwrap_or(0.0)));
    let kernel = match s.update {
        Update::Ddpm { eps_coef, a, sigma } => {
            args.extend([Arg::F32(eps_coef), Arg::F32(a), Arg::F32(sigma)]);
            "ddpm_step_f32"
        }
        Update::Ddim { alphabar, alphabar_prev, sigma, dir } => {
            args.extend([Arg::F64(alphabar), Arg::F64(alphabar_prev), Arg::F64(sigma), Arg::F64(dir)]);
            "ddim_step_f32"
        }
    };
    args.extend([Arg::U64(s.seed), Arg::U64(s.offset)]);
    launch(e, op, &SAMPLING, kernel, elementwise(n), &mut args)
}
