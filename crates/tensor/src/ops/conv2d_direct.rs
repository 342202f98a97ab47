//! Direct 3x3 convolution on AVX-512: the U-Net's "same" convolutions (3x3,
//! stride 1, padding 1) without im2col and without packing the input.
//!
//! im2col + GEMM copies every input pixel nine times into cols, then the GEMM
//! copies cols again into its packed panels, on every call. Here the input is
//! read where it lies. One sample's channel plane, flattened to positions
//! q = oy*W + ox, is a row of a matrix x [C, L]; output (oy, ox) reads tap (r, s)
//! at q + (r-1)*W + (s-1), so for each tap the GEMM's right operand is x itself,
//! shifted along the row:
//!
//!   y[k, q] = bias[k] + sum_{tap} sum_c w[k, c, tap] * x[c, q + shift(tap)]
//!
//! except where the shifted position falls outside the image: in the padding
//! above or below, or across the left or right edge into the neighbouring row.
//! Those lanes are switched off with AVX-512's masked loads, which read nothing
//! (and fault on nothing) where the mask is 0. [`Masks`] holds one 16-bit mask
//! per (vector of 16 positions, tap).
//!
//! The forward micro-kernel keeps a tile of MR = 8 output channels x NV = 3
//! vectors (48 positions) in 24 of the 32 vector registers. For each tap and
//! input channel it loads 3 vectors of x, broadcasts 8 weights and does 24
//! fused multiply-adds: 11 loads feed 24 FMAs, so the two FMA units, not the
//! loads, set the pace. The weights are packed once per call as [K/8][tap][C][8]
//! so that those 8 broadcasts read consecutive floats.
//!
//! The weight gradient is the same sum grouped by weight, one tap at a time:
//!
//!   d_w[k, c, tap] = sum_n sum_q d_y[n, k, q] * x[n, c, q + shift(tap)]
//!
//! where q runs over the outputs whose source through this tap is inside the
//! image: a rectangle, so no masks are needed. With the input turned channels
//! last (x_t [H*W, C], one copy per sample), a position's 16 channels are one
//! vector, and the sum is a GEMM written as outer products: the micro-kernel
//! keeps 8 output channels x 3 vectors (48 input channels) of d_w in 24
//! registers and, for each position, loads 3 vectors of x_t, broadcasts 8
//! values of d_y and does 24 FMAs, as the forward kernel does.
//!
//! In the forward pass, small planes (7x7 is 49 positions: 3 vectors and 1
//! lonely lane) would waste much of a tile, so several samples are laid side
//! by side into one row of G*H*W positions first (as the GEMM path does); the
//! masks keep a sample's taps from reading its neighbour.
//!
//! `DDPM_CONV=gemm` in the environment turns this module off, to compare.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{side_by_side, split_side_by_side, Geometry, Plan};
use crate::pool;

/// Positions in one vector register.
const LANES: usize = 16;
/// Output channels in a forward tile (one broadcast weight each).
const MR: usize = 8;
/// Vectors of positions in a forward tile.
const NV: usize = 3;
/// Taps of a 3x3 kernel.
const TAPS: usize = 9;
/// A row of this many positions keeps a tile busy: samples with smaller planes
/// are grouped side by side up to it (16 samples at 7x7, 4 at 14x14).
const ROW_POSITIONS: usize = 784;
/// The weight gradient passes over a chunk of samples' x and d_y once per tile;
/// chunks of this many floats (1 MiB) stay in the core's L2 cache meanwhile.
const CACHE_FLOATS: usize = 1 << 18;

/// Proof that this CPU runs AVX-512F: only [`Avx512::detect`] makes one, so a
/// function taking one may call the `#[target_feature(enable = "avx512f")]` kernels.
#[derive(Debug, Clone, Copy)]
struct Avx512(());

impl Avx512 {
    fn detect() -> Option<Avx512> {
        is_x86_feature_detected!("avx512f").then_some(Avx512(()))
    }
}

/// A convolution this module computes: 3x3, stride 1, padding 1, and output
/// channels in whole tiles of 8 (for the forward pass), on an AVX-512 CPU.
pub(super) struct Direct {
    isa: Avx512,
    /// Samples laid side by side in one row, so that a row has about [`ROW_POSITIONS`].
    group: usize,
}

