use thiserror::Error;

/// Why the GPU path cannot run, or what went wrong on it.
#[derive(Debug, Error)]
pub enum CudaError {
    #[error("no CUDA driver on this machine (libcuda.so not found)")]
    NoDriver,
    #[error(
        "NVRTC (libnvrtc.so.13) not found, so the kernels cannot be compiled: install the nvidia-cuda-nvrtc \
         wheel (see .ci/run) and put its lib folder on LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    #[error("CUDA device {ordinal} unavailable: {reason}")]
    NoDevice { ordinal: usize, reason: String },
    #[error("NVRTC failed on kernels/{file}:\n{log}")]
    Compile { file: &'static str, log: String },
    #[error("kernel {kernel} is not in kernels/{file}")]
    NoKernel { file: &'static str, kernel: &'static str },
    #[error("CUDA: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
}

pub type Result<T> = std::result::Result<T, CudaError>;
