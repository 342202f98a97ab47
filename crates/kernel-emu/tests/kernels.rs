//! Every CUDA kernel, run in CPU emulation (kernels/emu/cuda_emu.h) with the
//! launch geometry the GPU uses, against the CPU reference.

use ddpm_cuda::launch::{self, ConvShape, Launch};
use ddpm_cuda::MatmulShape;
use ddpm_kernel_emu::{ffi, launch as emulate, Shared};
use ddpm_tensor::ops::{
    conv2d_backward_input_reference, conv2d_backward_weight_reference, conv2d_reference, Conv2dParams,
};
use ddpm_tensor::{philox, Shape, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn randn(len: usize, seed: u64) -> Vec<f32> {
    Tensor::randn([len], &mut StdRng::seed_from_u64(seed)).to_vec()
}

/// Sums of `terms` products of N(0, 1) numbers, in f32 against f64.
fn assert_close(what: &str, got: &[f32], want: &[f32], terms: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let tol = 2e-5 * (terms.max(1) as f32).sqrt() * 4.0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}: element {i} is {g}, reference {w} (tolerance {tol})");
    }
}

/// Shapes that exercise the tiling: extents that are not multiples of the 64
/// x 64 tile or the 16-long reduction slice, more than one tile each way,
/// strides 1 and 2, kernels 1 and 3.
fn conv_cases() -> Vec<ConvShape> {
    let case = |n, c, h, w, k, r, stride, pad| ConvShape { n, c, h, w, k, r, s: r, stride, pad };
    vec![
        case(2, 3, 7, 5, 5, 3, 1, 1),
        case(2, 4, 8, 8, 6, 3, 2, 1),
        case(1, 70, 3, 3, 65, 1, 1, 0),
        case(3, 9, 9, 10, 70, 3, 1, 1),
        case(2, 5, 6, 6, 4, 3, 1, 0),
    ]
}

fn tensor(values: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), Shape::from(dims.to_vec())).unwrap()
}

type ConvFwd =
    unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, i32, i32, i32, i32, i32, i32, i32, i32, i32);
type ConvBwd = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i32, i32, i32, i32, i32, i32, i32, i32, i32);

fn run_fwd(kernel: ConvFwd, at: Launch, g: &ConvShape, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![f32::NAN; g.output_len()];
    let (xp, wp, yp) = (Shared::input(x), Shared::input(w), Shared::new(&mut y));
    let bp = bias.map_or(Shared::null(), Shared::input);
    let [n, c, h, wd, k, r, s, st, pad] = g.args();
    emulate(at, || unsafe { kernel(xp.get(), wp.get(), bp.get(), yp.get(), n, c, h, wd, k, r, s, st, pad) });
    y
}

fn run_bwd(kernel: ConvBwd, at: Launch, g: &ConvShape, a: &[f32], b: &[f32], out_len: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; out_len];
    let (ap, bp, op) = (Shared::input(a), Shared::input(b), Shared::new(&mut out));
    let [n, c, h, wd, k, r, s, st, pad] = g.args();
    emulate(at, || unsafe { kernel(ap.get(), bp.get(), op.get(), n, c, h, wd, k, r, s, st, pad) });
    out
}

#[test]
fn conv2d_forward_tiled_and_naive_match_the_reference() {
    for (i, g) in conv_cases().into_iter().enumerate() {
        let (x, w, b) = (randn(g.input_len(), 1), randn(g.weight_len(), 2), randn(g.k, 3));
        let p = Conv2dParams { stride: g.stride, padding: g.pad };
        let want = conv2d_reference(
            &tensor(&x, &[g.n, g.c, g.h, g.w]),
            &tensor(&w, &[g.k, g.c, g.r, g.s]),
            Some(&tensor(&b, &[g.k])),
            p,
        )
        .unwrap();
        let terms = g.c * g.r * g.s;
        let tiled = run_fwd(ffi::conv2d_fwd_f32, g.forward(), &g, &x, &w, Some(&b));
        assert_close(&format!("tiled forward, case {i} {g:?}"), &tiled, want.as_slice(), terms);
        let naive = run_fwd(ffi::conv2d_fwd_naive_f32, launch::elementwise(g.output_len()), &g, &x, &w, Some(&b));
        assert_close(&format!("naive forward, case {i}"), &naive, want.as_slice(), terms);
        // Without a bias (a null pointer).
        let no_bias =
            conv2d_reference(&tensor(&x, &[g.n, g.c, g.h, g.w]), &tensor(&w, &[g.k, g.c, g.r, g.s]), None, p).unwrap();
        let tiled = run_fwd(ffi::conv2d_fwd_f32, g.forward(), &g, &x, &w, None);
        assert_close(&format!("tiled forward without bias, case {i}"), &tiled, no_bias.as_slice(), terms);
    }
}

