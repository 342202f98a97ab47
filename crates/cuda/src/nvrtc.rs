//! Kernels compiled at run time by NVRTC, once per process.
//!
//! NVRTC is loaded when first used (cudarc's `dynamic-loading`), so nothing
//! here needs CUDA at build time. CI compiles every module on a machine with
//! no GPU, from the `nvidia-cuda-nvrtc` wheel (see `.ci/run` and CUDA.md).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

use crate::source::Module;
use crate::{CudaError, Result};

/// The virtual architecture the PTX targets: sm_90 is the H100 and H200.
pub const ARCH: &str = "compute_90";

/// Whether libnvrtc can be loaded on this machine.
pub fn available() -> bool {
    // Safety: only probes for the shared library; it loads nothing into use.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The PTX of `module`, compiled on first use and kept for the process.
pub fn ptx(module: &Module) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(ptx) = cache.lock().unwrap().get(module.file) {
        return Ok(ptx.clone());
    }
    let ptx = compile(module)?.to_src();
    cache.lock().unwrap().insert(module.file, ptx.clone());
    Ok(ptx)
}

/// Compiles `module` (its preludes, then the file) to PTX for [`ARCH`].
pub fn compile(module: &Module) -> Result<Ptx> {
    if !available() {
        return Err(CudaError::NoNvrtc);
    }
    let opts = CompileOptions { arch: Some(ARCH), name: Some(module.file.to_string()), ..Default::default() };
    compile_ptx_with_opts(module.program(), opts).map_err(|e| CudaError::Compile {
        file: module.file,
        log: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        },
    })
}
