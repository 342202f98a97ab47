//! Every tensor op on the emulated device (the CUDA kernels compiled for the
//! CPU, `crates/kernel-emu`) against the same op on the host: the device
//! path of the tensor crate and every kernel, checked where there is no GPU.

mod parity;

parity::parity_tests!(Some(ddpm_kernel_emu::device()));
