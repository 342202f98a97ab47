//! Kernels compiled at run time by NVRTC, once per process.
//!
//! NVRTC is loaded when first used (cudarc's `dynamic-loading`), so nothing
//! here needs CUDA at build time. CI compiles every module on a machine with
//! no GPU, from the `nvidia-cuda-nvrtc` wheel (see `.ci/run` and
//! docs/cuda.md).
//!
//! A module's `#include "..."` lines are resolved by NVRTC itself: the
//! program is created with the module's headers ([`Module::headers`]: their
//! embedded sources and the names they are included by). NVRTC takes a
//! header given this way before any file of that name on disk, so the PTX is
//! the same wherever the binary runs (an include not given would be looked
//! for relative to the working directory: `source.rs`'s tests make sure
//! every one is given). cudarc's `compile_ptx_with_opts` creates programs
//! without headers, so this calls `nvrtcCreateProgram` itself, then cudarc's
//! thin wrappers (`nvrtc::result`) for the rest.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{result, sys, Ptx};

use crate::source::Module;
use crate::{CudaError, Result};

/// The virtual architecture the PTX targets: sm_90 is the H100 and H200.
pub const ARCH: &str = "compute_90";

/// Whether libnvrtc can be loaded on this machine.
pub fn available() -> bool {
    // Safety: only probes for the shared library; it loads nothing into use.
    unsafe { sys::is_culib_present() }
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

/// An NVRTC program, destroyed when dropped.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // Safety: created by nvrtcCreateProgram and destroyed only here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// Compiles `module` (the file, its includes resolved among its headers) to
/// PTX for [`ARCH`].
pub fn compile(module: &Module) -> Result<Ptx> {
    if !available() {
        return Err(CudaError::NoNvrtc);
    }
    let fail = |log: String| CudaError::Compile { file: module.file, log };
    let c = |s: &str| CString::new(s).expect("kernel sources and names hold no NUL");
    // NVRTC may keep pointers to these until the program is destroyed: they
    // are declared before `program`, so they are dropped after it.
    let source = c(module.source);
    let name = c(module.file);
    let header_sources: Vec<CString> = module.headers.iter().map(|h| c(h.source)).collect();
    let header_names: Vec<CString> = module.headers.iter().map(|h| c(h.file)).collect();
    let sources: Vec<*const c_char> = header_sources.iter().map(|s| s.as_ptr()).collect();
    let names: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();

    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // Safety: every pointer is to a NUL-terminated string that outlives the
    // program; the two arrays hold `headers.len()` entries each.
    unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            source.as_ptr(),
            name.as_ptr(),
            module.headers.len() as c_int,
            sources.as_ptr(),
            names.as_ptr(),
        )
    }
    .result()
    .map_err(|e| fail(format!("nvrtcCreateProgram: {e:?}")))?;
    let program = Program(raw);

    let options = [format!("--gpu-architecture={ARCH}")];
    // Safety: `program` is a live program.
    if let Err(e) = unsafe { result::compile_program(program.0, &options) } {
        // Safety: as above; the log is NUL-terminated.
        let log = unsafe { result::get_program_log(program.0) }
            .map(|log| unsafe { CStr::from_ptr(log.as_ptr()) }.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{e:?} (and no log)"));
        return Err(fail(log));
    }
    // Safety: as above; the PTX is NUL-terminated.
    let image = unsafe { result::get_ptx(program.0) }.map_err(|e| fail(format!("nvrtcGetPTX: {e:?}")))?;
    Ok(Ptx::from_src(unsafe { CStr::from_ptr(image.as_ptr()) }.to_string_lossy().into_owned()))
}