impl Direct {
    /// The direct kernel for convolution `g`, or None where it does not apply
    /// (another shape, or a CPU without AVX-512) and im2col + GEMM is used.
    pub(super) fn new(g: &Geometry) -> Option<Direct> {
        static GEMM_ONLY: OnceLock<bool> = OnceLock::new();
        if *GEMM_ONLY.get_or_init(|| std::env::var_os("DDPM_CONV").is_some_and(|v| v == "gemm")) {
            return None;
        }
        let same_3x3 = g.r == 3 && g.s == 3 && g.stride == 1 && g.pad == 1;
        if !same_3x3 || g.n == 0 || g.c == 0 || g.h * g.w == 0 {
            return None;
        }
        let isa = Avx512::detect()?;
        let group = ROW_POSITIONS.div_ceil(g.h * g.w).min(g.n).max(1);
        Some(Direct { isa, group })
    }

    /// Whether the forward pass can run here: output channels in whole tiles.
    pub(super) fn has_forward(g: &Geometry) -> bool {
        g.k.is_multiple_of(MR)
    }

    /// y = conv2d(x, w) + bias, [N, K, H, W]. Needs [`Direct::has_forward`].
    pub(super) fn forward(&self, g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        assert!(Self::has_forward(g), "conv2d direct forward: K = {} is not a multiple of {MR}", g.k);
        let plane = g.h * g.w;
        let packed = pack_forward_weights(g, w);
        let mut y = pool::take(g.n * g.output_len());
        let plan = Plan::new(g);
        plan.for_each_run(&mut y, g.output_len(), |run, y_run| {
            let mut masks = MaskCache::default();
            if self.group == 1 {
                let x_run = &x[run.start * g.input_len()..run.end * g.input_len()];
                let m = masks.get(g, plane);
                for (x_n, y_n) in x_run.chunks_exact(g.input_len()).zip(y_run.chunks_exact_mut(g.output_len())) {
                    forward_row(self.isa, g, m, x_n, plane, &packed, bias, y_n);
                }
                return;
            }
            let mut x_side = pool::take(g.c * self.group * plane);
            let mut y_side = pool::take(g.k * self.group * plane);
            let samples = run.clone().step_by(self.group).map(|first| first..(first + self.group).min(run.end));
            for (group, y_group) in samples.zip(y_run.chunks_mut(self.group * g.output_len())) {
                let len = group.len() * plane;
                let (x_side, y_side) = (&mut x_side[..g.c * len], &mut y_side[..g.k * len]);
                side_by_side(&x[group.start * g.input_len()..group.end * g.input_len()], g.c, plane, x_side);
                forward_row(self.isa, g, masks.get(g, len), x_side, len, &packed, None, y_side);
                split_side_by_side(y_side, g.k, plane, bias, y_group);
            }
            pool::give(x_side);
            pool::give(y_side);
        });
        y
    }

    /// Whether the weight gradient can run here: output channels in whole tiles
    /// of 8 and input channels in whole vectors of 16.
    pub(super) fn has_weight_grad(g: &Geometry) -> bool {
        g.k.is_multiple_of(MR) && g.c.is_multiple_of(LANES)
    }

