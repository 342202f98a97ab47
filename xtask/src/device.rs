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

/// What stops the jobs from running on a GPU that is there: the kernels
/// exist, the U-Net does not run on them yet.
const NOT_YET: &str = "training and sampling do not run on the GPU yet (issue #6: the convolution, matmul and \
                       sampling kernels are built; `cargo bench --bench kernels` times them)";

/// Picks the device. `cuda` is an error when no GPU can be used, naming why
/// (no driver, no NVRTC, no device), and, for now, also when one can;
/// `auto` falls back to the CPU with a one-line notice.
pub fn resolve(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto => {
            match ddpm_cuda::open() {
                Ok(gpu) => eprintln!("note: found {}, but {NOT_YET}; running on the CPU", gpu.describe()),
                Err(e) => eprintln!("note: no usable GPU ({e}); running on the CPU"),
            }
            Ok(Device::Cpu)
        }
        DeviceArg::Cuda => match ddpm_cuda::open() {
            Ok(gpu) => bail!("--device cuda: found {}, but {NOT_YET}; use --device cpu", gpu.describe()),
            Err(e) => bail!("--device cuda: {e}"),
        },
    }
}
