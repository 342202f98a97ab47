//! The checks: one per family of `Backend` entry points, each the same
//! tensor op on the host and on `device`. Shapes are small (the emulation
//! runs every thread of a grid in turn) but exercise the kernels' tiling and
//! ragged edges: extents that are not multiples of the 64 x 64 GEMM tile, of
//! its 16-long reduction slice or of the 256 threads of a block.

use ddpm_tensor::backend::{synchronize, AdamStep};
use ddpm_tensor::ops::{
    conv2d_backward_bias, conv2d_backward_input, conv2d_backward_shift, conv2d_backward_weight, group_norm_backward,
    group_norm_silu_backward, softmax_reference, BinaryOp, Conv2dParams, SamplingStep, UnaryBackward, UnaryOp, Update,
};
use ddpm_tensor::{Device, Shape, Tensor, TensorError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{assert_close, assert_equal, host, on, randn, tolerance};

/// An elementwise op's tolerance: a few ulp of f32 (relative; see `assert_close`).
const ULPS: f32 = 1e-6;

/// `Tensor::to` both ways, `item`, `full_on`, `full_like`, `zeros_like` and
/// `synchronize`: the numbers arrive unchanged, and a tensor already there is shared.
pub fn moving_tensors_between_the_host_and_the_device(device: Device) {
    let x = randn(&[3, 5, 7], 1);
    let d = on(device, &x);
    assert_eq!((d.device(), d.dims()), (device, x.dims()));
    assert_equal("to and back", &host(&d), &x);
    assert_eq!(d.to(device).unwrap().device(), device, "to its own device");
    synchronize(device).unwrap();

    let s = on(device, &Tensor::scalar(2.5));
    assert_eq!(s.item().unwrap(), 2.5);
    assert!(d.item().is_err(), "item of a tensor of many elements");

    let full = Tensor::full_on([4, 70], -1.5, device).unwrap();
    assert_eq!((full.device(), full.dims()), (device, &[4usize, 70][..]));
    assert_equal("full_on", &host(&full), &Tensor::full([4, 70], -1.5));
    assert_equal("full_like", &host(&d.full_like(3.0).unwrap()), &Tensor::full([3, 5, 7], 3.0));
    assert_equal("zeros_like", &host(&d.zeros_like().unwrap()), &Tensor::zeros([3, 5, 7]));
}

/// Inputs for every unary op: positive where the op needs it (log, sqrt, powf),
/// with a NaN that clamp must keep and relu must drop (as f32::max does).
fn unary_input(op: UnaryOp) -> Tensor {
    let x = randn(&[3, 5, 7, 11], 2);
    match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Powf(_) => x.map(|v| v.abs() + 0.1).unwrap(),
        UnaryOp::Clamp { .. } | UnaryOp::Relu => {
            let mut v = x.to_vec();
            v[17] = f32::NAN;
            Tensor::from_vec(v, x.shape().clone()).unwrap()
        }
        _ => x.map(|v| 3.0 * v).unwrap(),
    }
}

pub fn every_unary_op(device: Device) {
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Square,
        UnaryOp::Powf(1.7),
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::Relu,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Affine { scale: -0.5, shift: 2.0 },
        UnaryOp::Scale(0.3),
        UnaryOp::Clamp { low: -1.0, high: 0.5 },
    ];
    for op in ops {
        let x = unary_input(op);
        let got = host(&on(device, &x).unary(op).unwrap());
        assert_close(&format!("{op:?}"), &got, &x.unary(op).unwrap(), 4.0 * ULPS);
    }
}

pub fn every_unary_backward(device: Device) {
    let ops = [
        UnaryBackward::Sqrt,
        UnaryBackward::Powf(1.7),
        UnaryBackward::Tanh,
        UnaryBackward::Sigmoid,
        UnaryBackward::Silu,
        UnaryBackward::Relu,
    ];
    let g = randn(&[3, 5, 7, 11], 3);
    for op in ops {
        // The saved tensor: y of sqrt, tanh and the sigmoid, x of the others.
        let saved = match op {
            UnaryBackward::Sqrt | UnaryBackward::Powf(_) => randn(&[3, 5, 7, 11], 4).map(|v| v.abs() + 0.1).unwrap(),
            UnaryBackward::Tanh => randn(&[3, 5, 7, 11], 4).tanh().unwrap(),
            UnaryBackward::Sigmoid => randn(&[3, 5, 7, 11], 4).sigmoid().unwrap(),
            _ => randn(&[3, 5, 7, 11], 4).map(|v| 3.0 * v).unwrap(),
        };
        let got = host(&on(device, &g).unary_backward(op, &on(device, &saved)).unwrap());
        assert_close(&format!("{op:?}"), &got, &g.unary_backward(op, &saved).unwrap(), 4.0 * ULPS);
    }
}