    /// d_w [K, C, 3, 3] = sum over the batch of d_y (x) x, the weight gradient.
    /// Needs [`Direct::has_weight_grad`].
    pub(super) fn weight_grad(&self, g: &Geometry, x: &[f32], d_y: &[f32]) -> Vec<f32> {
        assert!(Self::has_weight_grad(g), "conv2d direct weight gradient: K = {}, C = {}", g.k, g.c);
        let plane = g.h * g.w;
        let weight_len = g.k * g.c * TAPS;
        let plan = Plan::new(g);
        let partials = plan.map_runs(|run| {
            // Summed as [tap][K][C]: a tile's 16 input channels are one vector.
            let mut by_tap = pool::take_zeroed(weight_len);
            // Samples in chunks whose x and d_y stay in cache while every tile
            // of the weight gradient passes over them.
            let chunk = (CACHE_FLOATS / ((g.c + g.k) * plane)).clamp(1, run.len());
            let mut x_t = pool::take(chunk * g.input_len());
            for first in run.clone().step_by(chunk) {
                let samples = first..(first + chunk).min(run.end);
                let x_t = &mut x_t[..samples.len() * g.input_len()];
                for (x_n, x_t_n) in x[samples.start * g.input_len()..samples.end * g.input_len()]
                    .chunks_exact(g.input_len())
                    .zip(x_t.chunks_exact_mut(g.input_len()))
                {
                    transpose(x_n, g.c, plane, x_t_n);
                }
                let d_y = &d_y[samples.start * g.output_len()..samples.end * g.output_len()];
                weight_grad_chunk(self.isa, g, x_t, d_y, &mut by_tap);
            }
            pool::give(x_t);
            by_tap
        });
        let mut partials = partials.into_iter();
        let mut by_tap = partials.next().expect("a convolution with samples has a run");
        for partial in partials {
            by_tap.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
            pool::give(partial);
        }
        let mut d_w = pool::take(weight_len);
        for (tap, kc) in by_tap.chunks_exact(g.k * g.c).enumerate() {
            for (i, &v) in kc.iter().enumerate() {
                d_w[i * TAPS + tap] = v;
            }
        }
        pool::give(by_tap);
        d_w
    }
}

/// out [cols, rows] = m [rows, cols] transposed: one sample's [C, H*W] planes
/// as [H*W, C], each position's channels adjacent.
fn transpose(m: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    // Blocks of 16 x 16 keep both sides' cache lines in use.
    const B: usize = 16;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = m[r * cols + c];
                }
            }
        }
    }
}

/// The weights as the forward micro-kernel reads them: [K/8][tap][C][8], where
/// w is [K, C, 3, 3], so that a tile's 8 weights for one (tap, c) are adjacent.
fn pack_forward_weights(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let mut packed = pool::take(g.k * g.c * TAPS);
    let mut out = packed.iter_mut();
    for k0 in (0..g.k).step_by(MR) {
        for tap in 0..TAPS {
            for c in 0..g.c {
                for k in k0..k0 + MR {
                    *out.next().expect("packed has K*C*9 floats") = w[(k * g.c + c) * TAPS + tap];
                }
            }
        }
    }
    packed
}

/// For a row of `len` positions (whole samples of H*W, side by side), which
/// lanes of each vector of 16 positions read inside their own sample through
/// each tap: bit i of `bits[v * 9 + tap]` is position 16v + i.
struct Masks {
    len: usize,
    bits: Vec<u16>,
    /// The flat offset of each tap: (r - 1) * W + (s - 1).
    shifts: [isize; TAPS],
}

impl Masks {
    fn new(g: &Geometry, len: usize) -> Masks {
        let (h, w) = (g.h as isize, g.w as isize);
        let plane = g.h * g.w;
        let vectors = len.div_ceil(LANES);
        let mut bits = vec![0u16; vectors * TAPS];
        for f in 0..len {
            let q = f % plane;
            let (oy, ox) = ((q / g.w) as isize, (q % g.w) as isize);
            for tap in 0..TAPS {
                let (dy, dx) = ((tap / 3) as isize - 1, (tap % 3) as isize - 1);
                if (0..h).contains(&(oy + dy)) && (0..w).contains(&(ox + dx)) {
                    bits[(f / LANES) * TAPS + tap] |= 1 << (f % LANES);
                }
            }
        }
        let shifts = std::array::from_fn(|tap| ((tap / 3) as isize - 1) * w + (tap % 3) as isize - 1);
        Masks { len, bits, shifts }
    }

    fn vectors(&self) -> usize {
        self.len.div_ceil(LANES)
    }
}

/// A task's masks, by row length (a run's last group may be shorter).
#[derive(Default)]
struct MaskCache(Vec<Masks>);

impl MaskCache {
    fn get(&mut self, g: &Geometry, len: usize) -> &Masks {
        match self.0.iter().position(|m| m.len == len) {
            Some(i) => &self.0[i],
            None => {
                self.0.push(Masks::new(g, len));
                self.0.last().expect("just pushed")
            }
        }
    }
}

