//! The launches of `kernels/reduce.cu`: sums over axes, and the global norm
//! of many buffers; both in double, in a fixed order.

use ddpm_tensor::backend::Reduction;

use super::elementwise::MAX_AXES;
use super::{check_len, int, invalid, launch, long, In, Out};
use crate::exec::{Arg, Executor};
use crate::launch::{per_row, sum_of_squares, SUMSQ_CHUNK};
use crate::source::REDUCE;
use crate::Result;

/// (extent, stride) pairs padded on the left to [`MAX_AXES`] with (1, 0).
fn padded(op: &'static str, what: &str, pairs: &[(usize, usize)]) -> Result<[(usize, usize); MAX_AXES]> {
    if pairs.len() > MAX_AXES {
        return Err(invalid(
            op,
            format!(
                "{} {what} (extent, stride) pairs {pairs:?} after merging; the kernel takes at most {MAX_AXES}",
                pairs.len()
            ),
        ));
    }
    let mut out = [(1, 0); MAX_AXES];
    out[MAX_AXES - pairs.len()..].copy_from_slice(pairs);
    Ok(out)
}

/// `out[o]` = the sum over the reduced axes from output o's base offset (see
/// [`Reduction`]): one block per output.
pub fn sum<E: Executor>(e: &E, x: In<'_, E::Buf>, mut out: Out<'_, E::Buf>, r: &Reduction) -> Result<()> {
    let op = "sum_axes";
    let outputs = r.outputs();
    check_len(op, "the output", out.len(), outputs)?;
    let kept = padded(op, "kept", &r.kept)?;
    let reduced = padded(op, "reduced", &r.reduced)?;
    let terms: usize = r.reduced.iter().map(|&(d, _)| d).product();
    if outputs > 0 && terms > 0 {
        let last = |pairs: &[(usize, usize)]| pairs.iter().map(|&(d, s)| (d - 1) * s).sum::<usize>();
        if last(&r.kept) + last(&r.reduced) >= x.len() {
            return Err(invalid(op, format!("an input of {} numbers is too short for {r:?}", x.len())));
        }
    }
    if outputs == 0 {
        return Ok(());
    }
    let mut args = vec![x.arg(), out.arg()];
    // k0, the outermost kept extent, is the grid's; then the kept strides,
    // the reduced extents and the reduced strides.
    let values = kept[1..].iter().map(|&(d, _)| d).chain(kept.iter().map(|&(_, s)| s));
    let values = values.chain(reduced.iter().map(|&(d, _)| d)).chain(reduced.iter().map(|&(_, s)| s));
    for v in values {
        args.push(Arg::I64(long(op, "an extent or stride", v)?));
    }
    launch(e, op, &REDUCE, "sum_f32", per_row(outputs), &mut args)
}

/// The length of the scratch buffer [`global_norm`] needs for buffers of
/// these lengths: two floats (a double's two words) per block of partial sums.
pub fn partials_len(lens: &[usize]) -> usize {
    2 * lens.iter().map(|n| n.div_ceil(SUMSQ_CHUNK)).sum::<usize>()
}

/// `out[0]` = sqrt(sum over every x of every element squared), in double:
/// each x's blocks write their partial sums to `partials` (of
/// [`partials_len`]), then one block adds them all.
pub fn global_norm<E: Executor>(
    e: &E,
    xs: &[In<'_, E::Buf>],
    mut partials: Out<'_, E::Buf>,
    mut out: Out<'_, E::Buf>,
) -> Result<()> {
    let op = "global_norm";
    let lens: Vec<usize> = xs.iter().map(In::len).collect();
    check_len(op, "the partial sums", partials.len(), partials_len(&lens))?;
    check_len(op, "the output", out.len(), 1)?;
    let mut first = 0;
    for x in xs.iter().filter(|x| !x.is_empty()) {
        let n = long(op, "length", x.len())?;
        let mut args = [x.arg(), Arg::I64(n), partials.arg(), Arg::I32(int(op, "blocks of partial sums", first)?)];
        launch(e, op, &REDUCE, "sumsq_partial_f32", sum_of_squares(x.len()), &mut args)?;
        first += x.len().div_ceil(SUMSQ_CHUNK);
    }
    let count = Arg::I32(int(op, "blocks of partial sums", first)?);
    let mut args = [partials.as_in().arg(), count, out.arg()];
    launch(e, op, &REDUCE, "global_norm_f32", per_row(1), &mut args)
}
