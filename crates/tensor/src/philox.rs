//! Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel
//! random numbers: as easy as 1, 2, 3", SC 2011).
//!
//! A counter-based generator is a pure function of (counter, key), so element
//! i of a draw can be computed by whichever thread owns it, in any order, on
//! any device. `kernels/sampling.cu` computes the same function, so a seed
//! gives the same noise on the CPU and the GPU. The convention, shared with
//! the kernels: element i of draw number `offset` of stream `seed` is
//!
//! ```text
//! philox4x32_10(counter = (i lo, i hi, offset lo, offset hi), key = (seed lo, seed hi))
//! ```
//!
//! turned into one N(0, 1) number by Box-Muller on its first two words.

use crate::{Shape, Tensor};

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Ten rounds of Philox on a 128-bit counter under a 64-bit key.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox_lanes::<1>(ctr.map(|word| [word]), key).map(|[word]| word)
}

/// Philox4x32-10 on L counters at once: word w of counter l is `ctr[w][l]`.
/// Written lane by lane over arrays, so that the compiler makes each line one
/// vector instruction across the L counters.
fn philox_lanes<const L: usize>(mut ctr: [[u32; L]; 4], mut key: [u32; 2]) -> [[u32; L]; 4] {
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        let mut next = [[0u32; L]; 4];
        for l in 0..L {
            let p0 = u64::from(M0) * u64::from(ctr[0][l]);
            let p1 = u64::from(M1) * u64::from(ctr[2][l]);
            next[0][l] = (p1 >> 32) as u32 ^ ctr[1][l] ^ key[0];
            next[1][l] = p1 as u32;
            next[2][l] = (p0 >> 32) as u32 ^ ctr[3][l] ^ key[1];
            next[3][l] = p0 as u32;
        }
        ctr = next;
    }
    ctr
}

/// The 128-bit counter of element `i` of draw `offset`.
fn counter(offset: u64, i: u64) -> [u32; 4] {
    [i as u32, (i >> 32) as u32, offset as u32, (offset >> 32) as u32]
}

/// The 64-bit key of stream `seed`.
fn key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// A 24-bit uniform in [0, 1) from one word.
fn unit(word: u32) -> f32 {
    (word >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// `out[j]` = [`uniform`]`(seed, offset, first + j)`, 16 counters at a time
/// and in parallel: the same numbers, many times faster than one by one.
pub fn uniforms(seed: u64, offset: u64, first: u64, out: &mut [f32]) {
    const L: usize = 16;
    const ROW: usize = 1024;
    crate::ops::parallel::for_each_row(out, ROW, |row, values| {
        let row_first = first + (row * ROW) as u64;
        for (chunk_index, chunk) in values.chunks_mut(L).enumerate() {
            let base = row_first + (chunk_index * L) as u64;
            let counters: [[u32; 4]; L] = std::array::from_fn(|l| counter(offset, base + l as u64));
            let ctr = std::array::from_fn(|w| std::array::from_fn(|l| counters[l][w]));
            let words = philox_lanes::<L>(ctr, key(seed));
            chunk.iter_mut().zip(&words[0]).for_each(|(o, &w)| *o = unit(w));
        }
    });
}

/// Element `i` of draw `offset` of stream `seed`, uniform in [0, 1) (24 bits).
pub fn uniform(seed: u64, offset: u64, i: u64) -> f32 {
    unit(philox4x32_10(counter(offset, i), key(seed))[0])
}

/// Element `i` of draw `offset` of stream `seed`, N(0, 1).
pub fn normal(seed: u64, offset: u64, i: u64) -> f32 {
    let r = philox4x32_10(counter(offset, i), key(seed));
    // Two 24-bit uniforms: u1 in (0, 1] so that the log is finite, u2 in [0, 1).
    let u1 = ((r[0] >> 8) + 1) as f32 * (1.0 / 16_777_216.0);
    let u2 = (r[1] >> 8) as f32 * (1.0 / 16_777_216.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

impl Tensor {
    /// Standard normal samples from Philox: draw `offset` of stream `seed`,
    /// the same numbers the GPU's `randn_f32` kernel gives.
    pub fn randn_philox(shape: impl Into<Shape>, seed: u64, offset: u64) -> Tensor {
        let shape = shape.into();
        let mut data = crate::pool::take(shape.numel());
        const ROW: usize = 1024;
        crate::ops::parallel::for_each_row(&mut data, ROW, |row, values| {
            for (j, v) in values.iter_mut().enumerate() {
                *v = normal(seed, offset, (row * ROW + j) as u64);
            }
        });
        Tensor::from_parts(data, shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known-answer vectors of the Random123 distribution (kat_vectors).
    #[test]
    fn philox_matches_the_published_known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        assert_eq!(
            philox4x32_10([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn many_uniforms_at_once_are_the_one_by_one_uniforms() {
        // Lengths that end mid-chunk and mid-row, a first index past 2^32 (the
        // counter's high word), and enough values to go parallel.
        for (len, first) in [(1, 0), (37, 5), (1030, (1 << 32) - 7), (70_000, 123)] {
            let mut many = vec![0.0; len];
            uniforms(99, 3, first, &mut many);
            for (j, &v) in many.iter().enumerate() {
                assert_eq!(v, uniform(99, 3, first + j as u64), "len {len}, first {first}, j {j}");
            }
        }
    }

    #[test]
    fn normals_have_mean_zero_and_variance_one_and_differ_by_offset_and_seed() {
        let n = 200_000;
        let z = Tensor::randn_philox([n], 7, 3);
        let v = z.as_slice();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert_eq!(v[12345], normal(7, 3, 12345));
        assert_ne!(v[0], normal(7, 4, 0));
        assert_ne!(v[0], normal(8, 3, 0));
    }
}