/// The lanes of vector v that lie inside a row of `len` positions.
fn tail_mask(len: usize, v: usize) -> u16 {
    let left = len - v * LANES;
    if left >= LANES {
        u16::MAX
    } else {
        (1u16 << left) - 1
    }
}

/// y [K, len] = conv(x [C, len]) (+ bias), for one row of whole samples.
#[allow(clippy::too_many_arguments)]
fn forward_row(
    isa: Avx512,
    g: &Geometry,
    masks: &Masks,
    x: &[f32],
    len: usize,
    packed: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    assert!(masks.len == len && x.len() == g.c * len && y.len() == g.k * len && packed.len() == g.k * g.c * TAPS);
    let _ = isa;
    let vectors = masks.vectors();
    for k0 in (0..g.k).step_by(MR) {
        let b: [f32; MR] = std::array::from_fn(|i| bias.map_or(0.0, |b| b[k0 + i]));
        let w_tile = &packed[k0 * g.c * TAPS..(k0 + MR) * g.c * TAPS];
        let y_tile = &mut y[k0 * len..(k0 + MR) * len];
        let mut v0 = 0;
        // SAFETY: isa proves AVX-512F. The kernel reads x only in lanes whose mask
        // bit is set, which are positions inside x's row (the masks were built for
        // `len`) and shifted sources inside the same sample's plane, so inside x;
        // it writes y_tile only in lanes below `len` of its rows; w_tile holds
        // [tap][C][8]. The assert above checked all three lengths.
        unsafe {
            while v0 + NV <= vectors {
                forward_tile::<NV>(x.as_ptr(), len, g.c, w_tile.as_ptr(), masks, v0, y_tile.as_mut_ptr(), &b);
                v0 += NV;
            }
            match vectors - v0 {
                0 => {}
                1 => forward_tile::<1>(x.as_ptr(), len, g.c, w_tile.as_ptr(), masks, v0, y_tile.as_mut_ptr(), &b),
                _ => forward_tile::<2>(x.as_ptr(), len, g.c, w_tile.as_ptr(), masks, v0, y_tile.as_mut_ptr(), &b),
            }
        }
    }
}

/// One forward tile: MR output channels (rows of y, `len` apart) x V vectors of
/// positions starting at vector v0.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn forward_tile<const V: usize>(
    x: *const f32,
    len: usize,
    c: usize,
    w: *const f32,
    masks: &Masks,
    v0: usize,
    y: *mut f32,
    bias: &[f32; MR],
) {
    let mut acc = [[_mm512_setzero_ps(); V]; MR];
    for tap in 0..TAPS {
        let mut m = [0u16; V];
        for j in 0..V {
            m[j] = masks.bits[(v0 + j) * TAPS + tap];
        }
        // Off the row where v0 is at its start and the tap looks up: only masked lanes go there.
        let src = x.wrapping_offset((v0 * LANES) as isize + masks.shifts[tap]);
        let w_tap = w.add(tap * c * MR);
        for ci in 0..c {
            let row = src.wrapping_add(ci * len);
            let mut b = [_mm512_setzero_ps(); V];
            for j in 0..V {
                b[j] = _mm512_maskz_loadu_ps(m[j], row.wrapping_add(j * LANES));
            }
            let w_c = w_tap.add(ci * MR);
            for i in 0..MR {
                let wi = _mm512_set1_ps(*w_c.add(i));
                for j in 0..V {
                    acc[i][j] = _mm512_fmadd_ps(wi, b[j], acc[i][j]);
                }
            }
        }
    }
    for i in 0..MR {
        let b = _mm512_set1_ps(bias[i]);
        for j in 0..V {
            let v = v0 + j;
            _mm512_mask_storeu_ps(y.add(i * len + v * LANES), tail_mask(len, v), _mm512_add_ps(acc[i][j], b));
        }
    }
}

