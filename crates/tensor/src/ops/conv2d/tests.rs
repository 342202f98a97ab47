//! Every CPU path against the references of `reference.rs`, and the properties
//! that need no reference (hand-computed values, adjoints, the fused adds, a
//! NaN's reach, error messages).

use super::*;
use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};

fn params(stride: usize, padding: usize) -> Conv2dParams {
    Conv2dParams { stride, padding }
}

/// f32 sums of `terms` products of N(0, 1) numbers: the error grows like sqrt(terms).
fn close(what: &str, fast: &Tensor, reference: &Tensor, terms: usize) {
    let tol = 1e-5 * (terms.max(1) as f32).sqrt() * 4.0;
    let err = fast.max_abs_diff(reference).unwrap();
    assert!(err < tol, "{what}: error {err} > {tol}");
}

/// One convolution to test: x [n, c, h, w], weight [k, c, r, s].
#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    c: usize,
    k: usize,
    h: usize,
    w: usize,
    r: usize,
    s: usize,
    stride: usize,
    pad: usize,
    bias: bool,
}

/// Runs the four fast kernels and their references on random data and compares them.
fn check_against_reference(case: Case, seed: u64) {
    let Case { n, c, k, h, w, r, s, stride, pad, bias } = case;
    let p = params(stride, pad);
    let mut rng = StdRng::seed_from_u64(seed);
    let x = Tensor::randn([n, c, h, w], &mut rng);
    let weight = Tensor::randn([k, c, r, s], &mut rng);
    let b = bias.then(|| Tensor::randn([k], &mut rng));
    let y = x.conv2d(&weight, b.as_ref(), p).unwrap();
    close(&format!("forward {case:?}"), &y, &conv2d_reference(&x, &weight, b.as_ref(), p).unwrap(), c * r * s);

    let d_out = Tensor::randn(y.shape().clone(), &mut rng);
    let d_x = conv2d_backward_input(&d_out, &weight, x.shape(), p).unwrap();
    let d_x_ref = conv2d_backward_input_reference(&d_out, &weight, x.shape(), p).unwrap();
    close(&format!("backward input {case:?}"), &d_x, &d_x_ref, k * r * s);

    let d_w = conv2d_backward_weight(&x, &d_out, weight.shape(), p).unwrap();
    let d_w_ref = conv2d_backward_weight_reference(&x, &d_out, weight.shape(), p).unwrap();
    let [_, _, ho, wo] = *y.dims() else { unreachable!() };
    close(&format!("backward weight {case:?}"), &d_w, &d_w_ref, n * ho * wo);

    // d_bias[k] = sum over n, oy, ox of d_out[n, k, oy, ox], summed here in f64.
    let mut d_b_ref = vec![0.0f64; k];
    for (i, &v) in d_out.as_slice().iter().enumerate() {
        d_b_ref[(i / (ho * wo)) % k] += v as f64;
    }
    let d_b_ref = Tensor::from_vec(d_b_ref.into_iter().map(|v| v as f32).collect(), [k]).unwrap();
    close(&format!("backward bias {case:?}"), &conv2d_backward_bias(&d_out).unwrap(), &d_b_ref, n * ho * wo);
}

/// check_against_reference on each case, with seeds first_seed, first_seed + 1, ...
fn check_cases(cases: &[Case], first_seed: u64) {
    for (seed, &case) in (first_seed..).zip(cases) {
        check_against_reference(case, seed);
    }
}

#[test]
fn fast_kernels_match_the_reference_on_many_shapes() {
    let mut cases = Vec::new();
    for (r, s) in [(1, 1), (3, 3), (2, 3)] {
        for stride in [1, 2] {
            for pad in [0, 1] {
                for (h, w) in [(7, 7), (5, 6)] {
                    for (n, c, k) in [(1, 1, 1), (3, 2, 5), (3, 4, 3)] {
                        let bias = (n + r + stride + pad) % 2 == 0;
                        cases.push(Case { n, c, k, h, w, r, s, stride, pad, bias });
                    }
                }
            }
        }
    }
    check_cases(&cases, 0);
}

