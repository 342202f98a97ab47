//! Every CUDA kernel, run in CPU emulation (kernels/emu/cuda_emu.h) through
//! the same `DeviceOps` the GPU uses (argument checks, launch geometry),
//! against the CPU reference.

use ddpm_cuda::launch::{self, ConvShape};
use ddpm_cuda::{ConvKernel, DeviceOps, MatmulShape, NormShape, Step};
use ddpm_kernel_emu::{ffi, launch as emulate, Emu, Shared};
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
        let tiled = Emu.conv2d_forward(ConvKernel::Tiled, &g, &x, &w, Some(&b)).unwrap();
        assert_close(&format!("tiled forward, case {i} {g:?}"), &tiled, want.as_slice(), terms);
        let naive = Emu.conv2d_forward(ConvKernel::Naive, &g, &x, &w, Some(&b)).unwrap();
        assert_close(&format!("naive forward, case {i}"), &naive, want.as_slice(), terms);
        // Without a bias (a null pointer).
        let no_bias =
            conv2d_reference(&tensor(&x, &[g.n, g.c, g.h, g.w]), &tensor(&w, &[g.k, g.c, g.r, g.s]), None, p).unwrap();
        let tiled = Emu.conv2d_forward(ConvKernel::Tiled, &g, &x, &w, None).unwrap();
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
        let tiled = Emu.conv2d_backward_input(ConvKernel::Tiled, &g, &d_y, &w).unwrap();
        assert_close(&format!("tiled input gradient, case {i} {g:?}"), &tiled, want.as_slice(), terms);
        let naive = Emu.conv2d_backward_input(ConvKernel::Naive, &g, &d_y, &w).unwrap();
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
        let tiled = Emu.conv2d_backward_weight(ConvKernel::Tiled, &g, &x, &d_y).unwrap();
        assert_close(&format!("tiled weight gradient, case {i} {g:?}"), &tiled, want.as_slice(), terms);
        let naive = Emu.conv2d_backward_weight(ConvKernel::Naive, &g, &x, &d_y).unwrap();
        assert_close(&format!("naive weight gradient, case {i}"), &naive, want.as_slice(), terms);
    }
}

/// C[b] = alpha op(A[b]) op(B[b]) + bias by the definition, in f64.
fn matmul_reference(s: &MatmulShape, a: &[f32], b: &[f32], bias: Option<&[f32]>, alpha: f32) -> Vec<f32> {
    let mut c = vec![0.0f32; s.c_len()];
    for bi in 0..s.batch {
        let (a, b) = (&a[bi * s.stride_a..], &b[bi * s.stride_b..]);
        for i in 0..s.m {
            for j in 0..s.n {
                let mut acc = 0.0f64;
                for k in 0..s.l {
                    let av = if s.transpose_a { a[k * s.m + i] } else { a[i * s.l + k] };
                    let bv = if s.transpose_b { b[j * s.l + k] } else { b[k * s.n + j] };
                    acc += av as f64 * bv as f64;
                }
                c[(bi * s.m + i) * s.n + j] = alpha * acc as f32 + bias.map_or(0.0, |b| b[j]);
            }
        }
    }
    c
}