#[test]
fn conv2d_input_gradient_tiled_and_naive_match_the_reference() {
    for (i, g) in conv_cases().into_iter().enumerate() {
        let (d_y, w) = (randn(g.output_len(), 4), randn(g.weight_len(), 5));
        let p = Conv2dParams { stride: g.stride, padding: g.pad };
        let input_shape = Shape::from(vec![g.n, g.c, g.h, g.w]);
        let want = conv2d_backward_input_reference(
            &tensor(&d_y, &[g.n, g.k, g.ho(), g.wo()]),
            &tensor(&w, &[g.k, g.c, g.r, g.s]),
            &input_shape,
            p,
        )
        .unwrap();
        let terms = g.k * g.r * g.s;
        let tiled = run_bwd(ffi::conv2d_bwd_input_f32, g.backward_input(), &g, &d_y, &w, g.input_len());
        assert_close(&format!("tiled input gradient, case {i} {g:?}"), &tiled, want.as_slice(), terms);
        let at = launch::elementwise(g.input_len());
        let naive = run_bwd(ffi::conv2d_bwd_input_naive_f32, at, &g, &d_y, &w, g.input_len());
        assert_close(&format!("naive input gradient, case {i}"), &naive, want.as_slice(), terms);
    }
}

#[test]
fn conv2d_weight_gradient_tiled_and_naive_match_the_reference() {
    for (i, g) in conv_cases().into_iter().enumerate() {
        let (x, d_y) = (randn(g.input_len(), 6), randn(g.output_len(), 7));
        let p = Conv2dParams { stride: g.stride, padding: g.pad };
        let weight_shape = Shape::from(vec![g.k, g.c, g.r, g.s]);
        let want = conv2d_backward_weight_reference(
            &tensor(&x, &[g.n, g.c, g.h, g.w]),
            &tensor(&d_y, &[g.n, g.k, g.ho(), g.wo()]),
            &weight_shape,
            p,
        )
        .unwrap();
        let terms = g.n * g.ho() * g.wo();
        let tiled = run_bwd(ffi::conv2d_bwd_weight_f32, g.backward_weight(), &g, &x, &d_y, g.weight_len());
        assert_close(&format!("tiled weight gradient, case {i} {g:?}"), &tiled, want.as_slice(), terms);
        let at = launch::elementwise(g.weight_len());
        let naive = run_bwd(ffi::conv2d_bwd_weight_naive_f32, at, &g, &x, &d_y, g.weight_len());
        assert_close(&format!("naive weight gradient, case {i}"), &naive, want.as_slice(), terms);
    }
}

/// C[b] = op(A[b]) op(B[b]) by the definition, in f64.
fn matmul_reference(s: &MatmulShape, a: &[f32], b: &[f32]) -> Vec<f32> {
    let [sa, sb, _] = s.strides().map(|v| v as usize);
    let mut c = vec![0.0f32; s.c_len()];
    for bi in 0..s.batch {
        for i in 0..s.m {
            for j in 0..s.n {
                let mut acc = 0.0f64;
                for k in 0..s.l {
                    let av = if s.transpose_a { a[bi * sa + k * s.m + i] } else { a[bi * sa + i * s.l + k] };
                    let bv = if s.transpose_b { b[bi * sb + j * s.l + k] } else { b[bi * sb + k * s.n + j] };
                    acc += av as f64 * bv as f64;
                }
                c[(bi * s.m + i) * s.n + j] = acc as f32;
            }
        }
    }
    c
}