#[test]
fn fast_kernels_match_the_reference_at_unet_shapes() {
    // Large enough to take the parallel paths: split over the batch, and (N = 1)
    // one GEMM split across threads.
    let cases = [
        Case { n: 4, c: 16, k: 16, h: 28, w: 28, r: 3, s: 3, stride: 1, pad: 1, bias: true },
        Case { n: 5, c: 16, k: 32, h: 14, w: 14, r: 3, s: 3, stride: 2, pad: 1, bias: false },
        Case { n: 3, c: 32, k: 16, h: 7, w: 7, r: 1, s: 1, stride: 1, pad: 0, bias: true },
        Case { n: 1, c: 32, k: 32, h: 28, w: 28, r: 3, s: 3, stride: 1, pad: 1, bias: true },
        Case { n: 1, c: 64, k: 64, h: 28, w: 28, r: 1, s: 1, stride: 1, pad: 0, bias: false },
        // 7x7: several samples share one GEMM, and 13 samples leave a short last group.
        Case { n: 13, c: 16, k: 16, h: 7, w: 7, r: 3, s: 3, stride: 1, pad: 1, bias: true },
        Case { n: 13, c: 32, k: 96, h: 7, w: 7, r: 1, s: 1, stride: 1, pad: 0, bias: true },
    ];
    check_cases(&cases, 100);
}

/// Shapes for the direct kernels: a sample per row (28x28), samples side by
/// side (14x14, 7x7) with a short last group, output channels in whole and
/// partial tiles of 8 (K = 12, and K = 1 as in the output convolution),
/// input channels in 1 to 5 vectors of 16 (whole and partial tiles of 3
/// vectors), 1x1 convolutions (forward only; their weight gradient is a
/// GEMM), and input channels the weight gradient can't take (C = 24).
const DIRECT_CASES: [Case; 9] = [
    Case { n: 2, c: 16, k: 8, h: 28, w: 28, r: 3, s: 3, stride: 1, pad: 1, bias: true },
    Case { n: 7, c: 32, k: 24, h: 14, w: 14, r: 3, s: 3, stride: 1, pad: 1, bias: false },
    Case { n: 19, c: 48, k: 16, h: 7, w: 7, r: 3, s: 3, stride: 1, pad: 1, bias: true },
    Case { n: 3, c: 80, k: 8, h: 5, w: 6, r: 3, s: 3, stride: 1, pad: 1, bias: true },
    Case { n: 3, c: 16, k: 12, h: 7, w: 7, r: 3, s: 3, stride: 1, pad: 1, bias: true },
    Case { n: 3, c: 24, k: 16, h: 7, w: 7, r: 3, s: 3, stride: 1, pad: 1, bias: false },
    Case { n: 2, c: 32, k: 1, h: 28, w: 28, r: 3, s: 3, stride: 1, pad: 1, bias: true },
    Case { n: 5, c: 32, k: 96, h: 7, w: 7, r: 1, s: 1, stride: 1, pad: 0, bias: true },
    Case { n: 2, c: 48, k: 20, h: 14, w: 14, r: 1, s: 1, stride: 1, pad: 0, bias: false },
];

#[test]
fn the_direct_kernels_match_the_reference() {
    check_cases(&DIRECT_CASES, 300);
}