/// Shapes that broadcast together: for each axis, both full, the left one 1
/// or the right one 1, up to rank 4.
fn random_broadcast_pair(rng: &mut StdRng) -> (Vec<usize>, Vec<usize>) {
    let rank = rng.gen_range(0..=4);
    let (mut a, mut b) = (vec![], vec![]);
    for _ in 0..rank {
        let d = rng.gen_range(1..6);
        match rng.gen_range(0..3) {
            0 => (a.push(d), b.push(d)),
            1 => (a.push(1), b.push(d)),
            _ => (a.push(d), b.push(1)),
        };
    }
    // Sometimes the right one has a lower rank.
    if rng.gen_bool(0.3) && !b.is_empty() {
        b.remove(0);
    }
    (a, b)
}

pub fn broadcasts_of_the_unet_and_random_ones(device: Device) {
    let unet: [(&[usize], &[usize]); 8] = [
        (&[2, 3, 5, 7], &[2, 3, 5, 7]), // same shape
        (&[2, 3, 5, 7], &[1, 3, 1, 1]), // a per-channel bias
        (&[2, 3, 5, 7], &[3, 1, 1]),    // the same, of lower rank
        (&[2, 3, 5, 7], &[2, 3, 1, 1]), // a per-sample time embedding
        (&[2, 3, 5, 7], &[]),           // a scalar (the clipping factor)
        (&[1, 3, 1, 1], &[2, 3, 5, 7]), // broadcast on the left
        (&[4, 1, 3], &[5, 1]),          // both sides
        (&[2, 70, 3, 9], &[70, 1, 9]),  // more than one block of threads
    ];
    let mut rng = StdRng::seed_from_u64(5);
    let random: Vec<(Vec<usize>, Vec<usize>)> = (0..12).map(|_| random_broadcast_pair(&mut rng)).collect();
    let pairs = unet.iter().map(|&(a, b)| (a.to_vec(), b.to_vec())).chain(random);
    for (i, (a, b)) in pairs.enumerate() {
        let x = randn(&a, 10 + i as u64);
        // Away from 0, for the division.
        let y = randn(&b, 40 + i as u64).map(|v| v.signum() * (v.abs() + 0.5)).unwrap();
        let (xd, yd) = (on(device, &x), on(device, &y));
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum] {
            let got = host(&xd.binary(&yd, op).unwrap());
            assert_equal(&format!("{op:?} of {a:?} and {b:?}"), &got, &x.binary(&y, op).unwrap());
        }
    }
}

pub fn sums_over_every_axis_subset_of_a_rank_4_tensor(device: Device) {
    let dims = [3, 4, 5, 7];
    let x = randn(&dims, 6);
    let xd = on(device, &x);
    for mask in 0..16usize {
        let axes: Vec<usize> = (0..4).filter(|a| mask & (1 << a) != 0).collect();
        let terms: usize = axes.iter().map(|&a| dims[a]).product();
        for keepdim in [true, false] {
            let got = host(&xd.sum_axes(&axes, keepdim).unwrap());
            assert_close(&format!("sum over {axes:?}"), &got, &x.sum_axes(&axes, keepdim).unwrap(), tolerance(terms));
        }
        let got = host(&xd.mean_axes(&axes, true).unwrap());
        assert_close(&format!("mean over {axes:?}"), &got, &x.mean_axes(&axes, true).unwrap(), tolerance(terms));
    }
    assert_close("sum_all", &host(&xd.sum_all().unwrap()), &x.sum_all().unwrap(), tolerance(x.numel()));
    // More terms than threads, and a bias gradient's sum_to.
    let big = randn(&[2, 3, 600], 7);
    let target = Shape::new([3, 1]);
    let got = host(&on(device, &big).sum_to(&target).unwrap());
    assert_close("sum_to [3, 1]", &got, &big.sum_to(&target).unwrap(), tolerance(1200));
}

