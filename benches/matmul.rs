//! Matrix multiplication at the shapes a DDPM U-Net produces on MNIST, in GFLOP/s.
//!
//! A product (M, K) x (K, N) costs 2 M K N flops. Criterion is told that one
//! iteration handles that many "elements", so the throughput it prints as
//! `Gelem/s` is GFLOP/s. `scripts/torch_bench.py matmul` times PyTorch at the
//! same shapes for the README's table.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ddpm_rs::tensor::Tensor;
use rand::{rngs::StdRng, SeedableRng};
use std::time::Duration;

/// (M, K, N) and where the shape comes from; convolutions as one GEMM over the
/// whole batch of 64 (M = output channels, K = input channels x 3 x 3, N = 64 x H x W).
const SHAPES: &[(usize, usize, usize, &str)] = &[
    (16, 9, 50176, "stem conv 1->16 @28x28"),
    (16, 144, 50176, "tiny conv 16->16 @28x28"),
    (32, 288, 12544, "tiny conv 32->32 @14x14"),
    (32, 288, 3136, "tiny conv 32->32 @7x7"),
    (64, 576, 3136, "small conv 64->64 @7x7"),
    (128, 1152, 3136, "small conv 128->128 @7x7"),
    (256, 2304, 784, "wide conv 256->256 @7x7, batch 16"),
    (3136, 64, 3136, "attention-like scores"),
    (64, 128, 512, "linear (time MLP, batch 64)"),
    (512, 512, 512, "square 512"),
];

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let mut rng = StdRng::seed_from_u64(0);
    for &(m, k, n, what) in SHAPES {
        let a = Tensor::randn([m, k], &mut rng);
        let b = Tensor::randn([k, n], &mut rng);
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_with_input(BenchmarkId::new(format!("{m}x{k}x{n}"), what), &(a, b), |bench, (a, b)| {
            bench.iter(|| a.matmul(b).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, matmul);
criterion_main!(benches);