/// The comparisons above test the direct kernels only where this CPU picks
/// them: on x86-64 with AVX-512 it must, for the shapes they can take.
#[test]
fn the_direct_kernels_are_used_where_they_apply() {
    let avx512 = cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx512f");
    let forced_off = std::env::var_os("DDPM_CONV").is_some_and(|v| v == "gemm");
    for case in DIRECT_CASES {
        let input = Shape::new([case.n, case.c, case.h, case.w]);
        let weight = Shape::new([case.k, case.c, case.r, case.s]);
        let g = Geometry::new("test", &input, &weight, params(case.stride, case.pad)).unwrap();
        let direct = direct::Direct::new(&g).is_some();
        assert_eq!(direct, avx512 && !forced_off, "{case:?}");
        assert_eq!(
            direct && direct::Direct::has_weight_grad(&g),
            direct && case.c % 16 == 0 && case.r == 3,
            "{case:?}"
        );
    }
    let other = |r: usize, stride: usize, pad: usize| {
        let g = Geometry::new("test", &Shape::new([2, 16, 8, 8]), &Shape::new([16, 16, r, r]), params(stride, pad));
        direct::Direct::new(&g.unwrap()).is_none()
    };
    assert!(other(3, 2, 1) && other(3, 1, 0) && other(1, 1, 1) && other(5, 1, 2));
}

#[test]
fn kernels_that_overhang_a_tiny_image() {
    // Most taps land in the padding, and whole rows of cols are zero; proptest
    // once found an index overflow at the first of these.
    let cases = [
        Case { n: 1, c: 1, k: 1, h: 1, w: 1, r: 1, s: 3, stride: 1, pad: 1, bias: false },
        Case { n: 1, c: 1, k: 1, h: 1, w: 1, r: 1, s: 1, stride: 1, pad: 2, bias: false },
        Case { n: 2, c: 2, k: 3, h: 2, w: 1, r: 3, s: 3, stride: 1, pad: 1, bias: true },
        Case { n: 2, c: 1, k: 2, h: 1, w: 2, r: 3, s: 3, stride: 2, pad: 2, bias: false },
    ];
    check_cases(&cases, 200);
}

#[test]
fn the_fused_adds_are_the_adds() {
    // conv2d_add(x, w, b, shift, residual) = conv2d(x, w, b) + shift[n, k] + residual,
    // on every path: direct with one sample a row (28x28) and side by side
    // (7x7), 1x1, and im2col + GEMM (stride 2, and a 5x5 kernel).
    let cases = [
        (3, 8, 12, 28, 3, 1, 1),
        (20, 16, 8, 7, 3, 1, 1),
        (5, 16, 24, 7, 1, 1, 0),
        (4, 6, 10, 9, 3, 2, 1),
        (3, 4, 5, 6, 5, 1, 2),
    ];
    let mut rng = StdRng::seed_from_u64(41);
    for (n, c, k, hw, r, stride, pad) in cases {
        let p = params(stride, pad);
        let x = Tensor::randn([n, c, hw, hw], &mut rng);
        let w = Tensor::randn([k, c, r, r], &mut rng);
        let b = Tensor::randn([k], &mut rng);
        let plain = x.conv2d(&w, Some(&b), p).unwrap();
        let shift = Tensor::randn([n, k], &mut rng);
        let residual = Tensor::randn(plain.shape().clone(), &mut rng);
        let positions = plain.numel() / (n * k);
        let expected: Vec<f32> = (0..plain.numel())
            .map(|i| plain.as_slice()[i] + shift.as_slice()[i / positions] + residual.as_slice()[i])
            .collect();
        let expected = Tensor::from_vec(expected, plain.shape().clone()).unwrap();
        for (s, res) in [(Some(&shift), Some(&residual)), (Some(&shift), None), (None, Some(&residual))] {
            let fused = x.conv2d_add(&w, Some(&b), s, res, p).unwrap();
            let want = match (s, res) {
                (Some(_), Some(_)) => expected.clone(),
                (Some(_), None) => expected.sub(&residual).unwrap(),
                _ => plain.add(&residual).unwrap(),
            };
            let scale = 1.0 + want.as_slice().iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = fused.max_abs_diff(&want).unwrap();
            assert!(err <= 1e-5 * scale, "n {n} c {c} k {k} {hw}x{hw} r {r} stride {stride}: {err}");
        }
        // Without a bias, the shift alone is the per-sample bias.
        let no_bias = x.conv2d_add(&w, None, Some(&shift), None, p).unwrap();
        let want = x.conv2d(&w, None, p).unwrap();
        let want: Vec<f32> =
            want.as_slice().iter().enumerate().map(|(i, v)| v + shift.as_slice()[i / positions]).collect();
        assert!(no_bias.max_abs_diff(&Tensor::from_vec(want, plain.shape().clone()).unwrap()).unwrap() < 1e-4);
        // Misshaped addends are refused.
        assert!(x.conv2d_add(&w, Some(&b), Some(&Tensor::zeros([n, k + 1])), None, p).is_err());
        assert!(x.conv2d_add(&w, Some(&b), None, Some(&Tensor::zeros([n, k, 1, 1])), p).is_err());
    }
}

