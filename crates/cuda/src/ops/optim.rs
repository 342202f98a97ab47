//! The launches of `kernels/optim.cu`: Adam and the EMA's interpolation.

use ddpm_tensor::backend::AdamStep;

use super::{check_len, launch, long, In, Out};
use crate::exec::{Arg, Executor};
use crate::launch::elementwise;
use crate::source::OPTIM;
use crate::Result;

/// One Adam step: m and v in place, the new weights to `p_out`.
pub fn adam<E: Executor>(
    e: &E,
    p: In<'_, E::Buf>,
    g: In<'_, E::Buf>,
    mut m: Out<'_, E::Buf>,
    mut v: Out<'_, E::Buf>,
    mut p_out: Out<'_, E::Buf>,
    s: &AdamStep,
) -> Result<()> {
    let op = "adam_update";
    let n = p.len();
    for (what, len) in [("the gradient", g.len()), ("m", m.len()), ("v", v.len()), ("the new weights", p_out.len())] {
        check_len(op, what, len, n)?;
    }
    if n == 0 {
        return Ok(());
    }
    let mut args = [
        p.arg(),
        g.arg(),
        m.arg(),
        v.arg(),
        p_out.arg(),
        Arg::I64(long(op, "length", n)?),
        Arg::F32(s.step_size),
        Arg::F32(s.beta1),
        Arg::F32(s.beta2),
        Arg::F32(s.bias_correction2_sqrt),
        Arg::F32(s.eps),
    ];
    launch(e, op, &OPTIM, "adam_f32", elementwise(n), &mut args)
}

/// x += weight (end - x), in place.
pub fn lerp<E: Executor>(e: &E, mut x: Out<'_, E::Buf>, end: In<'_, E::Buf>, weight: f32) -> Result<()> {
    let op = "lerp_assign";
    let n = x.len();
    check_len(op, "the end", end.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let mut args = [x.arg(), end.arg(), Arg::I64(long(op, "length", n)?), Arg::F32(weight)];
    launch(e, op, &OPTIM, "lerp_f32", elementwise(n), &mut args)
}