pub fn permute_concat_narrow_and_their_inverses(device: Device) {
    let x = randn(&[2, 3, 4, 5], 8);
    let xd = on(device, &x);
    for perm in [[0, 1, 2, 3], [0, 2, 3, 1], [3, 2, 1, 0], [1, 0, 3, 2], [0, 1, 3, 2]] {
        assert_equal(&format!("permute {perm:?}"), &host(&xd.permute(&perm).unwrap()), &x.permute(&perm).unwrap());
    }
    assert_equal("transpose", &host(&xd.transpose(1, 3).unwrap()), &x.transpose(1, 3).unwrap());
    // [N, C, HW] -> [N, HW, C], attention's.
    let a = randn(&[3, 7, 49], 9);
    assert_equal(
        "permute [0, 2, 1]",
        &host(&on(device, &a).permute(&[0, 2, 1]).unwrap()),
        &a.permute(&[0, 2, 1]).unwrap(),
    );

    for axis in 0..4 {
        let mut dims = x.dims().to_vec();
        dims[axis] += 2;
        let y = randn(&dims, 10 + axis as u64);
        let cat = Tensor::concat(&[&xd, &on(device, &y), &xd], axis).unwrap();
        assert_equal(&format!("concat on axis {axis}"), &host(&cat), &Tensor::concat(&[&x, &y, &x], axis).unwrap());
        let extent = x.dims()[axis];
        let (start, len) = (1, extent - 2);
        let slice = xd.narrow(axis, start, len).unwrap();
        assert_equal(&format!("narrow on axis {axis}"), &host(&slice), &x.narrow(axis, start, len).unwrap());
        let back = slice.narrow_backward(axis, start, extent).unwrap();
        let want = x.narrow(axis, start, len).unwrap().narrow_backward(axis, start, extent).unwrap();
        assert_equal(&format!("narrow_backward on axis {axis}"), &host(&back), &want);
        let parts = xd.split(axis, &[1, extent - 1]).unwrap();
        let want = x.split(axis, &[1, extent - 1]).unwrap();
        for (p, w) in parts.iter().zip(&want) {
            assert_equal(&format!("split on axis {axis}"), &host(p), w);
        }
    }
}

pub fn matmul_with_every_transpose_and_a_shared_weight(device: Device) {
    // M = 70 and N = 65 take two tiles each way, K = 20 two slices, one of them ragged.
    let (b, m, k, n) = (3, 70, 20, 65);
    let check = |what: &str, a: Tensor, w: Tensor, f: fn(&Tensor, &Tensor) -> ddpm_tensor::Result<Tensor>| {
        let got = host(&f(&on(device, &a), &on(device, &w)).unwrap());
        assert_close(what, &got, &f(&a, &w).unwrap(), tolerance(k));
    };
    check("A B", randn(&[m, k], 20), randn(&[k, n], 21), Tensor::matmul);
    check("A B^T", randn(&[m, k], 22), randn(&[n, k], 23), Tensor::matmul_nt);
    check("A^T B", randn(&[k, m], 24), randn(&[k, n], 25), Tensor::matmul_tn);
    check("batched A B", randn(&[b, m, k], 26), randn(&[b, k, n], 27), Tensor::matmul);
    check("batched A B^T", randn(&[b, m, k], 28), randn(&[b, n, k], 29), Tensor::matmul_nt);
    check("batched A^T B", randn(&[b, k, m], 30), randn(&[b, k, n], 31), Tensor::matmul_tn);
    check("batched A with a shared B", randn(&[b, m, k], 32), randn(&[k, n], 33), Tensor::matmul);
    check("batched A with a shared B^T", randn(&[b, m, k], 34), randn(&[n, k], 35), Tensor::matmul_nt);
}

/// A convolution: x [n, c, h, w], weight [k, c, r, r].
#[derive(Debug, Clone, Copy)]
struct Conv {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    r: usize,
    stride: usize,
    padding: usize,
}

