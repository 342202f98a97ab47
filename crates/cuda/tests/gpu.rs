//! The kernels on a real GPU against the CPU reference. They skip, saying
//! so, where there is no GPU (CI, and most sessions); DDPM_REQUIRE_GPU makes
//! that a failure, for runs on the GPU machine.

use ddpm::sampler::{apply_update, ddim_update, ddpm_update};
use ddpm::{Schedule, ScheduleKind};
use ddpm_cuda::launch::ConvShape;
use ddpm_cuda::{ConvKernel, DeviceOps, Executor, Gpu, MatmulShape, Step};
use ddpm_tensor::ops::{
    conv2d_backward_input_reference, conv2d_backward_weight_reference, conv2d_reference, Conv2dParams,
};
use ddpm_tensor::{Shape, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn gpu() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(gpu) => Some(gpu),
        Err(e) if std::env::var_os("DDPM_REQUIRE_GPU").is_some() => panic!("DDPM_REQUIRE_GPU is set: {e}"),
        Err(e) => {
            eprintln!("skipped: no GPU ({e})");
            None
        }
    }
}

fn randn(dims: &[usize], seed: u64) -> Tensor {
    Tensor::randn(Shape::from(dims.to_vec()), &mut StdRng::seed_from_u64(seed))
}

fn assert_close(what: &str, got: &[f32], want: &Tensor, terms: usize) {
    let tol = 2e-5 * (terms.max(1) as f32).sqrt() * 4.0;
    let err = got.iter().zip(want.as_slice()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= tol, "{what}: max error {err} > {tol}");
}

#[test]
fn conv2d_kernels_match_the_cpu_reference_at_u_net_shapes() {
    let Some(gpu) = gpu() else { return };
    let cases = [
        ConvShape { n: 4, c: 1, h: 28, w: 28, k: 32, r: 3, s: 3, stride: 1, pad: 1 },
        ConvShape { n: 4, c: 64, h: 14, w: 14, k: 64, r: 3, s: 3, stride: 2, pad: 1 },
        ConvShape { n: 4, c: 96, h: 7, w: 7, k: 64, r: 1, s: 1, stride: 1, pad: 0 },
    ];
    for g in cases {
        let p = Conv2dParams { stride: g.stride, padding: g.pad };
        let (x, w, b) = (randn(&[g.n, g.c, g.h, g.w], 1), randn(&[g.k, g.c, g.r, g.s], 2), randn(&[g.k], 3));
        let d_y = randn(&[g.n, g.k, g.ho(), g.wo()], 4);
        let (xd, wd, bd, dyd) = (
            gpu.upload(x.as_slice()).unwrap(),
            gpu.upload(w.as_slice()).unwrap(),
            gpu.upload(b.as_slice()).unwrap(),
            gpu.upload(d_y.as_slice()).unwrap(),
        );
        let y = conv2d_reference(&x, &w, Some(&b), p).unwrap();
        let dx = conv2d_backward_input_reference(&d_y, &w, x.shape(), p).unwrap();
        let dw = conv2d_backward_weight_reference(&x, &d_y, w.shape(), p).unwrap();
        for kernel in [ConvKernel::Tiled, ConvKernel::Naive] {
            let got = gpu.download(&gpu.conv2d_forward(kernel, &g, &xd, &wd, Some(&bd)).unwrap()).unwrap();
            assert_close(&format!("{kernel:?} forward {g:?}"), &got, &y, g.c * g.r * g.s);
            let got = gpu.download(&gpu.conv2d_backward_input(kernel, &g, &dyd, &wd).unwrap()).unwrap();
            assert_close(&format!("{kernel:?} input gradient {g:?}"), &got, &dx, g.k * g.r * g.s);
            let got = gpu.download(&gpu.conv2d_backward_weight(kernel, &g, &xd, &dyd).unwrap()).unwrap();
            assert_close(&format!("{kernel:?} weight gradient {g:?}"), &got, &dw, g.n * g.ho() * g.wo());
        }
    }
}

#[test]
fn matmul_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let s = MatmulShape { transpose_b: true, ..MatmulShape::new(2, 100, 70, 64) };
    let (a, b) = (randn(&[2, 100, 64], 5), randn(&[2, 70, 64], 6));
    let want = a.matmul_nt(&b).unwrap();
    let got = gpu
        .matmul(&s, (&gpu.upload(a.as_slice()).unwrap(), 0), (&gpu.upload(b.as_slice()).unwrap(), 0), None, 1.0)
        .unwrap();
    assert_close("matmul_nt", &gpu.download(&got).unwrap(), &want, s.l);
}

