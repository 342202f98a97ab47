//! The convolution kernels at the U-Net's shapes (batch 64, MNIST), in GFLOP/s,
//! through the tensor ops on each device: the CPU's (direct AVX-512 kernels
//! where they apply, else im2col + GEMM, on rayon; `DDPM_CONV=gemm` forces
//! im2col + GEMM, to compare), and where a GPU can be used the CUDA kernels of
//! kernels/conv2d.cu (tiled implicit GEMM), timed to completion (synchronised).
//!
//! A convolution x [N, C, H, W] * weight [K, C, R, S] -> y [N, K, Ho, Wo] costs
//! 2 N K C R S Ho Wo flops, and so does each of its two gradients (the same
//! multiply-adds, grouped differently). Criterion is told that one iteration handles
//! that many "elements", so the throughput it prints as `Gelem/s` is GFLOP/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ddpm_rs::tensor::backend::synchronize;
use ddpm_rs::tensor::ops::{conv2d_backward_input, conv2d_backward_weight, Conv2dParams};
use ddpm_rs::tensor::{Device, Tensor};
use rand::{rngs::StdRng, SeedableRng};
use std::time::Duration;

const BATCH: usize = 64;

/// (C, K, H = W, kernel R = S, stride, padding) and where the shape comes from.
const SHAPES: &[(usize, usize, usize, usize, usize, usize, &str)] = &[
    (16, 16, 28, 3, 1, 1, "tiny 16->16 3x3 @28x28"),
    (32, 32, 14, 3, 1, 1, "tiny 32->32 3x3 @14x14"),
    (32, 32, 7, 3, 1, 1, "tiny 32->32 3x3 @7x7"),
    (16, 16, 28, 3, 2, 1, "tiny downsample 16->16 3x3 stride 2 @28->14"),
    (1, 16, 28, 3, 1, 1, "stem 1->16 3x3 @28x28"),
    (32, 96, 7, 1, 1, 0, "attention qkv 32->96 1x1 @7x7"),
    (32, 32, 28, 3, 1, 1, "small 32->32 3x3 @28x28"),
    (64, 64, 14, 3, 1, 1, "small 64->64 3x3 @14x14"),
    (128, 128, 7, 3, 1, 1, "small 128->128 3x3 @7x7"),
    (128, 384, 7, 1, 1, 0, "small attention qkv 128->384 1x1 @7x7"),
];

fn conv2d(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let mut rng = StdRng::seed_from_u64(0);
    let mut devices = vec![("cpu", Device::Cpu)];
    match ddpm::device::cuda(0) {
        Ok(gpu) => devices.push(("gpu", gpu)),
        Err(why) => eprintln!("GPU benches skipped: {why}"),
    }
    for &(cin, k, hw, r, stride, padding, what) in SHAPES {
        let p = Conv2dParams { stride, padding };
        let x = Tensor::randn([BATCH, cin, hw, hw], &mut rng);
        let w = Tensor::randn([k, cin, r, r], &mut rng);
        let b = Tensor::randn([k], &mut rng);
        let y = x.conv2d(&w, Some(&b), p).unwrap();
        let d_out = Tensor::randn(y.shape().clone(), &mut rng);
        let [_, _, ho, wo] = *y.dims() else { unreachable!() };
        // The "elements" are flops: one multiply and one add per weight tap per output.
        group.throughput(Throughput::Elements((2 * BATCH * k * cin * r * r * ho * wo) as u64));
        for &(name, device) in &devices {
            let on = |t: &Tensor| t.to(device).unwrap();
            let (x, w, b, d_out) = (on(&x), on(&w), on(&b), on(&d_out));
            let sync = || synchronize(device).unwrap();
            group.bench_function(BenchmarkId::new(format!("{name}/forward"), what), |bench| {
                bench.iter(|| {
                    let y = x.conv2d(&w, Some(&b), p).unwrap();
                    sync();
                    y
                })
            });
            group.bench_function(BenchmarkId::new(format!("{name}/backward_input"), what), |bench| {
                bench.iter(|| {
                    let d = conv2d_backward_input(&d_out, &w, x.shape(), p).unwrap();
                    sync();
                    d
                })
            });
            group.bench_function(BenchmarkId::new(format!("{name}/backward_weight"), what), |bench| {
                bench.iter(|| {
                    let d = conv2d_backward_weight(&x, &d_out, w.shape(), p).unwrap();
                    sync();
                    d
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, conv2d);
criterion_main!(benches);