#[test]
fn matmul_matches_the_definition_for_every_transpose_and_a_shared_operand() {
    for (ta, tb, shared_b) in [(false, false, false), (true, false, false), (false, true, true), (true, true, false)] {
        let s =
            MatmulShape { batch: 3, m: 70, n: 33, l: 20, transpose_a: ta, transpose_b: tb, shared_a: false, shared_b };
        let (a, b) = (randn(s.a_len(), 8), randn(s.b_len(), 9));
        let want = matmul_reference(&s, &a, &b);
        let mut c = vec![f32::NAN; s.c_len()];
        let (ap, bp, cp) = (Shared::input(&a), Shared::input(&b), Shared::new(&mut c));
        let [m, n, l, ta_i, tb_i] = s.args();
        let [sa, sb, sc] = s.strides();
        emulate(launch::tiled_gemm(s.m, s.n, s.batch), || unsafe {
            ffi::matmul_f32(ap.get(), bp.get(), cp.get(), m, n, l, ta_i, tb_i, sa, sb, sc, 0)
        });
        assert_close(&format!("matmul {s:?}"), &c, &want, s.l);
    }
}

#[test]
fn philox_kernel_gives_the_cpu_words_and_the_cpu_normals() {
    let mut rng = StdRng::seed_from_u64(10);
    let mut inputs: Vec<[u32; 6]> = vec![[0; 6], [u32::MAX; 6]];
    inputs.extend((0..300).map(|_| rng.gen::<[u32; 6]>()));
    let flat: Vec<u32> = inputs.iter().flatten().copied().collect();
    let mut words = vec![0u32; 4 * inputs.len()];
    let (ip, op) = (Shared::input(&flat), Shared::new(&mut words));
    let count = inputs.len() as i32;
    emulate(launch::elementwise(inputs.len()), || unsafe { ffi::philox4x32_10_u32(op.get(), ip.get(), count) });
    for (i, v) in inputs.iter().enumerate() {
        let want = philox::philox4x32_10([v[0], v[1], v[2], v[3]], [v[4], v[5]]);
        assert_eq!(&words[4 * i..4 * i + 4], &want, "counter/key {v:?}");
    }

    let n = 1000;
    let (seed, offset) = (0x1234_5678_9abc_def0u64, (1u64 << 33) + 5);
    let mut z = vec![f32::NAN; n];
    let zp = Shared::new(&mut z);
    emulate(launch::elementwise(n), || unsafe { ffi::randn_f32(zp.get(), n as u64, seed, offset) });
    assert_eq!(z, Tensor::randn_philox([n], seed, offset).to_vec());
}

/// The guided estimate (1 + w) c - w u, as `sampler::predict_noise` forms it.
fn guided(eps: &[f32], n: usize, w: Option<f32>) -> Vec<f32> {
    match w {
        Some(w) => (0..n).map(|i| (1.0 + w) * eps[i] - w * eps[i + n]).collect(),
        None => eps.to_vec(),
    }
}

#[test]
fn sampling_step_kernels_match_the_cpu_sampler_with_the_same_noise() {
    use ddpm::sampler::{apply_update, ddim_update, ddpm_update, Update};
    use ddpm::{Schedule, ScheduleKind};
    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    let n = 600;
    let x = randn(n, 11);
    let (seed, offset) = (42u64, 7u64);
    let updates = [
        ddpm_update(&schedule, 999),
        ddpm_update(&schedule, 500),
        ddpm_update(&schedule, 0),
        ddim_update(&schedule, 980, Some(960), 0.0),
        ddim_update(&schedule, 500, Some(400), 1.0),
        ddim_update(&schedule, 20, None, 0.5),
    ];
    for update in updates {
        for w in [None, Some(1.5)] {
            let eps = randn(if w.is_some() { 2 * n } else { n }, 12);
            let z = Tensor::randn_philox([n], seed, offset);
            let want = apply_update(&update, &tensor(&x, &[n]), &tensor(&guided(&eps, n, w), &[n]), &z).unwrap();

            let mut got = x.clone();
            let (xp, ep) = (Shared::new(&mut got), Shared::input(&eps));
            let (g, gw) = (i32::from(w.is_some()), w.unwrap_or(0.0));
            emulate(launch::elementwise(n), || unsafe {
                match update {
                    Update::Ddpm { eps_coef, sqrt_a, sigma } => {
                        ffi::ddpm_step_f32(xp.get(), ep.get(), n as u64, g, gw, eps_coef, sqrt_a, sigma, seed, offset)
                    }
                    Update::Ddim { ab, ab_prev, sigma, dir } => {
                        ffi::ddim_step_f32(xp.get(), ep.get(), n as u64, g, gw, ab, ab_prev, sigma, dir, seed, offset)
                    }
                }
            });
            assert_close(&format!("{update:?} guidance {w:?}"), &got, want.as_slice(), 1);
        }
    }
}