/// Kernels 1, 3 and 5, strides 1 and 2, extents that are not multiples of
/// the tiles, more than one tile of output channels (k = 70) and of columns.
const CONVS: [Conv; 5] = [
    Conv { n: 2, c: 3, h: 7, w: 5, k: 5, r: 3, stride: 1, padding: 1 },
    Conv { n: 2, c: 4, h: 8, w: 9, k: 6, r: 3, stride: 2, padding: 1 },
    Conv { n: 1, c: 70, h: 3, w: 3, k: 65, r: 1, stride: 1, padding: 0 },
    Conv { n: 2, c: 5, h: 9, w: 8, k: 70, r: 3, stride: 1, padding: 1 },
    Conv { n: 2, c: 3, h: 9, w: 10, k: 4, r: 5, stride: 2, padding: 2 },
];

pub fn conv2d_with_bias_shift_and_residual(device: Device) {
    for (i, &conv) in CONVS.iter().enumerate() {
        let Conv { n, c, h, w, k, r, stride, padding } = conv;
        let p = Conv2dParams { stride, padding };
        let seed = 100 + 10 * i as u64;
        let (x, weight) = (randn(&[n, c, h, w], seed), randn(&[k, c, r, r], seed + 1));
        let y_shape = x.conv2d(&weight, None, p).unwrap().dims().to_vec();
        let (bias, shift, residual) = (randn(&[k], seed + 2), randn(&[n, k], seed + 3), randn(&y_shape, seed + 4));
        let (xd, wd) = (on(device, &x), on(device, &weight));
        let (bd, sd, rd) = (on(device, &bias), on(device, &shift), on(device, &residual));
        let terms = c * r * r;
        let cases = [
            ("no addends", None, None, None),
            ("a bias", Some((&bias, &bd)), None, None),
            ("a shift", None, Some((&shift, &sd)), None),
            ("bias, shift and residual", Some((&bias, &bd)), Some((&shift, &sd)), Some((&residual, &rd))),
        ];
        for (what, b, s, res) in cases {
            let got = xd.conv2d_add(&wd, b.map(|t| t.1), s.map(|t| t.1), res.map(|t| t.1), p).unwrap();
            let want = x.conv2d_add(&weight, b.map(|t| t.0), s.map(|t| t.0), res.map(|t| t.0), p).unwrap();
            assert_close(&format!("conv2d {conv:?} with {what}"), &host(&got), &want, tolerance(terms));
        }
    }
}

pub fn conv2d_gradients(device: Device) {
    for (i, &conv) in CONVS.iter().enumerate() {
        let Conv { n, c, h, w, k, r, stride, padding } = conv;
        let p = Conv2dParams { stride, padding };
        let seed = 200 + 10 * i as u64;
        let (x, weight) = (randn(&[n, c, h, w], seed), randn(&[k, c, r, r], seed + 1));
        let d_y = randn(x.conv2d(&weight, None, p).unwrap().dims(), seed + 2);
        let (xd, wd, dyd) = (on(device, &x), on(device, &weight), on(device, &d_y));
        let what = format!("{conv:?}");
        let got = host(&conv2d_backward_input(&dyd, &wd, x.shape(), p).unwrap());
        let want = conv2d_backward_input(&d_y, &weight, x.shape(), p).unwrap();
        assert_close(&format!("input gradient {what}"), &got, &want, tolerance(k * r * r));
        let got = host(&conv2d_backward_weight(&xd, &dyd, weight.shape(), p).unwrap());
        let want = conv2d_backward_weight(&x, &d_y, weight.shape(), p).unwrap();
        let positions = d_y.numel() / (n * k);
        assert_close(&format!("weight gradient {what}"), &got, &want, tolerance(n * positions));
        let got = host(&conv2d_backward_bias(&dyd).unwrap());
        assert_close(
            &format!("bias gradient {what}"),
            &got,
            &conv2d_backward_bias(&d_y).unwrap(),
            tolerance(n * positions),
        );
        let got = host(&conv2d_backward_shift(&dyd).unwrap());
        assert_close(
            &format!("shift gradient {what}"),
            &got,
            &conv2d_backward_shift(&d_y).unwrap(),
            tolerance(positions),
        );
    }
}

