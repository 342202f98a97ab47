//! Launch geometry: how many blocks of how many threads each kernel gets.
//!
//! One place for it, shared by the GPU ([`crate::Gpu`]) and the CPU
//! emulation of the kernels (`crates/kernel-emu`), so that the tests of the
//! kernels also test the grids they are launched with.

/// Threads per block of every kernel here.
pub const THREADS: u32 = 256;
/// The output tile of `gemm.cuh` (rows and columns per block).
pub const GEMM_TILE: usize = 64;

/// A grid of blocks and the threads of one block, (x, y, z) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

impl From<Launch> for cudarc::driver::LaunchConfig {
    fn from(l: Launch) -> Self {
        cudarc::driver::LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: 0 }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).expect("grid dimension beyond u32")
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

/// One block per row (a group of group norm, a row of softmax).
pub fn per_row(rows: usize) -> Launch {
    Launch { grid: (count(rows).max(1), 1, 1), block: (THREADS, 1, 1) }
}

/// A convolution's extents: input [n, c, h, w], weight [k, c, r, s].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.r) / self.stride + 1
    }

    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.s) / self.stride + 1
    }

    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    pub fn weight_len(&self) -> usize {
        self.k * self.c * self.r * self.s
    }

    pub fn output_len(&self) -> usize {
        self.n * self.k * self.ho() * self.wo()
    }

    /// Multiply-adds of one pass (forward, or either gradient).
    pub fn macs(&self) -> usize {
        self.output_len() * self.c * self.r * self.s
    }

    /// The kernels' integer arguments, in their order: n, c, h, w, k, r, s, stride, pad.
    pub fn args(&self) -> [i32; 9] {
        let a = [self.n, self.c, self.h, self.w, self.k, self.r, self.s, self.stride, self.pad];
        a.map(|v| i32::try_from(v).expect("convolution extent beyond i32"))
    }

    /// `conv2d_fwd_f32`: rows k, columns n * ho * wo.
    pub fn forward(&self) -> Launch {
        tiled_gemm(self.k, self.n * self.ho() * self.wo(), 1)
    }

    /// `conv2d_bwd_input_f32`: rows c, columns n * h * w.
    pub fn backward_input(&self) -> Launch {
        tiled_gemm(self.c, self.n * self.h * self.w, 1)
    }

    /// `conv2d_bwd_weight_f32`: rows k, columns c * r * s.
    pub fn backward_weight(&self) -> Launch {
        tiled_gemm(self.k, self.c * self.r * self.s, 1)
    }
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
        let conv = ConvShape { n: 2, c: 3, h: 28, w: 28, k: 32, r: 3, s: 3, stride: 2, pad: 1 };
        assert_eq!((conv.ho(), conv.wo()), (14, 14));
        assert_eq!(conv.forward().grid, ((2 * 14 * 14usize).div_ceil(64) as u32, 1, 1));
    }
}