#[test]
fn group_norm_forward_and_backward_match_the_cpu_with_and_without_silu() {
    use ddpm_tensor::ops::{group_norm_backward, group_norm_silu_backward};
    // Groups of 2 channels of 7 x 9 = 63 positions (not a multiple of the
    // block), and groups of 8 channels of 40 (more elements than threads).
    for (n, c, hw, groups) in [(2, 8, 63, 4), (3, 16, 40, 2)] {
        let dims = [n, c, hw];
        let x = Tensor::from_vec(randn(n * c * hw, 13).iter().map(|v| 2.0 * v + 0.5).collect(), dims).unwrap();
        let (gamma, beta) = (tensor(&randn(c, 14), &[c]), tensor(&randn(c, 15), &[c]));
        let d_y = tensor(&randn(n * c * hw, 16), &dims);
        for silu in [false, true] {
            let (want_y, stats) = if silu {
                x.group_norm_silu(groups, &gamma, &beta, 1e-5).unwrap()
            } else {
                x.group_norm(groups, &gamma, &beta, 1e-5).unwrap()
            };
            let (want_dx, want_dgamma, want_dbeta) = if silu {
                group_norm_silu_backward(&x, &stats, &gamma, &beta, groups, &d_y).unwrap()
            } else {
                group_norm_backward(&x, &stats, &gamma, groups, &d_y).unwrap()
            };

            let rows = n * groups;
            let (mut y, mut mean, mut rstd) = (vec![f32::NAN; x.numel()], vec![f32::NAN; rows], vec![f32::NAN; rows]);
            let (xp, gp, bp) =
                (Shared::input(x.as_slice()), Shared::input(gamma.as_slice()), Shared::input(beta.as_slice()));
            let (yp, mp, rp) = (Shared::new(&mut y), Shared::new(&mut mean), Shared::new(&mut rstd));
            let (ci, hwi, gi, si) = (c as i32, hw as i32, groups as i32, i32::from(silu));
            emulate(launch::per_row(rows), || unsafe {
                ffi::group_norm_fwd_f32(
                    xp.get(),
                    gp.get(),
                    bp.get(),
                    yp.get(),
                    mp.get(),
                    rp.get(),
                    ci,
                    hwi,
                    gi,
                    1e-5,
                    si,
                )
            });
            let what = format!("[{n}, {c}, {hw}] in {groups} groups, silu {silu}");
            assert_close(&format!("forward {what}"), &y, want_y.as_slice(), 1);
            assert_close(&format!("mean {what}"), &mean, &stats.mean, 1);
            assert_close(&format!("rstd {what}"), &rstd, &stats.rstd, 1);

            let mut dx = vec![f32::NAN; x.numel()];
            let (mut dg_part, mut db_part) = (vec![f32::NAN; n * c], vec![f32::NAN; n * c]);
            let dyp = Shared::input(d_y.as_slice());
            let (dxp, dgp, dbp) = (Shared::new(&mut dx), Shared::new(&mut dg_part), Shared::new(&mut db_part));
            let (mp, rp) = (Shared::input(&mean), Shared::input(&rstd));
            emulate(launch::per_row(rows), || unsafe {
                ffi::group_norm_bwd_f32(
                    xp.get(),
                    gp.get(),
                    bp.get(),
                    dyp.get(),
                    mp.get(),
                    rp.get(),
                    dxp.get(),
                    dgp.get(),
                    dbp.get(),
                    ci,
                    hwi,
                    gi,
                    si,
                )
            });
            assert_close(&format!("input gradient {what}"), &dx, want_dx.as_slice(), c / groups * hw);
            let mut dgamma = vec![f32::NAN; c];
            let mut dbeta = vec![f32::NAN; c];
            for (part, out) in [(&dg_part, &mut dgamma), (&db_part, &mut dbeta)] {
                let (ip, op) = (Shared::input(part), Shared::new(out));
                emulate(launch::elementwise(c), || unsafe { ffi::sum_rows_f32(ip.get(), op.get(), n as i32, ci) });
            }
            assert_close(&format!("gamma gradient {what}"), &dgamma, want_dgamma.as_slice(), n * hw);
            assert_close(&format!("beta gradient {what}"), &dbeta, want_dbeta.as_slice(), n * hw);
        }
    }
}
