//! CPU against GPU, with one graph: the same tensor ops, the same U-Net
//! forward pass and the same training step, timed on each device at the
//! U-Net's shapes (batch 64): the fused group norm + SiLU, the sampling
//! update with guidance, the `tiny` U-Net's forward pass and a whole training
//! step. Without a usable GPU only the CPU rows run (the reason is printed).
//! A device's clock stops after `synchronize`. `cargo bench --bench device`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ddpm::data::{Images, Split};
use ddpm::sampler::{ddpm_update, SamplingStep};
use ddpm::{Schedule, ScheduleKind, TrainConfig, Trainer};
use ddpm_rs::autograd::{no_grad, Var};
use ddpm_rs::nn::layers::Mode;
use ddpm_rs::nn::{Module, Preset, UNet};
use ddpm_rs::tensor::backend::synchronize;
use ddpm_rs::tensor::{Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

const BATCH: usize = 64;

/// The CPU, and the GPU where one can be used.
fn devices() -> Vec<(&'static str, Device)> {
    let mut devices = vec![("cpu", Device::Cpu)];
    match ddpm::device::cuda(0) {
        Ok(gpu) => devices.push(("gpu", gpu)),
        Err(why) => eprintln!("GPU rows skipped: {why}"),
    }
    devices
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let mut group = c.benchmark_group("device");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));

    // Made once on the host, then moved to each device.
    let x = Tensor::randn([BATCH, 32, 14, 14], &mut rng);
    let (gamma, beta) = (Tensor::randn([32], &mut rng), Tensor::randn([32], &mut rng));
    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    let step = SamplingStep { update: ddpm_update(&schedule, 500), guidance: Some(1.0), seed: 1, offset: 0 };
    let xs = Tensor::randn([BATCH, 1, 28, 28], &mut rng);
    let eps = Tensor::randn([2 * BATCH, 1, 28, 28], &mut rng);
    let model = UNet::new(Preset::Tiny, 10, &mut rng);
    let (t, y) = (vec![500; BATCH], (0..BATCH).map(|i| i % 10).collect::<Vec<_>>());
    let pixels: Vec<u8> = (0..BATCH * 784).map(|_| rng.gen()).collect();
    let labels: Vec<u8> = (0..BATCH).map(|i| (i % 10) as u8).collect();
    let data = Split { images: Images { count: BATCH, rows: 28, cols: 28, pixels }, labels };
    let config = TrainConfig { batch: BATCH, ..TrainConfig::new(Preset::Tiny, 10) };

    for (name, device) in devices() {
        let sync = || synchronize(device).unwrap();

        // Group norm + SiLU, forward, [64, 32, 14x14] in 8 groups.
        let (xd, gd, bd) = (x.to(device).unwrap(), gamma.to(device).unwrap(), beta.to(device).unwrap());
        group.bench_function(BenchmarkId::new(name, "group_norm_silu 32ch 14x14"), |b| {
            b.iter(|| {
                let out = xd.group_norm_silu(8, &gd, &bd, 1e-5).unwrap();
                sync();
                out
            })
        });

        // One DDPM update with guidance: [64, 1, 28, 28], eps of both halves.
        let (xsd, epsd) = (xs.to(device).unwrap(), eps.to(device).unwrap());
        group.bench_function(BenchmarkId::new(name, "ddpm step + guidance"), |b| {
            b.iter(|| {
                let out = xsd.sampling_step(&epsd, &step).unwrap();
                sync();
                out
            })
        });

        // The tiny U-Net's forward pass, 10 classes.
        model.to_device(device).unwrap();
        let x0 = Var::constant(xs.to(device).unwrap());
        group.bench_function(BenchmarkId::new(name, "tiny forward"), |b| {
            b.iter(|| {
                let out = no_grad(|| model.forward(&x0, &t, Some(&y), &mut Mode::Eval)).unwrap();
                sync();
                out
            })
        });

        // A whole training step of tiny (noising, forward, backward, clipping,
        // Adam, EMA); it ends by reading the loss back.
        let mut trainer = Trainer::new(config.clone(), BATCH).unwrap();
        trainer.to_device(device).unwrap();
        group.bench_function(BenchmarkId::new(name, "tiny train step"), |b| {
            b.iter(|| trainer.train_step(&data).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
