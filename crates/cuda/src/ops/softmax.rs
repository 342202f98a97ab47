//! The launches of `kernels/softmax.cu`: softmax and log-softmax over rows,
//! and their gradients, one block per row.

use super::{check_len, int, invalid, launch, In, Out};
use crate::exec::{Arg, Executor};
use crate::launch::per_row;
use crate::source::SOFTMAX;
use crate::Result;

/// The rows of `n` numbers in rows of `cols`.
fn rows(op: &'static str, n: usize, cols: usize) -> Result<usize> {
    if cols == 0 || !n.is_multiple_of(cols) {
        return Err(invalid(op, format!("{n} numbers are not rows of {cols}")));
    }
    Ok(n / cols)
}

/// y = softmax(x) (or log-softmax, `log`) over each row of `cols`.
pub fn softmax<E: Executor>(e: &E, x: In<'_, E::Buf>, mut y: Out<'_, E::Buf>, cols: usize, log: bool) -> Result<()> {
    let (op, kernel) = if log { ("log_softmax", "log_softmax_f32") } else { ("softmax", "softmax_f32") };
    let rows = rows(op, x.len(), cols)?;
    check_len(op, "the output", y.len(), x.len())?;
    if rows == 0 {
        return Ok(());
    }
    let mut args = [x.arg(), y.arg(), Arg::I32(int(op, "a row's length", cols)?)];
    launch(e, op, &SOFTMAX, kernel, per_row(rows), &mut args)
}

/// d_x from y = softmax(x) (or log-softmax, `log`) and d_y = dL/dy.
pub fn softmax_backward<E: Executor>(
    e: &E,
    y: In<'_, E::Buf>,
    d_y: In<'_, E::Buf>,
    mut d_x: Out<'_, E::Buf>,
    cols: usize,
    log: bool,
) -> Result<()> {
    let (op, kernel) =
        if log { ("log_softmax_backward", "log_softmax_bwd_f32") } else { ("softmax_backward", "softmax_bwd_f32") };
    let rows = rows(op, y.len(), cols)?;
    check_len(op, "the output gradient", d_y.len(), y.len())?;
    check_len(op, "the input gradient", d_x.len(), y.len())?;
    if rows == 0 {
        return Ok(());
    }
    let mut args = [y.arg(), d_y.arg(), d_x.arg(), Arg::I32(int(op, "a row's length", cols)?)];
    launch(e, op, &SOFTMAX, kernel, per_row(rows), &mut args)
}
