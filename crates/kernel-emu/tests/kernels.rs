//! The kernels the tensor ops do not reach, in CPU emulation
//! (kernels/emu/cuda_emu.h), through the same launches the GPU uses
//! (`ddpm_cuda::ops`: argument checks, launch geometry), against the CPU
//! reference: the convolutions' naive kernels beside the tiled ones, and
//! Philox's raw words. Every op the tensors do reach is checked on the
//! emulated device in tests/emulated.rs at the workspace root.

use ddpm_cuda::launch::{self, ConvShape};
use ddpm_cuda::ops::conv2d::{backward_input, backward_weight, forward};
use ddpm_cuda::ops::{In, Out};
use ddpm_cuda::{ConvKernel, Executor};
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

/// A host vector as an input of the emulated kernels.
fn inp(v: &Vec<f32>) -> In<'_, Vec<f32>> {
    In::new(&Emu, v)
}

/// The `len` numbers `launch` writes into a fresh output (NaN until written,
/// so that a kernel that misses part of it fails the comparison).
fn conv(len: usize, launch: impl FnOnce(Out<'_, Vec<f32>>) -> ddpm_cuda::Result<()>) -> Vec<f32> {
    let mut out = Emu.output(len).unwrap();
    launch(Out::new(&Emu, &mut out)).unwrap();
    out
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
        for kernel in [ConvKernel::Tiled, ConvKernel::Naive] {
            let y = conv(g.output_len(), |y| forward(&Emu, kernel, &g, inp(&x), inp(&w), Some(inp(&b)), None, None, y));
            assert_close(&format!("{kernel:?} forward, case {i} {g:?}"), &y, want.as_slice(), terms);
        }
        // Without a bias (a null pointer).
        let no_bias =
            conv2d_reference(&tensor(&x, &[g.n, g.c, g.h, g.w]), &tensor(&w, &[g.k, g.c, g.r, g.s]), None, p).unwrap();
        let y = conv(g.output_len(), |y| forward(&Emu, ConvKernel::Tiled, &g, inp(&x), inp(&w), None, None, None, y));
        assert_close(&format!("tiled forward without bias, case {i}"), &y, no_bias.as_slice(), terms);
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
        for kernel in [ConvKernel::Tiled, ConvKernel::Naive] {
            let d_x = conv(g.input_len(), |d_x| backward_input(&Emu, kernel, &g, inp(&d_y), inp(&w), d_x));
            assert_close(&format!("{kernel:?} input gradient, case {i} {g:?}"), &d_x, want.as_slice(), terms);
        }
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
        for kernel in [ConvKernel::Tiled, ConvKernel::Naive] {
            let d_w = conv(g.weight_len(), |d_w| backward_weight(&Emu, kernel, &g, inp(&x), inp(&d_y), d_w));
            assert_close(&format!("{kernel:?} weight gradient, case {i} {g:?}"), &d_w, want.as_slice(), terms);
        }
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
}
