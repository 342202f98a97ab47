//! CPU against GPU at the U-Net's shapes (batch 64): the fused group norm +
//! SiLU, the sampling update, the `tiny` U-Net's forward pass and a whole
//! training step. Without a usable GPU only the CPU rows run (the reason is
//! printed). `cargo bench --bench device`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ddpm::data::{Images, Split};
use ddpm::device::DeviceUNet;
use ddpm::device_train::DeviceTrainer;
use ddpm::sampler::{ddpm_update, SamplingStep, Update};
use ddpm::{Schedule, ScheduleKind, TrainConfig, Trainer};
use ddpm_cuda::{DeviceOps, Executor, Gpu, NormShape, Step};
use ddpm_rs::autograd::{no_grad, Var};
use ddpm_rs::nn::layers::Mode;
use ddpm_rs::nn::{Preset, UNet};
use ddpm_rs::tensor::Tensor;
use rand::{rngs::StdRng, Rng, SeedableRng};

const BATCH: usize = 64;

fn gpu() -> Option<Gpu> {
    Gpu::new(0).map_err(|e| eprintln!("GPU rows skipped: {e}")).ok()
}

fn bench(c: &mut Criterion) {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(0);
    let mut group = c.benchmark_group("device");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));

    // Group norm + SiLU, forward, [64, 32, 14x14] in 8 groups.
    let (c_, hw, groups) = (32, 14 * 14, 8);
    let x = Tensor::randn([BATCH, c_, 14, 14], &mut rng);
    let (gamma, beta) = (Tensor::randn([c_], &mut rng), Tensor::randn([c_], &mut rng));
    group.bench_function(BenchmarkId::new("cpu", "group_norm_silu 32ch 14x14"), |b| {
        b.iter(|| x.group_norm_silu(groups, &gamma, &beta, 1e-5).unwrap())
    });
    if let Some(gpu) = &gpu {
        let g = NormShape { n: BATCH, c: c_, hw, groups, silu: true };
        let up = |t: &Tensor| gpu.upload(t.as_slice()).unwrap();
        let (xd, gd, bd) = (up(&x), up(&gamma), up(&beta));
        group.bench_function(BenchmarkId::new("gpu", "group_norm_silu 32ch 14x14"), |b| {
            b.iter(|| {
                let out = gpu.group_norm_forward(&g, &xd, &gd, &bd, 1e-5).unwrap();
                gpu.synchronize().unwrap();
                out
            })
        });
    }

    // One DDPM update with guidance: [64, 784], eps of both halves.
    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    let update = ddpm_update(&schedule, 500);
    let xs = Tensor::randn([BATCH * 784], &mut rng);
    let eps = Tensor::randn([2 * BATCH * 784], &mut rng);
    group.bench_function(BenchmarkId::new("cpu", "ddpm step + guidance"), |b| {
        let step = SamplingStep { update, guidance: Some(1.0), seed: 1, offset: 0 };
        b.iter(|| xs.sampling_step(&eps, &step).unwrap())
    });
    if let Some(gpu) = &gpu {
        let (mut xd, ed) = (gpu.upload(xs.as_slice()).unwrap(), gpu.upload(eps.as_slice()).unwrap());
        let update = match update {
            Update::Ddpm { eps_coef, sqrt_a, sigma } => ddpm_cuda::Update::Ddpm { eps_coef, sqrt_a, sigma },
            Update::Ddim { ab, ab_prev, sigma, dir } => ddpm_cuda::Update::Ddim { ab, ab_prev, sigma, dir },
        };
        let step = Step { update, guidance: Some(1.0), seed: 1, offset: 0 };
        group.bench_function(BenchmarkId::new("gpu", "ddpm step + guidance"), |b| {
            b.iter(|| {
                gpu.sampling_step(&mut xd, &ed, &step).unwrap();
                gpu.synchronize().unwrap();
            })
        });
    }

    // The tiny U-Net's forward pass, 10 classes.
    let model = UNet::new(Preset::Tiny, 10, &mut rng);
    let x0 = Tensor::randn([BATCH, 1, 28, 28], &mut rng);
    let (t, y) = (vec![500; BATCH], (0..BATCH).map(|i| i % 10).collect::<Vec<_>>());
    group.bench_function(BenchmarkId::new("cpu", "tiny forward"), |b| {
        b.iter(|| no_grad(|| model.forward(&Var::constant(x0.clone()), &t, Some(&y), &mut Mode::Eval)).unwrap())
    });
    if let Some(gpu) = &gpu {
        let device = DeviceUNet::upload(gpu, &model).unwrap();
        let xd = gpu.upload(x0.as_slice()).unwrap();
        group.bench_function(BenchmarkId::new("gpu", "tiny forward"), |b| {
            b.iter(|| {
                let out = device.forward(gpu, &xd, BATCH, &t, Some(&y)).unwrap();
                gpu.synchronize().unwrap();
                out
            })
        });
    }

    // A whole training step of tiny (forward, backward, clipping, Adam, EMA).
    let pixels: Vec<u8> = (0..BATCH * 784).map(|_| rng.gen()).collect();
    let labels: Vec<u8> = (0..BATCH).map(|i| (i % 10) as u8).collect();
    let data = Split { images: Images { count: BATCH, rows: 28, cols: 28, pixels }, labels };
    let config = TrainConfig { batch: BATCH, ..TrainConfig::new(Preset::Tiny, 10) };
    let mut cpu = Trainer::new(config.clone(), BATCH).unwrap();
    group.bench_function(BenchmarkId::new("cpu", "tiny train step"), |b| b.iter(|| cpu.train_step(&data).unwrap()));
    if let Some(gpu) = &gpu {
        let mut run = Trainer::new(config, BATCH).unwrap();
        let mut device = DeviceTrainer::new(gpu, &run).unwrap();
        group.bench_function(BenchmarkId::new("gpu", "tiny train step"), |b| {
            b.iter(|| run.train_step_on(gpu, &mut device, &data).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