#[test]
fn the_shift_gradient_sums_each_samples_positions() {
    let d_out = Tensor::from_vec((0..2 * 3 * 4).map(|v| v as f32).collect(), [2, 3, 2, 2]).unwrap();
    // Sample 0: channels 0..3 hold 0..4, 4..8, 8..12; sample 1 continues from 12.
    let d_shift = conv2d_backward_shift(&d_out).unwrap();
    assert_eq!(d_shift.dims(), &[2, 3]);
    assert_eq!(d_shift.to_vec(), vec![6., 22., 38., 54., 70., 86.]);
    assert_eq!(conv2d_backward_bias(&d_out).unwrap().to_vec(), vec![60., 92., 124.]);
    assert!(conv2d_backward_shift(&Tensor::zeros([2, 3])).is_err());
}

#[test]
fn a_nan_reaches_only_the_outputs_that_read_it() {
    // The direct kernel loads whole vectors and switches off the lanes that
    // fall in the padding; a NaN in such a lane (here at the end of a row, whose
    // next flat neighbour starts the row below) must not leak into outputs
    // whose window does not hold it. One NaN at (y, x) of channel 1 of sample 1
    // makes NaN exactly the outputs of sample 1 within one pixel of it.
    let (n, c, k, h, w) = (3, 16, 8, 28, 28);
    for (ny, nx) in [(5, w - 1), (9, 0), (0, 13), (h - 1, w - 1)] {
        let mut x = Tensor::randn([n, c, h, w], &mut StdRng::seed_from_u64(7)).to_vec();
        x[((c + 1) * h + ny) * w + nx] = f32::NAN; // sample 1, channel 1
        let x = Tensor::from_vec(x, [n, c, h, w]).unwrap();
        let weight = Tensor::randn([k, c, 3, 3], &mut StdRng::seed_from_u64(8));
        let y = x.conv2d(&weight, None, params(1, 1)).unwrap().to_vec();
        for (i, v) in y.iter().enumerate() {
            let (sample, oy, ox) = (i / (k * h * w), i / w % h, i % w);
            let reads_it = sample == 1 && oy.abs_diff(ny) <= 1 && ox.abs_diff(nx) <= 1;
            assert_eq!(v.is_nan(), reads_it, "output {i} (sample {sample}, y {oy}, x {ox}), NaN at ({ny}, {nx})");
        }
    }
}

