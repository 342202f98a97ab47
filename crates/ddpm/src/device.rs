//! Where a job runs: the host, or a CUDA GPU when one can be used.
//!
//! A device is only a place for tensors (`ddpm_tensor::Device`): opening one
//! registers its backend, after which `Tensor::to`, `Module::to_device` and
//! `Trainer::to_device` put tensors there and every op runs there. The model,
//! the training step and the samplers are the same code on every device.

use ddpm_tensor::Device;

/// Why a GPU cannot be used here (no driver, no NVRTC, no device), in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoGpu(String);

/// Opens CUDA device `ordinal` for tensors, or says why it cannot be used.
pub fn cuda(ordinal: usize) -> Result<Device, NoGpu> {
    ddpm_cuda::open(ordinal).map_err(|e| NoGpu(e.to_string()))
}

/// The first GPU when it can be used, else the CPU together with the reason
/// (for `--device auto`, which says it falls back).
pub fn auto() -> (Device, Option<NoGpu>) {
    match cuda(0) {
        Ok(gpu) => (gpu, None),
        Err(why) => (Device::Cpu, Some(why)),
    }
}

/// A device in words: "cpu (rayon)", or the GPU's name.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => "cpu (rayon)".into(),
        d => ddpm_tensor::backend::describe(d),
    }
}
