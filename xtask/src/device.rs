//! `--device auto|cpu|cuda`.

use anyhow::{bail, Result};
use clap::ValueEnum;
use ddpm_tensor::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// the GPU when one can be used, else the CPU (with a notice)
    Auto,
    Cpu,
    Cuda,
}

/// Opens the device a job runs on. `cuda` is an error when no GPU can be
/// used, naming why (no driver, no NVRTC, no device); `auto` then falls back
/// to the CPU with a one-line notice.
pub fn resolve(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto => {
            let (device, why) = ddpm::device::auto();
            if let Some(why) = why {
                eprintln!("note: no usable GPU ({why}); running on the CPU");
            }
            Ok(device)
        }
        DeviceArg::Cuda => match ddpm::device::cuda(0) {
            Ok(device) => Ok(device),
            Err(why) => bail!("--device cuda: {why}; use --device cpu (or auto)"),
        },
    }
}
