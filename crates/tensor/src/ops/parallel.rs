//! Small helpers for splitting a loop across rayon's threads.

use rayon::prelude::*;

use super::wide::wide;
use crate::PARALLEL_THRESHOLD;

/// Fills `out` in place, `row` elements at a time, calling `f(row_index, row)`;
/// in parallel when the work is large enough to pay for it.
pub(crate) fn for_each_row(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if row == 0 {
        return;
    }
    if out.len() >= PARALLEL_THRESHOLD {
        // Group rows into chunks of at least a few thousand elements so that a
        // task does real work even when rows are short.
        let rows_per_task = (4096 / row).max(1);
        out.par_chunks_mut(row * rows_per_task).enumerate().for_each(|(task, chunk)| {
            for (i, r) in chunk.chunks_mut(row).enumerate() {
                f(task * rows_per_task + i, r);
            }
        });
    } else {
        out.chunks_mut(row).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// Applies `f` to every element of `out` alongside the same index of `input`.
pub(crate) fn map_into(input: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    let run = |o: &mut [f32], i: &[f32]| wide(|| o.iter_mut().zip(i).for_each(|(o, &x)| *o = f(x)));
    if out.len() >= PARALLEL_THRESHOLD {
        out.par_chunks_mut(4096).zip(input.par_chunks(4096)).for_each(|(o, i)| run(o, i));
    } else {
        run(out, input);
    }
}

/// Turns a row index into the offsets of that row in each operand, given the
/// outer axes' extents and each operand's strides along them.
pub(crate) fn row_offsets<const K: usize>(mut row: usize, outer: &[usize], strides: [&[usize]; K]) -> [usize; K] {
    let mut offsets = [0; K];
    for axis in (0..outer.len()).rev() {
        let i = row % outer[axis];
        row /= outer[axis];
        for k in 0..K {
            offsets[k] += i * strides[k][axis];
        }
    }
    offsets
}