#[test]
fn matmul_matches_the_definition_for_every_transpose_stride_and_bias() {
    let cases = [
        // (transpose a, transpose b, stride of a, stride of b, offset of a, bias)
        (false, false, 70 * 20, 20 * 33, 0, false),
        (true, false, 70 * 20, 20 * 33, 0, true),
        (false, true, 70 * 20, 0, 0, true),             // a weight shared by the batch
        (true, true, 3 * 70 * 20, 20 * 33, 140, false), // read out of a larger tensor
    ];
    for (ta, tb, stride_a, stride_b, offset, with_bias) in cases {
        let s = MatmulShape { batch: 3, m: 70, n: 33, l: 20, transpose_a: ta, transpose_b: tb, stride_a, stride_b };
        let (a, b, bias) = (randn(offset + s.a_len() + 5, 8), randn(s.b_len(), 9), randn(s.n, 10));
        let bias = with_bias.then_some(&bias);
        let want = matmul_reference(&s, &a[offset..], &b, bias.map(|b| &b[..]), 0.5);
        let c = Emu.matmul(&s, (&a, offset), (&b, 0), bias, 0.5).unwrap();
        assert_close(&format!("matmul {s:?}"), &c, &want, s.l);
    }
    let s = MatmulShape::new(2, 4, 4, 4);
    assert!(Emu.matmul(&s, (&vec![0.0; 31], 0), (&vec![0.0; 32], 0), None, 1.0).is_err(), "a short operand is refused");
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
    assert_eq!(Emu.randn(n, seed, offset).unwrap(), Tensor::randn_philox([n], seed, offset).to_vec());
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
            let update = match update {
                Update::Ddpm { eps_coef, sqrt_a, sigma } => ddpm_cuda::Update::Ddpm { eps_coef, sqrt_a, sigma },
                Update::Ddim { ab, ab_prev, sigma, dir } => ddpm_cuda::Update::Ddim { ab, ab_prev, sigma, dir },
            };
            Emu.sampling_step(&mut got, &eps, &Step { update, guidance: w, seed, offset }).unwrap();
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

            let g = NormShape { n, c, hw, groups, silu };
            let (y, mean, rstd) =
                Emu.group_norm_forward(&g, &x.to_vec(), &gamma.to_vec(), &beta.to_vec(), 1e-5).unwrap();
            let what = format!("[{n}, {c}, {hw}] in {groups} groups, silu {silu}");
            assert_close(&format!("forward {what}"), &y, want_y.as_slice(), 1);
            assert_close(&format!("mean {what}"), &mean, stats.mean.as_slice(), 1);
            assert_close(&format!("rstd {what}"), &rstd, stats.rstd.as_slice(), 1);
            let (dx, dgamma, dbeta) = Emu
                .group_norm_backward(&g, &x.to_vec(), &gamma.to_vec(), &beta.to_vec(), &mean, &rstd, &d_y.to_vec())
                .unwrap();
            assert_close(&format!("input gradient {what}"), &dx, want_dx.as_slice(), c / groups * hw);
            assert_close(&format!("gamma gradient {what}"), &dgamma, want_dgamma.as_slice(), n * hw);
            assert_close(&format!("beta gradient {what}"), &dbeta, want_dbeta.as_slice(), n * hw);
        }
    }
}

#[test]
fn pointwise_and_layout_kernels_match_the_tensor_ops() {
    let (n, c, h, w) = (2, 3, 5, 7);
    let x = tensor(&randn(n * c * h * w, 30), &[n, c, h, w]);
    let y = tensor(&randn(n * c * h * w, 31), &[n, c, h, w]);
    assert_close("silu", &Emu.silu(&x.to_vec()).unwrap(), x.silu().unwrap().as_slice(), 1);

    let mut sum = x.to_vec();
    Emu.add_assign(&mut sum, &y.to_vec()).unwrap();
    assert_close("add_assign", &sum, x.add(&y).unwrap().as_slice(), 1);

    let v = tensor(&randn(n * c, 32), &[n, c, 1, 1]);
    let mut b = x.to_vec();
    Emu.add_broadcast(&mut b, &v.to_vec(), h * w).unwrap();
    assert_close("add_broadcast", &b, x.add(&v).unwrap().as_slice(), 1);

    let z = tensor(&randn(n * 4 * h * w, 33), &[n, 4, h, w]);
    let cat = Emu.concat2(&x.to_vec(), &z.to_vec(), n, c * h * w, 4 * h * w).unwrap();
    assert_eq!(cat, Tensor::concat(&[&x, &z], 1).unwrap().to_vec(), "concat along channels");

    let up = Emu.upsample2x(&x.to_vec(), n * c, h, w).unwrap();
    assert_eq!(up, x.upsample_nearest2x().unwrap().to_vec(), "upsample");

    // Rows longer than the block (300) and shorter (49), with large values.
    for cols in [300, 49] {
        let m = tensor(&randn(6 * cols, 34).iter().map(|v| 20.0 * v).collect::<Vec<_>>(), &[6, cols]);
        let mut s = m.to_vec();
        Emu.softmax_rows(&mut s, cols).unwrap();
        assert_close(&format!("softmax rows of {cols}"), &s, m.softmax().unwrap().as_slice(), 1);
    }
}

