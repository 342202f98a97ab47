//! Device parity: every op of `ddpm_tensor` on a device against the same op
//! on the host, `x.to(device)?.op(..)?.to(Device::Cpu)?` against `x.op(..)?`.
//! Shared by the test binaries of each device: `tests/emulated.rs` (the
//! kernels in CPU emulation, everywhere) and `tests/gpu.rs` (a real GPU,
//! where there is one). [`ops`] checks each op; [`model`] checks the same
//! graph on both storages: the U-Net's pass with its gradients, training
//! steps and the samplers. [`parity_tests!`] makes one `#[test]` per check.
//!
//! Tolerances: a result that sums `terms` products of N(0, 1) numbers in f32
//! carries a rounding error that grows like sqrt(terms) (the host and the
//! device add in different orders, and the host sometimes in f64), so
//! [`tolerance`] scales with it; an elementwise op's result is within a few
//! ulp of the host's (the device's expf, logf, ... are not libm's).

pub mod model;
pub mod ops;

use ddpm_tensor::{Device, Shape, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The tolerance of a result that sums `terms` products of N(0, 1) numbers.
pub fn tolerance(terms: usize) -> f32 {
    8e-5 * (terms.max(1) as f32).sqrt()
}

/// Fails unless `got` and `want` have one shape and every element of `got`
/// is within `tolerance * max(1, |want|)` of `want`'s (absolute for small
/// numbers, relative for large ones); NaN matches NaN. Both on the host.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tolerance: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (&g, &w)) in got.as_slice().iter().zip(want.as_slice()).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || (g - w).abs() <= tolerance * w.abs().max(1.0);
        assert!(ok, "{what}: element {i} is {g}, the host's {w} (tolerance {tolerance})");
    }
}

/// Fails unless `got` and `want` are the same numbers, bit for bit (NaN
/// matching NaN).
pub fn assert_equal(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (&g, &w)) in got.as_slice().iter().zip(want.as_slice()).enumerate() {
        let ok = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: element {i} is {g}, the host's {w}");
    }
}

/// N(0, 1) numbers of `dims` on the host, from `seed`.
pub fn randn(dims: &[usize], seed: u64) -> Tensor {
    Tensor::randn(Shape::new(dims.to_vec()), &mut StdRng::seed_from_u64(seed))
}

/// `x` on `device`.
pub fn on(device: Device, x: &Tensor) -> Tensor {
    x.to(device).unwrap_or_else(|e| panic!("to {device}: {e}"))
}

/// A device tensor's numbers, on the host.
pub fn host(x: &Tensor) -> Tensor {
    x.to(Device::Cpu).unwrap_or_else(|e| panic!("back to the host: {e}"))
}

/// One `#[test]` per check of [`ops`] and [`model`], each calling it with the device of
/// `$device`, an `Option<ddpm_tensor::Device>`: `None` means there is no
/// such device here (the expression says why), and the test returns.
macro_rules! parity_tests {
    ($device:expr) => {
        $crate::parity::parity_tests!(@each $device;
            ops::moving_tensors_between_the_host_and_the_device,
            ops::every_unary_op,
            ops::every_unary_backward,
            ops::broadcasts_of_the_unet_and_random_ones,
            ops::sums_over_every_axis_subset_of_a_rank_4_tensor,
            ops::permute_concat_narrow_and_their_inverses,
            ops::matmul_with_every_transpose_and_a_shared_weight,
            ops::conv2d_with_bias_shift_and_residual,
            ops::conv2d_gradients,
            ops::group_norm_with_and_without_silu,
            ops::softmax_and_log_softmax,
            ops::upsample_and_max_pool,
            ops::embedding_rows_and_their_scatter_add,
            ops::dropout_draws_the_cpu_mask,
            ops::randn_philox_gives_the_cpu_numbers,
            ops::sampling_steps,
            ops::adam_and_lerp,
            ops::global_norm_and_scale_by,
            ops::writes_to_a_shared_device_buffer_copy_it_first,
            ops::empty_tensors,
            ops::mixed_devices_and_closures_are_errors,
            ops::ndarray_interop_is_host_only,
            ops::layouts_the_kernels_cannot_take_are_errors,
            model::the_unet_pass_is_the_same_on_both_storages,
            model::training_steps_are_the_same_on_both_storages,
            model::ddim_with_guidance_samples_the_same,
            model::ddpm_with_noise_samples_the_same,
        );
    };
    (@each $device:expr; $($module:ident::$check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let device: Option<ddpm_tensor::Device> = $device;
                match device {
                    Some(device) => $crate::parity::$module::$check(device),
                    None => eprintln!("skipped: {}", stringify!($check)),
                }
            }
        )*
    };
}
pub(crate) use parity_tests;
