//! Direct convolution on AVX-512: the U-Net's "same" convolutions (3x3 with
//! padding 1, and 1x1; stride 1) without im2col and without packing the input.
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
//! (a 1x1 convolution has one tap, shift 0: a plain GEMM), except where the
//! shifted position falls outside the image: in the padding
//! above or below, or across the left or right edge into the neighbouring row.
//! Those lanes are switched off with AVX-512 masks. [`Masks`] holds one 16-bit
//! mask per (vector of 16 positions, tap). Most tiles load whole vectors (the
//! switched-off lanes read a neighbouring row or channel, which is still inside
//! x) and apply the mask in the fused multiply-add, which then leaves those
//! lanes of the sum alone; the tiles at either end of x, whose loads could
//! leave it, use masked loads instead, which read nothing (and fault on
//! nothing) where the mask is 0. Masked loads measured about 20% slower here.
//!
//! The forward micro-kernel keeps a tile of MR = 8 output channels x NV = 3
//! vectors (48 positions) in 24 of the 32 vector registers. For each tap and
//! input channel it loads 3 vectors of x, broadcasts 8 weights and does 24
//! fused multiply-adds: 11 loads feed 24 FMAs, so the two FMA units, not the
//! loads, set the pace. The weights are packed once per call as [K/8][tap][C][8]
//! so that those 8 broadcasts read consecutive floats. K is padded up to a
//! multiple of 8 with zero weights (the output convolution has K = 1), and the
//! padding rows are never stored.
//!
//! The weight gradient (of 3x3 kernels) is the same sum grouped by weight, one
//! tap at a time:
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
//!
//! Compiled on x86-64 only; elsewhere `no_direct.rs` stands in for it.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::geometry::{flat_shift, Geometry};
use super::plan::{side_by_side, split_side_by_side, sum_partials, Plan};
use super::Addends;
use crate::pool;

/// Positions in one vector register.
const LANES: usize = 16;
/// Output channels in a forward tile (one broadcast weight each).
const MR: usize = 8;
/// Vectors of positions in a forward tile.
const NV: usize = 3;
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

