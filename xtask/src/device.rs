//! `--device auto|cpu|cuda`.

use std::fmt;

use anyhow::{bail, Result};
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// the GPU when the CUDA backend can use one, else the CPU (with a notice)
    Auto,
    Cpu,
    Cuda,
}

/// The device a job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cpu (rayon)")
    }
}

/// Picks the device; the CUDA backend is not built yet, so `cuda` is an error
/// and `auto` falls back to the CPU with a one-line notice.
pub fn resolve(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto => {
            eprintln!("note: the CUDA backend is not built yet (issue #6); running on the CPU");
            Ok(Device::Cpu)
        }
        DeviceArg::Cuda => bail!("--device cuda: the CUDA backend is not built yet (issue #6); use --device cpu"),
    }
}