pub fn group_norm_with_and_without_silu(device: Device) {
    // Groups of 2 channels of 7 x 9 = 63 positions (not a multiple of the
    // block), and groups of 8 channels of 40 (more elements than threads).
    for (dims, groups) in [([2, 8, 7, 9], 4), ([3, 16, 5, 8], 2)] {
        let c = dims[1];
        let x = randn(&dims, 300).map(|v| 2.0 * v + 0.5).unwrap();
        let (gamma, beta, d_y) = (randn(&[c], 301), randn(&[c], 302), randn(&dims, 303));
        let [xd, gd, bd, dyd] = [&x, &gamma, &beta, &d_y].map(|t| on(device, t));
        let per_group = c / groups * dims[2] * dims[3];
        for silu in [false, true] {
            let what = format!("{dims:?} in {groups} groups, silu {silu}");
            let ((y, stats), (yd, stats_d)) = if silu {
                (
                    x.group_norm_silu(groups, &gamma, &beta, 1e-5).unwrap(),
                    xd.group_norm_silu(groups, &gd, &bd, 1e-5).unwrap(),
                )
            } else {
                (x.group_norm(groups, &gamma, &beta, 1e-5).unwrap(), xd.group_norm(groups, &gd, &bd, 1e-5).unwrap())
            };
            assert_close(&format!("forward {what}"), &host(&yd), &y, tolerance(1));
            assert_close(&format!("mean {what}"), &host(&stats_d.mean), &stats.mean, tolerance(1));
            assert_close(&format!("rstd {what}"), &host(&stats_d.rstd), &stats.rstd, tolerance(1));
            let (want, got) = if silu {
                (
                    group_norm_silu_backward(&x, &stats, &gamma, &beta, groups, &d_y).unwrap(),
                    group_norm_silu_backward(&xd, &stats_d, &gd, &bd, groups, &dyd).unwrap(),
                )
            } else {
                (
                    group_norm_backward(&x, &stats, &gamma, groups, &d_y).unwrap(),
                    group_norm_backward(&xd, &stats_d, &gd, groups, &dyd).unwrap(),
                )
            };
            let over_channel = dims[0] * dims[2] * dims[3];
            assert_close(&format!("input gradient {what}"), &host(&got.0), &want.0, tolerance(per_group));
            assert_close(&format!("gamma gradient {what}"), &host(&got.1), &want.1, tolerance(over_channel));
            assert_close(&format!("beta gradient {what}"), &host(&got.2), &want.2, tolerance(over_channel));
        }
    }
}

pub fn softmax_and_log_softmax(device: Device) {
    // Rows longer than the block (300) and shorter (49), with large logits.
    for cols in [300, 49] {
        let x = randn(&[6, cols], 400).map(|v| 20.0 * v).unwrap();
        let g = randn(&[6, cols], 401);
        let (xd, gd) = (on(device, &x), on(device, &g));
        let (y, yd) = (x.softmax().unwrap(), xd.softmax().unwrap());
        assert_close(&format!("softmax, rows of {cols}"), &host(&yd), &y, tolerance(cols));
        let got = host(&Tensor::softmax_backward(&yd, &gd).unwrap());
        assert_close(
            &format!("softmax backward, rows of {cols}"),
            &got,
            &Tensor::softmax_backward(&y, &g).unwrap(),
            tolerance(cols),
        );
        let (l, ld) = (x.log_softmax().unwrap(), xd.log_softmax().unwrap());
        // log-softmax of logits of size 20 sqrt(cols): the resolution of f32 there.
        assert_close(&format!("log_softmax, rows of {cols}"), &host(&ld), &l, tolerance(cols));
        let got = host(&Tensor::log_softmax_backward(&ld, &gd).unwrap());
        let want = Tensor::log_softmax_backward(&l, &g).unwrap();
        assert_close(&format!("log_softmax backward, rows of {cols}"), &got, &want, tolerance(cols));
    }
}

