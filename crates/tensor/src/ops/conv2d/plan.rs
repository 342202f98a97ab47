//! How the fast paths (im2col + GEMM, and the direct kernels) spread a batch
//! over rayon's threads: [`Plan`] splits it into runs of samples, one task each,
//! and groups a run's samples for one GEMM; [`side_by_side`] and
//! [`split_side_by_side`] lay a group's samples out as one matrix and back;
//! [`sum_partials`] adds up the runs' partial weight gradients.

use std::ops::Range;

use rayon::prelude::*;

use super::geometry::Geometry;
use super::Addends;
use crate::ops::{sgemm, sgemm_parallel, Transpose};
use crate::pool;

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
pub(super) fn sum_partials(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut partials = partials.into_iter();
    let mut sum = partials.next().unwrap_or_else(|| vec![0.0; len]);
    for partial in partials {
        sum.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
        pool::give(partial);
    }
    sum
}

/// The signature shared by [`sgemm`] and [`sgemm_parallel`].
pub(super) type Gemm = fn(usize, usize, usize, &[f32], Transpose, &[f32], Transpose, f32, &mut [f32]);

/// How a call spreads its batch over rayon's threads and over GEMM calls.
pub(super) struct Plan {
    /// Contiguous runs of samples, one rayon task each.
    runs: Vec<Range<usize>>,
    /// Samples per GEMM: their columns sit side by side in one [C*R*S, group*Ho*Wo]
    /// cols matrix. 1 unless Ho*Wo is small.
    pub(super) group: usize,
    /// The GEMM a task calls: single-threaded when the runs already keep every
    /// thread busy, split across threads when the batch is too small for that.
    pub(super) gemm: Gemm,
}

impl Plan {
    /// A few runs per thread, so that a thread slowed by other work on the machine
    /// does not hold up the rest.
    const RUNS_PER_THREAD: usize = 2;

    pub(super) fn new(g: &Geometry) -> Plan {
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
    pub(super) fn for_each_run(
        &self,
        out: &mut [f32],
        per_sample: usize,
        task: impl Fn(Range<usize>, &mut [f32]) + Sync + Send,
    ) {
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
    pub(super) fn map_runs<T: Send>(&self, task: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
        if self.runs.len() == 1 {
            vec![task(self.runs[0].clone())]
        } else {
            self.runs.par_iter().map(|run| task(run.clone())).collect()
        }
    }

    /// A run's samples in groups of at most `self.group`.
    pub(super) fn groups(&self, run: Range<usize>) -> impl Iterator<Item = Range<usize>> {
        let (end, group) = (run.end, self.group);
        run.step_by(group).map(move |first| first..(first + group).min(end))
    }
}

/// Lays `samples` ([count, rows, cols], contiguous) side by side as one matrix
/// out [rows, count*cols]: sample j fills columns j*cols..(j+1)*cols.
pub(super) fn side_by_side(samples: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
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
pub(super) fn split_side_by_side(
    m: &[f32],
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    add: Addends,
    samples: &mut [f32],
) {
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