#[test]
fn noise_and_sampling_steps_are_the_same_numbers_as_on_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let n = 4 * 784;
    let z = gpu.download(&gpu.randn(n, 9, 3).unwrap()).unwrap();
    assert_close("randn", &z, &Tensor::randn_philox([n], 9, 3), 1);

    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    let x = randn(&[n], 7);
    let eps = randn(&[2 * n], 8);
    for update in [ddpm_update(&schedule, 500), ddim_update(&schedule, 500, Some(480), 0.5)] {
        let w = 1.0f32;
        let guided: Vec<f32> = (0..n).map(|i| (1.0 + w) * eps.as_slice()[i] - w * eps.as_slice()[i + n]).collect();
        let z = Tensor::randn_philox([n], 11, 2);
        let want = apply_update(&update, &x, &Tensor::from_vec(guided, [n]).unwrap(), &z).unwrap();
        let mut xd = gpu.upload(x.as_slice()).unwrap();
        let device_update = match update {
            ddpm::sampler::Update::Ddpm { eps_coef, sqrt_a, sigma } => {
                ddpm_cuda::Update::Ddpm { eps_coef, sqrt_a, sigma }
            }
            ddpm::sampler::Update::Ddim { ab, ab_prev, sigma, dir } => {
                ddpm_cuda::Update::Ddim { ab, ab_prev, sigma, dir }
            }
        };
        let step = Step { update: device_update, guidance: Some(w), seed: 11, offset: 2 };
        gpu.sampling_step(&mut xd, &gpu.upload(eps.as_slice()).unwrap(), &step).unwrap();
        assert_close(&format!("{update:?}"), &gpu.download(&xd).unwrap(), &want, 1);
    }
}

#[test]
fn group_norm_silu_forward_and_backward_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let (n, c, hw, groups) = (8, 64, 14 * 14, 8);
    let x = randn(&[n, c, hw], 20);
    let (gamma, beta, d_y) = (randn(&[c], 21), randn(&[c], 22), randn(&[n, c, hw], 23));
    let (y, stats) = x.group_norm_silu(groups, &gamma, &beta, 1e-5).unwrap();
    let (dx, dgamma, dbeta) =
        ddpm_tensor::ops::group_norm_silu_backward(&x, &stats, &gamma, &beta, groups, &d_y).unwrap();
    let g = ddpm_cuda::NormShape { n, c, hw, groups, silu: true };
    let up = |t: &Tensor| gpu.upload(t.as_slice()).unwrap();
    let (xd, gd, bd, dyd) = (up(&x), up(&gamma), up(&beta), up(&d_y));
    let (yd, mean, rstd) = gpu.group_norm_forward(&g, &xd, &gd, &bd, 1e-5).unwrap();
    assert_close("group norm + silu", &gpu.download(&yd).unwrap(), &y, 1);
    let (dxd, dgd, dbd) = gpu.group_norm_backward(&g, &xd, &gd, &bd, &mean, &rstd, &dyd).unwrap();
    assert_close("input gradient", &gpu.download(&dxd).unwrap(), &dx, c / groups * hw);
    assert_close("gamma gradient", &gpu.download(&dgd).unwrap(), &dgamma, n * hw);
    assert_close("beta gradient", &gpu.download(&dbd).unwrap(), &dbeta, n * hw);
}

/// The whole forward pass and both samplers on the GPU (`ddpm::device`)
/// against the CPU, on the 15-minute model of the README.
#[test]
fn the_u_net_and_the_samplers_on_the_gpu_match_the_cpu() {
    use ddpm::device::{run_on_device, DeviceUNet};
    use ddpm::sampler::{self, Conditioning, Method};
    use ddpm_autograd::Var;
    use ddpm_nn::checkpoint::{load_into, read_metadata};
    use ddpm_nn::layers::Mode;
    use ddpm_nn::{Module, UNet};

    let Some(gpu) = gpu() else { return };
    // The binary may run on another machine (the GPU host): DDPM_FIXTURES
    // points at tests/fixtures there.
    let fixtures = std::env::var_os("DDPM_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"));
    let ckpt = fixtures.join("rust_trained_tiny_c10.safetensors");
    let meta = read_metadata(&ckpt).unwrap();
    let model = UNet::new(meta.preset.parse().unwrap(), meta.num_classes, &mut StdRng::seed_from_u64(0));
    load_into(&ckpt, &model.named_params()).unwrap();
    let device = DeviceUNet::upload(&gpu, &model).unwrap();

    let x = randn(&[8, 1, 28, 28], 30);
    let (t, y): (Vec<usize>, Vec<usize>) = ((0..8).map(|i| i * 120).collect(), (0..8).map(|i| i % 11).collect());
    let want = model.forward(&Var::constant(x.clone()), &t, Some(&y), &mut Mode::Eval).unwrap().value();
    let got = device.forward(&gpu, &gpu.upload(x.as_slice()).unwrap(), 8, &t, Some(&y)).unwrap();
    let scale = want.as_slice().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let got = gpu.download(&got).unwrap();
    let err = got.iter().zip(want.as_slice()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
    assert!(err < 1e-4, "forward: relative error {err:.2e}");
    let labels = [2usize, 5, 7];
    for (method, schedule) in [
        (Method::Ddim { steps: 10, eta: 0.0 }, Schedule::new(ScheduleKind::Linear, 1000)),
        (Method::Ddpm, Schedule::new(ScheduleKind::Linear, 20)),
    ] {
        let x_t = randn(&[3, 1, 28, 28], 31);
        let cond = Conditioning { labels: Some(&labels), guidance: 1.0 };
        let want = sampler::run(&model, &schedule, &x_t, method, cond, 5, &mut |_, _, _| {}).unwrap();
        let got = run_on_device(&gpu, &device, &schedule, &x_t, method, cond, 5, &mut |_, _, _| {}).unwrap();
        let err = got.max_abs_diff(&want).unwrap() / want.as_slice().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(err < 1e-3, "{method:?}: relative error {err:.2e}");
    }
}
