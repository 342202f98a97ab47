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
//! Uniforms (dropout's masks) use all four words of each counter, in blocks
//! of 64 from 16 counters (see [`uniform`]).

use crate::backend::backend_of;
use crate::{placement, Device, Placement, Result, Shape, Tensor};

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
#[inline(always)]
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

/// Counters per block of uniforms: a block is [`BLOCK`] = 4 x 16 uniforms.
const LANES: usize = 16;
/// Uniforms per block: word w of the block's counter l is uniform 16w + l.
const BLOCK: usize = 4 * LANES;

/// `out[j]` = [`uniform`]`(seed, offset, first + j)`, a block of 16 counters
/// (64 values) at a time and in parallel: the same numbers, many times faster
/// than one by one.
pub fn uniforms(seed: u64, offset: u64, first: u64, out: &mut [f32]) {
    uniforms_with(seed, offset, first, out, |_, u, out| out.copy_from_slice(u));
}

/// Calls `f(start, u, out_part)` over `out` in consecutive parts, in parallel,
/// where `u[i]` = [`uniform`]`(seed, offset, first + start + i)` and out_part is
/// `out[start..start + u.len()]`: a pass that uses the uniforms as they are
/// made (dropout's mask) without storing them first.
fn uniforms_with(seed: u64, offset: u64, first: u64, out: &mut [f32], f: impl Fn(usize, &[f32], &mut [f32]) + Sync) {
    const ROW: usize = 1024;
    crate::ops::parallel::for_each_row(out, ROW, |row, values| {
        let row_start = row * ROW;
        let row_first = first + row_start as u64;
        // Up to the next whole block one by one, then whole blocks.
        let head = (row_first.next_multiple_of(BLOCK as u64) - row_first).min(values.len() as u64) as usize;
        let (head_values, rest) = values.split_at_mut(head);
        let u: Vec<f32> = (0..head as u64).map(|j| uniform(seed, offset, row_first + j)).collect();
        f(row_start, &u, head_values);
        let first_block = (row_first + head as u64) / BLOCK as u64;
        crate::ops::wide::wide(|| {
            for (b, part) in rest.chunks_mut(BLOCK).enumerate() {
                let u = block(seed, offset, first_block + b as u64);
                f(row_start + head + b * BLOCK, &u[..part.len()], part);
            }
        });
    });
}

/// The 64 uniforms of block `b`, from counters 16b .. 16b + 15.
#[inline(always)]
fn block(seed: u64, offset: u64, b: u64) -> [f32; BLOCK] {
    let base = b * LANES as u64;
    let counters: [[u32; 4]; LANES] = std::array::from_fn(|l| counter(offset, base + l as u64));
    let ctr = std::array::from_fn(|w| std::array::from_fn(|l| counters[l][w]));
    let words = philox_lanes::<LANES>(ctr, key(seed));
    std::array::from_fn(|i| unit(words[i / LANES][i % LANES]))
}

/// Uniform `i` of draw `offset` of stream `seed`, in [0, 1) (24 bits). Uniforms
/// come in blocks of 64 from 16 counters, all four words of each: uniform i is
/// word (i mod 64) / 16 of counter 16 (i / 64) + i mod 16.
pub fn uniform(seed: u64, offset: u64, i: u64) -> f32 {
    let (b, r) = (i / BLOCK as u64, i % BLOCK as u64);
    let word = philox4x32_10(counter(offset, b * LANES as u64 + r % LANES as u64), key(seed));
    unit(word[(r / LANES as u64) as usize])
}

/// The mask of inverted dropout that [`Tensor::dropout`] multiplies by:
/// element i is 0 where [`uniform`]`(seed, 0, i)` < p, else 1 / (1 - p).
pub fn dropout_mask(seed: u64, p: f32, len: usize) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p);
    let mut mask = crate::pool::take(len);
    uniforms_with(seed, 0, 0, &mut mask, |_, u, mask| {
        mask.iter_mut().zip(u).for_each(|(m, &u)| *m = dropout_factor(u, p, keep));
    });
    mask
}

/// Inverted dropout's factor for a uniform u: 0 (dropped) below p, else `keep`,
/// which is 1 / (1 - p).
#[inline(always)]
fn dropout_factor(u: f32, p: f32, keep: f32) -> f32 {
    if u < p {
        0.0
    } else {
        keep
    }
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
    /// Inverted dropout with the mask of Philox stream `seed`: element i is
    /// `x[i] * 0` where [`uniform`]`(seed, 0, i)` < p, else `x[i] / (1 - p)`. The mask
    /// is recomputed where it is needed rather than stored: the gradient of
    /// dropout is the same op on the gradient (`g.dropout(seed, p)`).
    pub fn dropout(&self, seed: u64, p: f32) -> Result<Tensor> {
        if let Placement::Device(backend) = placement("dropout", &[self])? {
            let mut y = backend.alloc(self.numel())?;
            backend.dropout(self.buffer(), &mut *y, seed, p)?;
            return Ok(Tensor::from_device(&backend, y, self.shape().clone()));
        }
        let keep = 1.0 / (1.0 - p);
        let x = self.as_slice();
        let mut y = crate::pool::take(x.len());
        uniforms_with(seed, 0, 0, &mut y, |start, u, y| {
            for ((y, &x), &u) in y.iter_mut().zip(&x[start..]).zip(u) {
                *y = x * dropout_factor(u, p, keep);
            }
        });
        Ok(Tensor::from_parts(y, self.shape().clone()))
    }

    /// Standard normal samples from Philox on `device`: element i is
    /// [`normal`]`(seed, offset, i)`, the same numbers on every device.
    pub fn randn_philox_on(shape: impl Into<Shape>, seed: u64, offset: u64, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if device == Device::Cpu {
            return Ok(Tensor::randn_philox(shape, seed, offset));
        }
        let backend = backend_of(device)?;
        let mut out = backend.alloc(shape.numel())?;
        backend.randn_philox(&mut *out, seed, offset)?;
        Ok(Tensor::from_device(&backend, out, shape))
    }

    /// Standard normal samples from Philox, on the host: draw `offset` of
    /// stream `seed`, the same numbers the GPU's `randn_f32` kernel gives.
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
