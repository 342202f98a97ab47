//! `--device auto|cpu|cuda`.

use std::fmt;

use anyhow::{bail, Result};
use clap::ValueEnum;
use ddpm_cuda::Gpu;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// the GPU when the CUDA backend can use one, else the CPU (with a notice)
    Auto,
    Cpu,
    Cuda,
}

/// The device a job runs on.
pub enum Device {
    Cpu,
    Cuda(Gpu),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu (rayon)"),
            Device::Cuda(gpu) => write!(f, "cuda ({})", gpu.describe()),
        }
    }
}

/// Where a job's work can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// On the GPU or the CPU (training, sampling).
    Either,
    /// On the CPU only, and why (the lecture's formula).
    CpuOnly(&'static str),
}

/// Picks the device for `work`. `cuda` is an error when no GPU can be used,
/// naming why (no driver, no NVRTC, no device), or when the work does not
/// run on the GPU yet; `auto` then falls back to the CPU with a one-line notice.
pub fn resolve(arg: DeviceArg, work: Work) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto => match (Gpu::new(0), work) {
            (Ok(gpu), Work::Either) => Ok(Device::Cuda(gpu)),
            (Ok(gpu), Work::CpuOnly(why)) => {
                eprintln!("note: found {}, but {why}; running on the CPU", gpu.describe());
                Ok(Device::Cpu)
            }
            (Err(e), _) => {
                eprintln!("note: no usable GPU ({e}); running on the CPU");
                Ok(Device::Cpu)
            }
        },
        DeviceArg::Cuda => match (Gpu::new(0), work) {
            (Ok(gpu), Work::Either) => Ok(Device::Cuda(gpu)),
            (Ok(gpu), Work::CpuOnly(why)) => {
                bail!("--device cuda: found {}, but {why}; use --device cpu", gpu.describe())
            }
            (Err(e), _) => bail!("--device cuda: {e}; use --device cpu (or auto)"),
        },
    }
}