pub fn upsample_and_max_pool(device: Device) {
    let x = randn(&[2, 3, 5, 7], 500);
    let xd = on(device, &x);
    assert_equal("upsample", &host(&xd.upsample_nearest2x().unwrap()), &x.upsample_nearest2x().unwrap());
    let g = randn(&[2, 3, 10, 14], 501);
    let got = host(&on(device, &g).upsample_nearest2x_backward().unwrap());
    assert_close("upsample backward", &got, &g.upsample_nearest2x_backward().unwrap(), tolerance(4));

    // Values rounded to halves, so that windows have ties: the first maximum
    // in row-major order takes the gradient on both devices.
    let x = randn(&[2, 3, 6, 10], 502).map(|v| (2.0 * v).round() / 2.0).unwrap();
    let (xd, g) = (on(device, &x), randn(&[2, 3, 3, 5], 503));
    assert_equal("max_pool2x2", &host(&xd.max_pool2x2().unwrap()), &x.max_pool2x2().unwrap());
    let got = host(&Tensor::max_pool2x2_backward(&xd, &on(device, &g)).unwrap());
    assert_equal("max_pool2x2 backward", &got, &Tensor::max_pool2x2_backward(&x, &g).unwrap());
}

pub fn embedding_rows_and_their_scatter_add(device: Device) {
    let table = randn(&[11, 37], 600);
    // Row 3 is used twice: its gradient collects both rows of d_out.
    let indices = [3, 0, 10, 3, 7];
    let got = host(&on(device, &table).index_select_rows(&indices).unwrap());
    assert_equal("index_select_rows", &got, &table.index_select_rows(&indices).unwrap());
    let d_out = randn(&[5, 37], 601);
    let got = host(&on(device, &d_out).index_add_rows(&indices, 11).unwrap());
    assert_equal("index_add_rows", &got, &d_out.index_add_rows(&indices, 11).unwrap());
}

pub fn dropout_draws_the_cpu_mask(device: Device) {
    // More than one block of 64 uniforms, and a ragged end.
    let x = randn(&[5003], 700);
    let got = host(&on(device, &x).dropout(12345, 0.1).unwrap());
    assert_equal("dropout", &got, &x.dropout(12345, 0.1).unwrap());
}

pub fn randn_philox_gives_the_cpu_numbers(device: Device) {
    let (seed, offset) = (0x1234_5678_9abc_def0u64, (1u64 << 33) + 5);
    let got = host(&Tensor::randn_philox_on([3, 337], seed, offset, device).unwrap());
    let want = Tensor::randn_philox([3, 337], seed, offset);
    match device {
        // The emulation's logf, cosf and sqrtf are the host's libm, so the numbers are the same bits.
        Device::Emulated => assert_equal("randn_philox", &got, &want),
        // A GPU's logf and cosf are within 2 ulp of libm's, not equal to them.
        _ => assert_close("randn_philox", &got, &want, 8.0 * ULPS),
    }
}

pub fn sampling_steps(device: Device) {
    let x = randn(&[3, 97], 800);
    let (eps, eps2) = (randn(&[3, 97], 801), randn(&[6, 97], 802));
    let (xd, ed, e2d) = (on(device, &x), on(device, &eps), on(device, &eps2));
    let updates = [
        Update::Ddpm { eps_coef: 0.3, a: 0.99, sigma: 0.1 },
        Update::Ddpm { eps_coef: 0.02, a: 0.999, sigma: 0.0 }, // DDPM's last step: no noise
        Update::Ddim { alphabar: 0.5, alphabar_prev: 0.7, sigma: 0.05, dir: 0.4 },
        Update::Ddim { alphabar: 0.9, alphabar_prev: 0.95, sigma: 0.0, dir: 0.2 }, // eta 0: no noise
    ];
    for update in updates {
        for guidance in [None, Some(1.5)] {
            let step = SamplingStep { update, guidance, seed: 42, offset: 7 };
            // Guided, the estimate holds the conditional half and then the unconditional one.
            let (e, e_dev) = if guidance.is_some() { (&eps2, &e2d) } else { (&eps, &ed) };
            let got = host(&xd.sampling_step(e_dev, &step).unwrap());
            let want = x.sampling_step(e, &step).unwrap();
            assert_close(&format!("{update:?}, guidance {guidance:?}"), &got, &want, tolerance(1));
        }
    }
}