/// by_tap [9, K, C] += sum over a chunk of samples of d_y [n, K, H*W] (x)
/// x_t [n, H*W, C] (the input, channels last).
fn weight_grad_chunk(isa: Avx512, g: &Geometry, x_t: &[f32], d_y: &[f32], by_tap: &mut [f32]) {
    let plane = g.h * g.w;
    let samples = x_t.len() / g.input_len();
    assert!(x_t.len() == samples * g.input_len() && d_y.len() == samples * g.output_len());
    assert!(by_tap.len() == TAPS * g.k * g.c && g.k.is_multiple_of(MR) && g.c.is_multiple_of(LANES));
    let _ = isa;
    let vectors = g.c / LANES;
    for tap in 0..TAPS {
        let (r, s) = (tap / 3, tap % 3);
        // The outputs whose source through this tap lies inside the image: a
        // rectangle, so the kernel needs no masks.
        let area = Area {
            rows: g.inside(r, g.h, g.ho),
            cols: g.inside(s, g.w, g.wo),
            shift: (r * g.w + s) as isize - (g.w + 1) as isize,
        };
        let out = &mut by_tap[tap * g.k * g.c..(tap + 1) * g.k * g.c];
        for k0 in (0..g.k).step_by(MR) {
            let d_y_tile = d_y[k0 * plane..].as_ptr();
            let out_tile = out[k0 * g.c..].as_mut_ptr();
            let mut v0 = 0;
            // SAFETY: isa proves AVX-512F. For each of `samples` samples the kernel
            // reads d_y rows k0..k0+8 at positions inside the area (in the plane),
            // and x_t at the area's sources (inside the image, by the area's
            // construction) times C plus channels below C; it adds into rows
            // k0..k0+8 of out [K, C] at channels below C. The asserts above
            // checked the lengths.
            unsafe {
                let tile = |v0| (x_t.as_ptr().add(v0 * LANES), out_tile.add(v0 * LANES));
                while v0 + NV <= vectors {
                    let (x_t, out) = tile(v0);
                    weight_grad_tile::<NV>(g, samples, &area, x_t, d_y_tile, out);
                    v0 += NV;
                }
                let (x_t, out) = tile(v0);
                match vectors - v0 {
                    0 => {}
                    1 => weight_grad_tile::<1>(g, samples, &area, x_t, d_y_tile, out),
                    _ => weight_grad_tile::<2>(g, samples, &area, x_t, d_y_tile, out),
                }
            }
        }
    }
}

/// The output positions one tap reads inside the image, and how far it shifts them.
struct Area {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    /// The flat offset from an output position to its source: (r - 1) * W + (s - 1).
    shift: isize,
}

/// One weight-gradient tile of one tap: 8 output channels x V vectors of 16
/// input channels, summed over `samples` samples and the positions of `area`:
/// out[i, lanes of j] += sum d_y[k0 + i, q] * x_t[q + shift, channels of j].
/// `x_t` points at the tile's first channel of sample 0's [H*W, C]; `d_y` at row
/// k0 of sample 0's [K, H*W]; `out` at row k0, the tile's first channel, of [K, C].
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn weight_grad_tile<const V: usize>(
    g: &Geometry,
    samples: usize,
    area: &Area,
    x_t: *const f32,
    d_y: *const f32,
    out: *mut f32,
) {
    let plane = g.h * g.w;
    let mut acc = [[_mm512_setzero_ps(); V]; MR];
    for n in 0..samples {
        let x_n = x_t.add(n * g.input_len());
        let d_y_n = d_y.add(n * g.output_len());
        for oy in area.rows.clone() {
            for q in oy * g.w + area.cols.start..oy * g.w + area.cols.end {
                let src = x_n.offset((q as isize + area.shift) * g.c as isize);
                let mut b = [_mm512_setzero_ps(); V];
                for j in 0..V {
                    b[j] = _mm512_loadu_ps(src.add(j * LANES));
                }
                for i in 0..MR {
                    let d = _mm512_set1_ps(*d_y_n.add(i * plane + q));
                    for j in 0..V {
                        acc[i][j] = _mm512_fmadd_ps(d, b[j], acc[i][j]);
                    }
                }
            }
        }
    }
    for i in 0..MR {
        for j in 0..V {
            let o = out.add(i * g.c + j * LANES);
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[i][j]));
        }
    }
}