/// A convolution this module computes, on an AVX-512 CPU: stride 1, and 3x3
/// with padding 1 or 1x1 without.
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
        let same = g.stride == 1 && g.r == g.s && (g.r == 1 || g.r == 3) && g.pad == g.r / 2;
        if !same || g.n == 0 || g.c == 0 || g.h * g.w == 0 {
            return None;
        }
        let isa = Avx512::detect()?;
        let group = ROW_POSITIONS.div_ceil(g.h * g.w).min(g.n).max(1);
        Some(Direct { isa, group })
    }

    /// y = conv2d(x, w) + bias + the addends, [N, K, H, W].
    pub(super) fn forward(&self, g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, add: Addends) -> Vec<f32> {
        let plane = g.h * g.w;
        let packed = pack_forward_weights(g, w);
        let mut y = pool::take(g.n * g.output_len());
        let plan = Plan::new(g);
        plan.for_each_run(&mut y, g.output_len(), |run, y_run| {
            let mut masks = MaskCache::default();
            if self.group == 1 {
                let x_run = &x[run.start * g.input_len()..run.end * g.input_len()];
                let m = masks.get(g, plane);
                let samples = x_run.chunks_exact(g.input_len()).zip(y_run.chunks_exact_mut(g.output_len()));
                for (n, (x_n, y_n)) in run.clone().zip(samples) {
                    let add = add.of(g, n..n + 1);
                    let sample_bias = add.sample_bias(bias, g.k);
                    let ends = Ends { bias: sample_bias.as_deref(), residual: add.residual };
                    forward_row(self.isa, g, m, x_n, plane, &packed, ends, y_n);
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
                forward_row(self.isa, g, masks.get(g, len), x_side, len, &packed, Ends::default(), y_side);
                split_side_by_side(y_side, g.k, plane, bias, add.of(g, group), y_group);
            }
            pool::give(x_side);
            pool::give(y_side);
        });
        pool::give(packed);
        y
    }

    /// Whether the weight gradient can run here: a 3x3 kernel, and input
    /// channels in whole vectors of 16. (For a 1x1 kernel the channels-last copy
    /// costs more, against 9 times less arithmetic, than im2col-free GEMM: with it
    /// the U-Net's 1x1 weight gradients took 20 ms a step, without 19.)
    pub(super) fn has_weight_grad(g: &Geometry) -> bool {
        g.r == 3 && g.c.is_multiple_of(LANES)
    }

    /// d_w [K, C, R, S] = sum over the batch of d_y (x) x, the weight gradient.
    /// Needs [`Direct::has_weight_grad`].
    pub(super) fn weight_grad(&self, g: &Geometry, x: &[f32], d_y: &[f32]) -> Vec<f32> {
        assert!(Self::has_weight_grad(g), "conv2d direct weight gradient: C = {} is not a multiple of {LANES}", g.c);
        let plane = g.h * g.w;
        let taps = g.r * g.s;
        let weight_len = g.k * g.c * taps;
        let plan = Plan::new(g);
        let partials = plan.map_runs(|run| {
            // Summed as [tap][K][C]: a tile's 16 input channels are one vector.
            let mut by_tap = pool::take_zeroed(weight_len);
            // Samples in chunks whose x and d_y stay in cache while every tile
            // of the weight gradient passes over them.
            let chunk = (CACHE_FLOATS / ((g.c + g.k) * plane)).clamp(1, run.len());
            let mut x_t_buf = pool::take(chunk * g.input_len() + LANES);
            let x_t = cache_aligned(&mut x_t_buf);
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
            pool::give(x_t_buf);
            by_tap
        });
        let by_tap = sum_partials(partials, weight_len);
        let mut d_w = pool::take(weight_len);
        for (tap, kc) in by_tap.chunks_exact(g.k * g.c).enumerate() {
            for (i, &v) in kc.iter().enumerate() {
                d_w[i * taps + tap] = v;
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

/// The part of `buf` (all but at most 15 floats) that starts on a 64-byte cache
/// line, so that loading 16 floats at a multiple of 16 from it touches one line.
fn cache_aligned(buf: &mut [f32]) -> &mut [f32] {
    let skip = buf.as_ptr().align_offset(64).min(buf.len());
    &mut buf[skip..]
}

/// K rounded up to whole forward tiles.
fn padded_k(g: &Geometry) -> usize {
    g.k.next_multiple_of(MR)
}

/// The weights as the forward micro-kernel reads them: [K/8][tap][C][8], where
/// w is [K, C, R, S], so that a tile's 8 weights for one (tap, c) are adjacent;
/// rows past K are 0.
fn pack_forward_weights(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let taps = g.r * g.s;
    let mut packed = pool::take(padded_k(g) * g.c * taps);
    let mut out = packed.iter_mut();
    for k0 in (0..g.k).step_by(MR) {
        for tap in 0..taps {
            for c in 0..g.c {
                for k in k0..k0 + MR {
                    let weight = if k < g.k { w[(k * g.c + c) * taps + tap] } else { 0.0 };
                    *out.next().expect("packed has K/8 tiles of C*R*S*8 floats") = weight;
                }
            }
        }
    }
    packed
}

/// For a row of `len` positions (whole samples of H*W, side by side), which
/// lanes of each vector of 16 positions read inside their own sample through
/// each of the R*S taps: bit i of `bits[v * taps + tap]` is position 16v + i.
struct Masks {
    len: usize,
    taps: usize,
    bits: Vec<u16>,
    /// The flat offset of each tap: (r - P) * W + (s - P).
    shifts: Vec<isize>,
}

impl Masks {
    fn new(g: &Geometry, len: usize) -> Masks {
        let plane = g.h * g.w;
        let taps = g.r * g.s;
        let mut bits = vec![0u16; len.div_ceil(LANES) * taps];
        for f in 0..len {
            let q = f % plane;
            let (oy, ox) = (q / g.w, q % g.w);
            for tap in 0..taps {
                if g.source(oy, tap / g.s, g.h).is_some() && g.source(ox, tap % g.s, g.w).is_some() {
                    bits[(f / LANES) * taps + tap] |= 1 << (f % LANES);
                }
            }
        }
        let shifts = (0..taps).map(|tap| flat_shift(g, tap / g.s, tap % g.s)).collect();
        Masks { len, taps, bits, shifts }
    }

    fn vectors(&self) -> usize {
        self.len.div_ceil(LANES)
    }

    /// Whether a tile of `v` vectors from vector `v0` may load whole vectors,
    /// masked lanes included, for every tap and channel of x [C, len] without
    /// leaving x. Each channel's loads span v0*16 + shift .. (v0 + v)*16 + shift;
    /// the rows lie end to end, so only channel 0's lowest and channel C-1's
    /// highest can fall outside.
    fn plain_loads_stay_inside(&self, c: usize, v0: usize, v: usize) -> bool {
        let (Some(&lowest), Some(&highest)) = (self.shifts.iter().min(), self.shifts.iter().max()) else {
            return false;
        };
        let first = (v0 * LANES) as isize + lowest;
        let end = ((c - 1) * self.len + (v0 + v) * LANES) as isize + highest;
        first >= 0 && end <= (c * self.len) as isize
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

/// What a forward row adds to the convolution as it stores it: a value per
/// output channel, and a residual of y's shape.
#[derive(Default, Clone, Copy)]
struct Ends<'a> {
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
}

/// y [K, len] = conv(x [C, len]) (+ bias, + residual), for one row of whole samples.
#[allow(clippy::too_many_arguments)]
fn forward_row(
    isa: Avx512,
    g: &Geometry,
    masks: &Masks,
    x: &[f32],
    len: usize,
    packed: &[f32],
    ends: Ends,
    y: &mut [f32],
) {
    let taps = masks.taps;
    let Ends { bias, residual } = ends;
    assert!(taps == g.r * g.s && masks.len == len && x.len() == g.c * len && y.len() == g.k * len);
    assert!(bias.is_none_or(|b| b.len() >= g.k) && residual.is_none_or(|r| r.len() == y.len()));
    assert!(packed.len() == padded_k(g) * g.c * taps);
    let _ = isa;
    let vectors = masks.vectors();
    for k0 in (0..g.k).step_by(MR) {
        let rows = MR.min(g.k - k0);
        let b: [f32; MR] = std::array::from_fn(|i| bias.filter(|_| i < rows).map_or(0.0, |b| b[k0 + i]));
        let w_tile = packed[k0 * g.c * taps..(k0 + MR) * g.c * taps].as_ptr();
        let y_tile = y[k0 * len..(k0 + rows) * len].as_mut_ptr();
        let residual = residual.map(|r| r[k0 * len..(k0 + rows) * len].as_ptr());
        let tile = Tile { x: x.as_ptr(), len, c: g.c, w: w_tile, masks, y: y_tile, residual, rows, bias: &b };
        let mut v0 = 0;
        // SAFETY: isa proves AVX-512F. The kernel reads x only in lanes whose mask
        // bit is set, which are positions inside x's row (the masks were built for
        // `len`) and shifted sources inside the same sample's plane, so inside x,
        // or in whole vectors where `plain_loads_stay_inside` found them inside x;
        // it writes `rows` rows of y_tile, only in lanes below `len`, and reads the
        // residual (y's shape, checked above) at the same places; w_tile holds
        // [tap][C][8]. The asserts above checked all three lengths.
        unsafe {
            while v0 + NV <= vectors {
                if masks.plain_loads_stay_inside(g.c, v0, NV) {
                    forward_tile::<NV, true>(&tile, v0);
                } else {
                    forward_tile::<NV, false>(&tile, v0);
                }
                v0 += NV;
            }
            match vectors - v0 {
                0 => {}
                1 => forward_tile::<1, false>(&tile, v0),
                _ => forward_tile::<2, false>(&tile, v0),
            }
        }
    }
}

/// What a forward tile works on: `rows` (at most MR) output channels, rows of
/// y `len` apart, from x [C, len] and packed weights w [tap][C][MR].
struct Tile<'a> {
    x: *const f32,
    len: usize,
    c: usize,
    w: *const f32,
    masks: &'a Masks,
    y: *mut f32,
    /// Added to y where it is stored: the same layout as y.
    residual: Option<*const f32>,
    rows: usize,
    bias: &'a [f32; MR],
}

/// One forward tile: MR output channels x V vectors of positions starting at
/// vector v0.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn forward_tile<const V: usize, const PLAIN: bool>(tile: &Tile, v0: usize) {
    let &Tile { x, len, c, w, masks, y, residual, rows, bias } = tile;
    let mut acc = [[_mm512_setzero_ps(); V]; MR];
    for tap in 0..masks.taps {
        let mut m = [0u16; V];
        for j in 0..V {
            m[j] = masks.bits[(v0 + j) * masks.taps + tap];
        }
        // Off the row where v0 is at its start and the tap looks up: only masked lanes go there.
        let src = x.wrapping_offset((v0 * LANES) as isize + masks.shifts[tap]);
        let w_tap = w.add(tap * c * MR);
        for ci in 0..c {
            let row = src.wrapping_add(ci * len);
            let mut b = [_mm512_setzero_ps(); V];
            for j in 0..V {
                b[j] = if PLAIN {
                    _mm512_loadu_ps(row.add(j * LANES))
                } else {
                    _mm512_maskz_loadu_ps(m[j], row.wrapping_add(j * LANES))
                };
            }
            let w_c = w_tap.add(ci * MR);
            for i in 0..MR {
                let wi = _mm512_set1_ps(*w_c.add(i));
                for j in 0..V {
                    acc[i][j] = if PLAIN {
                        _mm512_mask3_fmadd_ps(wi, b[j], acc[i][j], m[j])
                    } else {
                        _mm512_fmadd_ps(wi, b[j], acc[i][j])
                    };
                }
            }
        }
    }
    for i in 0..rows {
        let b = _mm512_set1_ps(bias[i]);
        for j in 0..V {
            let (v, at) = (v0 + j, i * len + (v0 + j) * LANES);
            let mut out = _mm512_add_ps(acc[i][j], b);
            if let Some(r) = residual {
                out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(tail_mask(len, v), r.add(at)));
            }
            _mm512_mask_storeu_ps(y.add(at), tail_mask(len, v), out);
        }
    }
}

/// by_tap [R*S, K, C] += sum over a chunk of samples of d_y [n, K, H*W] (x)
/// x_t [n, H*W, C] (the input, channels last).
fn weight_grad_chunk(isa: Avx512, g: &Geometry, x_t: &[f32], d_y: &[f32], by_tap: &mut [f32]) {
    let samples = x_t.len() / g.input_len();
    let taps = g.r * g.s;
    assert!(x_t.len() == samples * g.input_len() && d_y.len() == samples * g.output_len());
    assert!(by_tap.len() == taps * g.k * g.c && g.c.is_multiple_of(LANES));
    let _ = isa;
    for tap in 0..taps {
        let (r, s) = (tap / g.s, tap % g.s);
        // The outputs whose source through this tap lies inside the image: a
        // rectangle, so the kernel needs no masks.
        let area = Area { rows: g.inside(r, g.h, g.ho), cols: g.inside(s, g.w, g.wo), shift: flat_shift(g, r, s) };
        let out = &mut by_tap[tap * g.k * g.c..(tap + 1) * g.k * g.c];
        let mut k0 = 0;
        // SAFETY: isa proves AVX-512F. For each of `samples` samples the kernels
        // read d_y rows k0.. (8 or 1 of them, all below K) at positions inside the
        // area (in the plane), and x_t at the area's sources (inside the image, by
        // the area's construction) times C plus channels below C; they add into
        // the same rows of out [K, C] at channels below C. The asserts above
        // checked the lengths.
        unsafe {
            while k0 + MR <= g.k {
                weight_grad_tiles::<MR>(g, samples, &area, x_t, k0, d_y, out);
                k0 += MR;
            }
            for k in k0..g.k {
                weight_grad_tiles::<1>(g, samples, &area, x_t, k, d_y, out);
            }
        }
    }
}

/// The output positions one tap reads inside the image, and how far it shifts them.
struct Area {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    /// The flat offset from an output position to its source: (r - P) * W + (s - P).
    shift: isize,
}

/// The weight gradient of output channels k0..k0+M, one tap, every input channel:
/// tiles of 3 vectors of 16 channels, then the 1 or 2 left over.
#[target_feature(enable = "avx512f")]
unsafe fn weight_grad_tiles<const M: usize>(
    g: &Geometry,
    samples: usize,
    area: &Area,
    x_t: &[f32],
    k0: usize,
    d_y: &[f32],
    out: &mut [f32],
) {
    let vectors = g.c / LANES;
    let (x_t, d_y, out) = (x_t.as_ptr(), d_y.as_ptr().add(k0 * g.h * g.w), out.as_mut_ptr().add(k0 * g.c));
    let tile = |v0: usize| (x_t.add(v0 * LANES), d_y, out.add(v0 * LANES));
    let mut v0 = 0;
    while v0 + NV <= vectors {
        let (x_t, d_y, out) = tile(v0);
        weight_grad_tile::<M, NV>(g, samples, area, x_t, d_y, out);
        v0 += NV;
    }
    let (x_t, d_y, out) = tile(v0);
    match vectors - v0 {
        0 => {}
        1 => weight_grad_tile::<M, 1>(g, samples, area, x_t, d_y, out),
        _ => weight_grad_tile::<M, 2>(g, samples, area, x_t, d_y, out),
    }
}

/// One weight-gradient tile of one tap: M output channels x V vectors of 16
/// input channels, summed over `samples` samples and the positions of `area`:
/// out[i, lanes of j] += sum d_y[k0 + i, q] * x_t[q + shift, channels of j].
/// `x_t` points at the tile's first channel of sample 0's [H*W, C]; `d_y` at row
/// k0 of sample 0's [K, H*W]; `out` at row k0, the tile's first channel, of [K, C].
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn weight_grad_tile<const M: usize, const V: usize>(
    g: &Geometry,
    samples: usize,
    area: &Area,
    x_t: *const f32,
    d_y: *const f32,
    out: *mut f32,
) {
    let plane = g.h * g.w;
    let mut acc = [[_mm512_setzero_ps(); V]; M];
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
                for i in 0..M {
                    let d = _mm512_set1_ps(*d_y_n.add(i * plane + q));
                    for j in 0..V {
                        acc[i][j] = _mm512_fmadd_ps(d, b[j], acc[i][j]);
                    }
                }
            }
        }
    }
    for i in 0..M {
        for j in 0..V {
            let o = out.add(i * g.c + j * LANES);
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[i][j]));
        }
    }
}