pub fn adam_and_lerp(device: Device) {
    let dims = [7, 301];
    let s = AdamStep { step_size: 1e-3, beta1: 0.9, beta2: 0.999, bias_correction2_sqrt: 0.05, eps: 1e-8 };
    let (mut p, g) = (randn(&dims, 900), randn(&dims, 901).map(|v| 3.0 * v).unwrap());
    let (mut m, mut v) =
        (randn(&dims, 902).map(|v| 0.1 * v).unwrap(), randn(&dims, 903).map(|v| 0.01 * v * v).unwrap());
    let (mut pd, gd, mut md, mut vd) = (on(device, &p), on(device, &g), on(device, &m), on(device, &v));
    for step in 0..3 {
        p = p.adam_update(&g, &mut m, &mut v, &s).unwrap();
        pd = pd.adam_update(&gd, &mut md, &mut vd, &s).unwrap();
        assert_close(&format!("Adam's m after step {step}"), &host(&md), &m, tolerance(1));
        assert_close(&format!("Adam's v after step {step}"), &host(&vd), &v, tolerance(1));
        assert_close(&format!("the weights after step {step}"), &host(&pd), &p, tolerance(1));
    }
    let (mut shadow, end) = (randn(&dims, 904), randn(&dims, 905));
    let mut shadow_d = on(device, &shadow);
    shadow.lerp_assign(&end, 0.01).unwrap();
    shadow_d.lerp_assign(&on(device, &end), 0.01).unwrap();
    assert_close("lerp_assign", &host(&shadow_d), &shadow, tolerance(1));
}

