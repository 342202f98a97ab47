//! Launch geometry: how many blocks of how many threads each kernel gets.
//!
//! One place for it, shared by the GPU ([`crate::Gpu`]) and the CPU
//! emulation of the kernels (`crates/kernel-emu`), so that the tests of the
//! kernels also test the grids they are launched with.

/// A convolution's extents, as the tensor crate describes them: x [n, c, h, w],
/// weight [k, c, r, s], y [n, k, ho, wo].
pub use ddpm_tensor::backend::ConvShape;

/// Threads per block of every kernel here.
pub const THREADS: u32 = 256;
/// The output tile of `gemm.cuh` (rows and columns per block).
pub const GEMM_TILE: usize = 64;
/// Elements per block of `sumsq_partial_f32` (`SUMSQ_CHUNK` in reduce.cu).
pub const SUMSQ_CHUNK: usize = 4096;

/// A grid of blocks and the threads of one block, (x, y, z) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

impl Launch {
    /// Whether CUDA takes this grid: at most 2^31 - 1 blocks along x and
    /// 65,535 along y and z.
    pub fn check(&self) -> Result<(), String> {
        let (x, y, z) = self.grid;
        if x > i32::MAX as u32 || y > 65_535 || z > 65_535 {
            return Err(format!("a grid of {x} x {y} x {z} blocks is more than CUDA launches"));
        }
        Ok(())
    }
}

impl From<Launch> for cudarc::driver::LaunchConfig {
    fn from(l: Launch) -> Self {
        cudarc::driver::LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: 0 }
    }
}

/// `n` as a grid extent; [`Launch::check`] refuses what is too large (an
/// extent beyond u32 saturates, so that it does too).
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One thread per element of `n`.
pub fn elementwise(n: usize) -> Launch {
    Launch { grid: (count(n.div_ceil(THREADS as usize)).max(1), 1, 1), block: (THREADS, 1, 1) }
}

/// The tiled GEMM of `gemm.cuh`: one block per 64 x 64 tile of the
/// `rows` x `cols` output, `batch` of them along z.
pub fn tiled_gemm(rows: usize, cols: usize, batch: usize) -> Launch {
    Launch {
        grid: (count(cols.div_ceil(GEMM_TILE)).max(1), count(rows.div_ceil(GEMM_TILE)).max(1), count(batch).max(1)),
        block: (THREADS, 1, 1),
    }
}

/// One block per row (a group of group norm, a row of softmax, an output
/// of a sum).
pub fn per_row(rows: usize) -> Launch {
    Launch { grid: (count(rows).max(1), 1, 1), block: (THREADS, 1, 1) }
}

/// `sumsq_partial_f32` over `n` elements: one block per [`SUMSQ_CHUNK`].
pub fn sum_of_squares(n: usize) -> Launch {
    per_row(n.div_ceil(SUMSQ_CHUNK))
}

/// `conv2d_fwd_f32`: rows k, columns n * ho * wo.
pub fn conv_forward(g: &ConvShape) -> Launch {
    tiled_gemm(g.k, g.n * g.ho() * g.wo(), 1)
}

/// `conv2d_bwd_input_f32`: rows c, columns n * h * w.
pub fn conv_backward_input(g: &ConvShape) -> Launch {
    tiled_gemm(g.c, g.n * g.h * g.w, 1)
}

/// `conv2d_bwd_weight_f32`: rows k, columns c * r * s.
pub fn conv_backward_weight(g: &ConvShape) -> Launch {
    tiled_gemm(g.k, g.c * g.r * g.s, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cover_every_output_and_no_more_than_one_extra_tile() {
        let l = tiled_gemm(65, 128, 3);
        assert_eq!(l.grid, (2, 2, 3));
        assert_eq!(elementwise(257).grid.0, 2);
        assert_eq!(elementwise(0).grid.0, 1);
        assert_eq!(sum_of_squares(SUMSQ_CHUNK + 1).grid.0, 2);
        let conv = ConvShape { n: 2, c: 3, h: 28, w: 28, k: 32, r: 3, s: 3, stride: 2, pad: 1 };
        assert_eq!((conv.ho(), conv.wo()), (14, 14));
        assert_eq!(conv_forward(&conv).grid, ((2 * 14 * 14usize).div_ceil(64) as u32, 1, 1));
    }

    #[test]
    fn grids_cuda_cannot_launch_are_refused() {
        assert!(tiled_gemm(64, 64, 65_535).check().is_ok());
        assert!(tiled_gemm(64, 64, 65_536).check().is_err());
        assert!(tiled_gemm(64 * 65_536, 64, 1).check().is_err());
        assert!(elementwise(usize::MAX).check().is_err());
    }
}