/// d(sum(f(x) * w))/dx by the CPU autograd: the gradient of f at x along w.
fn cpu_gradient(x: &Tensor, w: &Tensor, f: impl Fn(&ddpm_autograd::Var) -> ddpm_autograd::Var) -> Tensor {
    let xv = ddpm_autograd::Var::param(x.clone());
    let loss = f(&xv).mul(&ddpm_autograd::Var::constant(w.clone())).unwrap().sum_all().unwrap();
    loss.backward().unwrap().get(&xv).unwrap().clone()
}

#[test]
fn gradient_kernels_match_the_cpu_autograd() {
    let (n, c, h, w) = (2, 3, 5, 7);
    let x = tensor(&randn(n * c * h * w, 40), &[n, c, h, w]);
    let d_y = tensor(&randn(n * c * h * w, 41), &[n, c, h, w]);
    let want = cpu_gradient(&x, &d_y, |v| v.silu().unwrap());
    assert_close("silu backward", &Emu.silu_backward(&x.to_vec(), &d_y.to_vec()).unwrap(), want.as_slice(), 1);

    let d_up = tensor(&randn(4 * n * c * h * w, 42), &[n, c, 2 * h, 2 * w]);
    let want = cpu_gradient(&x, &d_up, |v| v.upsample_nearest2x().unwrap());
    assert_close(
        "upsample backward",
        &Emu.upsample2x_backward(&d_up.to_vec(), n * c, h, w).unwrap(),
        want.as_slice(),
        4,
    );

    let z = tensor(&randn(n * 4 * h * w, 43), &[n, 4, h, w]);
    let cat = Tensor::concat(&[&x, &z], 1).unwrap();
    let (a, b) = Emu.split2(&cat.to_vec(), n, c * h * w, 4 * h * w).unwrap();
    assert_eq!((a, b), (x.to_vec(), z.to_vec()), "split undoes concat");

    for cols in [300, 49] {
        let m = tensor(&randn(6 * cols, 44), &[6, cols]);
        let g = tensor(&randn(6 * cols, 45), &[6, cols]);
        let want = cpu_gradient(&m, &g, |v| v.softmax().unwrap());
        let mut got = g.to_vec();
        Emu.softmax_rows_backward(&m.softmax().unwrap().to_vec(), &mut got, cols).unwrap();
        assert_close(&format!("softmax backward, rows of {cols}"), &got, want.as_slice(), cols);
    }

    let rows = tensor(&randn(5 * 333, 46), &[5, 333]);
    let want = rows.sum_axes(&[1], false).unwrap();
    assert_close("sum_inner", &Emu.sum_inner(&rows.to_vec(), 5, 333).unwrap(), want.as_slice(), 333);
}

#[test]
fn the_training_steps_pointwise_kernels_follow_their_definitions() {
    use ddpm::{Schedule, ScheduleKind};
    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    let (x0, e) = (tensor(&randn(3 * 784, 50), &[3, 1, 28, 28]), tensor(&randn(3 * 784, 51), &[3, 1, 28, 28]));
    let t = [0usize, 500, 999];
    let want = schedule.q_sample(&x0, &t, &e).unwrap();
    let abar: Vec<f32> = t.iter().map(|&t| schedule.abar(t) as f32).collect();
    let bbar: Vec<f32> = t.iter().map(|&t| schedule.bbar(t) as f32).collect();
    let got = Emu.q_sample(&x0.to_vec(), &e.to_vec(), &abar, &bbar, 784).unwrap();
    assert_close("q_sample", &got, want.as_slice(), 1);

    let pred = tensor(&randn(3 * 784, 52), &[3, 1, 28, 28]);
    let loss = ddpm_autograd::Var::param(pred.clone());
    let mse = loss.mse(&ddpm_autograd::Var::constant(e.clone())).unwrap();
    let want_grad = mse.backward().unwrap().get(&loss).unwrap().clone();
    let (grad, sq) = Emu.mse_grad(&pred.to_vec(), &e.to_vec(), 2.0 / pred.numel() as f32).unwrap();
    assert_close("mse gradient", &grad, want_grad.as_slice(), 1);
    let total = Emu.sum_inner(&sq, 1, sq.len()).unwrap()[0] / sq.len() as f32;
    assert!((total - mse.value().item().unwrap()).abs() < 1e-5, "mse value {total}");
}