#[test]
fn a_hand_computed_example() {
    // x is 1..=16 on a 4x4 grid, the kernel is all ones: with padding 1, each
    // output is the sum of the 3x3 neighbourhood that lies inside the grid.
    //   1  2  3  4
    //   5  6  7  8
    //   9 10 11 12
    //  13 14 15 16
    let x = Tensor::from_vec((1..=16).map(|v| v as f32).collect(), [1, 1, 4, 4]).unwrap();
    let ones = Tensor::ones([1, 1, 3, 3]);
    let y = x.conv2d(&ones, None, params(1, 1)).unwrap();
    let expected = [14., 24., 30., 22., 33., 54., 63., 45., 57., 90., 99., 69., 46., 72., 78., 54.];
    assert_eq!(y.to_vec(), expected);
    // Stride 2 keeps the outputs centred on (0, 0), (0, 2), (2, 0), (2, 2); a bias adds 0.5.
    let bias = Tensor::from_vec(vec![0.5], [1]).unwrap();
    let y2 = x.conv2d(&ones, Some(&bias), params(2, 1)).unwrap();
    assert_eq!(y2.dims(), &[1, 1, 2, 2]);
    assert_eq!(y2.to_vec(), vec![14.5, 30.5, 57.5, 99.5]);
    // The all-ones d_out sends back to each pixel the number of windows it sat in.
    let d_x = conv2d_backward_input(&Tensor::ones([1, 1, 4, 4]), &ones, x.shape(), params(1, 1)).unwrap();
    let counts = [4., 6., 6., 4., 6., 9., 9., 6., 6., 9., 9., 6., 4., 6., 6., 4.];
    assert_eq!(d_x.to_vec(), counts);
}

#[test]
fn backward_functions_are_adjoints_of_the_forward() {
    // conv2d without bias is linear in x and in weight, so for any g of y's shape
    //   d/dx <conv(x, w), g> = backward_input(g, w)   gives <conv(x, w), g> = <x, backward_input(g, w)>,
    //   d/dw <conv(x, w), g> = backward_weight(x, g)  gives <conv(x, w), g> = <w, backward_weight(x, g)>.
    fn dot(a: &Tensor, b: &Tensor) -> f64 {
        a.as_slice().iter().zip(b.as_slice()).map(|(&a, &b)| a as f64 * b as f64).sum()
    }
    let mut rng = StdRng::seed_from_u64(7);
    for (c, k, h, w, r, stride, pad) in [(3, 4, 9, 8, 3, 1, 1), (2, 5, 9, 8, 3, 2, 1), (6, 2, 5, 5, 1, 1, 0)] {
        let p = params(stride, pad);
        let x = Tensor::randn([2, c, h, w], &mut rng);
        let weight = Tensor::randn([k, c, r, r], &mut rng);
        let y = x.conv2d(&weight, None, p).unwrap();
        let g = Tensor::randn(y.shape().clone(), &mut rng);
        let lhs = dot(&y, &g);
        let via_input = dot(&x, &conv2d_backward_input(&g, &weight, x.shape(), p).unwrap());
        let via_weight = dot(&weight, &conv2d_backward_weight(&x, &g, weight.shape(), p).unwrap());
        let tol = 1e-4 * (y.numel() as f64).sqrt() * (c * r * r) as f64;
        assert!((lhs - via_input).abs() < tol, "<conv(x), g> = {lhs} but <x, d_input> = {via_input}");
        assert!((lhs - via_weight).abs() < tol, "<conv(x), g> = {lhs} but <w, d_weight> = {via_weight}");
    }
}

#[test]
fn stride_two_needs_the_input_shape_to_go_back() {
    // Heights 13 and 14 both give Ho = 7 at stride 2, padding 1, kernel 3; the
    // gradient of the 13-row input has 13 rows.
    let mut rng = StdRng::seed_from_u64(8);
    let weight = Tensor::randn([2, 3, 3, 3], &mut rng);
    let d_out = Tensor::randn([1, 2, 7, 7], &mut rng);
    for h in [13, 14] {
        let shape = Shape::new([1, 3, h, 13]);
        let d_x = conv2d_backward_input(&d_out, &weight, &shape, params(2, 1)).unwrap();
        close("stride 2", &d_x, &conv2d_backward_input_reference(&d_out, &weight, &shape, params(2, 1)).unwrap(), 18);
    }
}

