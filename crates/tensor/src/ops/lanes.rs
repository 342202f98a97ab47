//! Sums that vectorise.
//!
//! `for x in v { s += x }` cannot be vectorised: float addition is not
//! associative, so the compiler must add in order, one element after the
//! other, each waiting for the last (4 cycles apiece). Keeping 16 running sums,
//! one per lane of an AVX-512 register, lets every add of a chunk happen at
//! once; the rounding error then grows with len / 16 rather than len.

const LANES: usize = 16;

/// sum_i v_i.
#[inline(always)]
pub(crate) fn sum_f32(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// sum_i a_i b_i.
#[inline(always)]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// sum_i (v_i - c)^2.
#[inline(always)]
pub(crate) fn sum_sq_dev_f32(v: &[f32], c: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| (x - c) * (x - c)).sum();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += (x - c) * (x - c);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_match_plain_sums() {
        let v: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = v.iter().map(|&x| x as f64).sum();
        assert!((sum_f32(&v) as f64 - plain).abs() < 1e-4);
        let dot: f64 = v.iter().zip(&w).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!((dot_f32(&v, &w) as f64 - dot).abs() < 1e-4);
        let dev: f64 = v.iter().map(|&x| (x as f64 - 0.2).powi(2)).sum();
        assert!((sum_sq_dev_f32(&v, 0.2) as f64 - dev).abs() < 1e-3);
    }
}