#[test]
fn clipping_adam_and_the_ema_match_the_cpu_optimiser() {
    use ddpm::device_train::adam_step;
    use ddpm_autograd::{Gradients, Var};
    use ddpm_nn::optim::{clip_grad_norm, Adam, AdamConfig, Ema};
    let shapes = [vec![7, 5], vec![300]];
    let params: Vec<Var> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Var::param(tensor(&randn(s.iter().product(), 60 + i as u64), s)))
        .collect();
    let grads_cpu: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| tensor(&randn(s.iter().product(), 70 + i as u64).iter().map(|v| 3.0 * v).collect::<Vec<_>>(), s))
        .collect();

    // The device's state, from the same starting point.
    let mut p_dev: Vec<Vec<f32>> = params.iter().map(|p| p.value().to_vec()).collect();
    let g_dev: Vec<Vec<f32>> = grads_cpu.iter().map(|g| g.to_vec()).collect();
    let mut m_dev: Vec<Vec<f32>> = p_dev.iter().map(|p| vec![0.0; p.len()]).collect();
    let mut v_dev = m_dev.clone();
    let mut ema_dev = p_dev.clone();

    let mut adam = Adam::new(&params, AdamConfig::default()).unwrap();
    let mut ema = Ema::new(&params, 0.999);
    for step in 1..=3u64 {
        // CPU: the gradients of sum_i sum(p_i * G_i) are the G_i; clip, Adam, EMA.
        let terms: Vec<Var> = params
            .iter()
            .zip(&grads_cpu)
            .map(|(p, g)| p.mul(&Var::constant(g.clone())).unwrap().sum_all().unwrap())
            .collect();
        let loss = terms[1..].iter().fold(terms[0].clone(), |acc, t| acc.add(t).unwrap());
        let mut grads: Gradients = loss.backward().unwrap();
        let norm = clip_grad_norm(&params, &mut grads, 1.0).unwrap().item().unwrap();
        adam.step(&params, &grads).unwrap();
        let d = ema.current_decay();
        ema.update(&params).unwrap();

        // Device: the same three.
        let clip = Emu.clip_coefficient(&g_dev.iter().collect::<Vec<_>>(), 1.0).unwrap();
        assert!((clip[0] - norm).abs() < 1e-4 * norm, "norm {} against {norm}", clip[0]);
        let s = adam_step(&AdamConfig::default(), step);
        for i in 0..params.len() {
            Emu.adam(&mut p_dev[i], &g_dev[i], &mut m_dev[i], &mut v_dev[i], &clip, &s).unwrap();
            Emu.ema(&mut ema_dev[i], &p_dev[i], 1.0 - d).unwrap();
        }
    }
    for (i, p) in params.iter().enumerate() {
        assert_close(&format!("parameter {i} after 3 Adam steps"), &p_dev[i], p.value().as_slice(), 1);
        assert_close(&format!("EMA {i} after 3 steps"), &ema_dev[i], ema.shadow()[i].as_slice(), 1);
    }
}

#[test]
fn dropout_draws_the_cpu_mask_from_the_same_seed() {
    let n = 5000;
    let x = randn(n, 80);
    let mask = ddpm_nn::layers::dropout_mask(12345, 0.1, n);
    let want: Vec<f32> = x.iter().zip(&mask).map(|(a, m)| a * m).collect();
    let got = Emu.dropout(&x, 0.1, 12345).unwrap();
    assert_close("dropout", &got, &want, 1);
    let dropped = got.iter().filter(|&&v| v == 0.0).count();
    assert!((400..600).contains(&dropped), "{dropped} of {n} dropped at p = 0.1");
}