#[test]
fn an_empty_batch_gives_empty_results() {
    let x = Tensor::zeros([0, 2, 5, 5]);
    let weight = Tensor::ones([3, 2, 3, 3]);
    let y = x.conv2d(&weight, None, params(1, 1)).unwrap();
    assert_eq!(y.dims(), &[0, 3, 5, 5]);
    assert_eq!(conv2d_backward_input(&y, &weight, x.shape(), params(1, 1)).unwrap().dims(), &[0, 2, 5, 5]);
    let d_w = conv2d_backward_weight(&x, &y, weight.shape(), params(1, 1)).unwrap();
    assert_eq!(d_w.to_vec(), vec![0.0; 54]);
    assert_eq!(conv2d_backward_bias(&y).unwrap().to_vec(), vec![0.0; 3]);
}

#[test]
fn bad_shapes_are_errors_with_a_message() {
    let x = Tensor::zeros([2, 3, 5, 5]);
    let w = Tensor::zeros([4, 3, 3, 3]);
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    assert_eq!(
        err(Tensor::zeros([3, 5, 5]).conv2d(&w, None, params(1, 1))),
        "conv2d: input must have rank 4 [N, C, H, W], got shape [3, 5, 5]"
    );
    assert_eq!(
        err(x.conv2d(&Tensor::zeros([4, 3, 3]), None, params(1, 1))),
        "conv2d: weight must have rank 4 [K, C, R, S], got shape [4, 3, 3]"
    );
    assert_eq!(
        err(x.conv2d(&Tensor::zeros([4, 2, 3, 3]), None, params(1, 1))),
        "conv2d: input [2, 3, 5, 5] has 3 channels but weight [4, 2, 3, 3] expects 2"
    );
    assert_eq!(
        err(x.conv2d(&w, Some(&Tensor::zeros([3])), params(1, 1))),
        "conv2d: bias must have shape [4] (one per output channel), got [3]"
    );
    assert_eq!(
        err(x.conv2d(&Tensor::zeros([4, 3, 7, 7]), None, params(1, 0))),
        "conv2d: kernel 7x7 is larger than the padded input 5x5 (input 5x5, padding 0)"
    );
    assert_eq!(err(x.conv2d(&w, None, params(0, 1))), "conv2d: stride must be at least 1");
    assert_eq!(err(x.conv2d(&Tensor::zeros([4, 3, 0, 3]), None, params(1, 1))), "conv2d: kernel 0x3 is empty");
    // The gradients check d_out against the shape the forward would produce.
    let d_out = Tensor::zeros([2, 4, 4, 4]);
    assert_eq!(
        err(conv2d_backward_input(&d_out, &w, x.shape(), params(1, 1))),
        "conv2d_backward_input: d_out has shape [2, 4, 4, 4] but the convolution outputs [2, 4, 5, 5]"
    );
    assert_eq!(
        err(conv2d_backward_weight(&x, &d_out, w.shape(), params(1, 1))),
        "conv2d_backward_weight: d_out has shape [2, 4, 4, 4] but the convolution outputs [2, 4, 5, 5]"
    );
    assert_eq!(
        err(conv2d_backward_bias(&Tensor::zeros([4, 4]))),
        "conv2d_backward_bias: d_out must have rank 4 [N, K, Ho, Wo], got shape [4, 4]"
    );
    assert!(conv2d_reference(&x, &w, None, params(0, 0)).is_err());
}

proptest! {
    #[test]
    fn any_small_convolution_matches_the_reference(
        n in 1usize..4, c in 1usize..5, k in 1usize..5, h in 1usize..10, w in 1usize..10,
        r in 1usize..4, s in 1usize..4, stride in 1usize..4, pad in 0usize..3, bias: bool, seed in 0u64..1000,
    ) {
        prop_assume!(r <= h + 2 * pad && s <= w + 2 * pad);
        check_against_reference(Case { n, c, k, h, w, r, s, stride, pad, bias }, seed);
    }
}