pub fn global_norm_and_scale_by(device: Device) {
    // One tensor of several blocks of partial sums and a ragged end, small ones, an empty one.
    let ts = [randn(&[10_007], 1000), randn(&[3, 5], 1001), Tensor::zeros([0, 4]), randn(&[300], 1002)];
    let ds: Vec<Tensor> = ts.iter().map(|t| on(device, t)).collect();
    let norm = Tensor::global_norm(&ds.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!((norm.device(), norm.rank()), (device, 0));
    let want = Tensor::global_norm(&ts.iter().collect::<Vec<_>>()).unwrap();
    assert_close("global_norm", &host(&norm), &want, 4.0 * ULPS);
    let single = Tensor::global_norm(&[&ds[1]]).unwrap();
    assert_close("global_norm of one", &host(&single), &Tensor::global_norm(&[&ts[1]]).unwrap(), 4.0 * ULPS);

    // Clipping's scale_by: the factor stays on the device.
    let factor = randn(&[], 1003);
    let mut x = ts[3].clone();
    let mut xd = ds[3].clone();
    x.scale_by(&factor).unwrap();
    xd.scale_by(&on(device, &factor)).unwrap();
    assert_equal("scale_by", &host(&xd), &x);
    assert_equal("scale_by leaves the tensor it shared a buffer with", &host(&ds[3]), &ts[3]);
}

pub fn writes_to_a_shared_device_buffer_copy_it_first(device: Device) {
    let (x, end) = (randn(&[5, 67], 1100), randn(&[5, 67], 1101));
    let a = on(device, &x);
    let mut b = a.clone();
    b.lerp_assign(&on(device, &end), 0.5).unwrap();
    assert_equal("the tensor that shared the buffer", &host(&a), &x);
    let mut want = x.clone();
    want.lerp_assign(&end, 0.5).unwrap();
    assert_close("the tensor written to", &host(&b), &want, tolerance(1));

    // Adam's m and v are written in place: a copy that shares them keeps the old moments.
    let s = AdamStep { step_size: 1e-3, beta1: 0.9, beta2: 0.999, bias_correction2_sqrt: 0.05, eps: 1e-8 };
    let (mut m, mut v) = (on(device, &Tensor::zeros([5, 67])), on(device, &Tensor::zeros([5, 67])));
    let (m_before, v_before) = (m.clone(), v.clone());
    a.adam_update(&on(device, &end), &mut m, &mut v, &s).unwrap();
    assert_equal("m before the step", &host(&m_before), &Tensor::zeros([5, 67]));
    assert_equal("v before the step", &host(&v_before), &Tensor::zeros([5, 67]));
    assert!(host(&m).as_slice().iter().any(|&v| v != 0.0), "m after the step");
}

pub fn empty_tensors(device: Device) {
    let e = on(device, &Tensor::zeros([0, 5]));
    assert_eq!((e.device(), host(&e).numel()), (device, 0));
    assert_eq!(host(&e.exp().unwrap()).dims(), &[0, 5]);
    assert_eq!(host(&e.add(&on(device, &randn(&[5], 1))).unwrap()).dims(), &[0, 5]);
    // A sum over an empty axis is zeros; a product with an empty reduction too.
    assert_equal("sum over an empty axis", &host(&e.sum_axes(&[0], false).unwrap()), &Tensor::zeros([5]));
    let (a, b) = (on(device, &Tensor::zeros([3, 0])), on(device, &Tensor::zeros([0, 4])));
    assert_equal("a product over nothing", &host(&a.matmul(&b).unwrap()), &Tensor::zeros([3, 4]));
    let none = on(device, &randn(&[11, 37], 2)).index_select_rows(&[]).unwrap();
    assert_eq!(none.dims(), &[0, 37]);
    let norm = Tensor::global_norm(&[&e]).unwrap();
    assert_eq!(norm.item().unwrap(), 0.0);
}

pub fn mixed_devices_and_closures_are_errors(device: Device) {
    let (x, xd) = (randn(&[2, 3], 1200), on(device, &randn(&[2, 3], 1201)));
    let e = x.add(&xd).unwrap_err();
    assert_eq!(e, TensorError::DeviceMismatch { op: "add", lhs: Device::Cpu, rhs: device });
    let msg = e.to_string();
    assert!(msg.contains("add") && msg.contains("cpu") && msg.contains(&device.to_string()), "{msg}");
    let e = xd.matmul_nt(&x).unwrap_err();
    assert_eq!(e, TensorError::DeviceMismatch { op: "matmul_nt", lhs: device, rhs: Device::Cpu });
    assert_eq!(xd.map(|v| v + 1.0).unwrap_err(), TensorError::NoDeviceKernel { op: "map", device });
    assert_eq!(xd.zip_map(&xd, |a, b| a + b).unwrap_err(), TensorError::NoDeviceKernel { op: "zip_map", device });
}

/// ndarray arrays hold host memory: an array goes in and a result comes out
/// through the host, and viewing or copying a device tensor as an array is an
/// error naming the device (never a silent download), as are the references'.
pub fn ndarray_interop_is_host_only(device: Device) {
    let x = randn(&[2, 3, 4], 1400);
    let xd = on(device, &Tensor::from_ndarray(x.to_ndarray().unwrap()));
    let y = host(&xd.softmax().unwrap()).to_ndarray().unwrap();
    let (y, want) = (Tensor::from_ndarray(y), x.softmax().unwrap());
    assert_close("an array in, softmax on the device, an array out", &y, &want, tolerance(4));
    for e in [xd.view_ndarray().unwrap_err(), xd.to_ndarray().unwrap_err(), softmax_reference(&xd).unwrap_err()] {
        let msg = e.to_string();
        assert!(msg.contains(&device.to_string()) && msg.contains(".to(Device::Cpu)"), "{msg}");
    }
    let e = xd.to_ndarray().unwrap_err();
    assert!(matches!(e, TensorError::Invalid { op: "to_ndarray", .. }), "{e}");
}

pub fn layouts_the_kernels_cannot_take_are_errors(device: Device) {
    // Five axes that no two neighbours merge: the broadcasting kernel walks four.
    let (a, b) = (on(device, &randn(&[2, 1, 2, 1, 2], 1300)), on(device, &randn(&[1, 2, 1, 2, 1], 1301)));
    match a.add(&b).unwrap_err() {
        TensorError::Device { op: "add", device: d, msg } => assert!(d == device && msg.contains("4"), "{msg}"),
        other => panic!("a walk of five axes: {other}"),
    }
    // Five kept runs alternating with four reduced ones: the sum takes four of each.
    let x = on(device, &randn(&[2, 2, 2, 2, 2, 2, 2, 2, 2], 1302));
    match x.sum_axes(&[1, 3, 5, 7], false).unwrap_err() {
        TensorError::Device { op: "sum_axes", device: d, msg } => assert!(d == device && msg.contains("kept"), "{msg}"),
        other => panic!("a sum over five kept runs: {other}"),
    }
    // A permutation of five axes that do not merge.
    match x.reshape([4, 2, 4, 4, 4]).unwrap().permute(&[4, 3, 2, 1, 0]).unwrap_err() {
        TensorError::Device { op: "permute", .. } => {}
        other => panic!("a permutation of five axes: {other}"),
    }
}
