//! The GPU executor: a CUDA context and its default stream, and the
//! compiled modules. Buffers stay on the device between launches; only
//! `upload` and `download` cross to the host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, PushKernelArg};
use cudarc::nvrtc::Ptx;

use crate::exec::{Arg, Executor};
use crate::launch::Launch;
use crate::source::Module;
use crate::{nvrtc, CudaError, Result};

/// Whether the CUDA driver library can be loaded here.
pub fn driver_present() -> bool {
    // Safety: only probes for the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// One CUDA device, its default stream and the kernels loaded on it.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl Gpu {
    /// Opens device `ordinal`. Errors, never panics, when there is no driver,
    /// no NVRTC or no such device.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        if !nvrtc::available() {
            return Err(CudaError::NoNvrtc);
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice { ordinal, reason: e.to_string() })?;
        let stream = ctx.default_stream();
        Ok(Gpu { ctx, stream, modules: Mutex::new(HashMap::new()), functions: Mutex::new(HashMap::new()) })
    }

    /// "NVIDIA H100 80GB HBM3", say.
    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// "NVIDIA H100 80GB HBM3 (device 0)", say.
    pub fn describe(&self) -> String {
        format!("{} (device {})", self.name(), self.ctx.ordinal())
    }

    /// Waits for every launch so far (for timing; downloads wait by themselves).
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// `kernel` of `module`, compiling and loading the module on first use
    /// (kernel names are unique across the modules).
    pub fn function(&self, module: &Module, kernel: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap().get(kernel) {
            return Ok(f.clone());
        }
        let loaded = {
            let mut modules = self.modules.lock().unwrap();
            match modules.get(module.file) {
                Some(m) => Arc::clone(m),
                None => {
                    let m = self.ctx.load_module(Ptx::from_src(nvrtc::ptx(module)?))?;
                    modules.insert(module.file, Arc::clone(&m));
                    m
                }
            }
        };
        let f = loaded.load_function(kernel).map_err(|_| CudaError::NoKernel { file: module.file, kernel })?;
        self.functions.lock().unwrap().insert(kernel, f.clone());
        Ok(f)
    }
}

/// The device pointer of a null operand.
static NULL: u64 = 0;

impl Executor for Gpu {
    type Buf = CudaSlice<f32>;

    fn output(&self, len: usize) -> Result<CudaSlice<f32>> {
        // Safety: every buffer from `output` is written in full by a kernel
        // or an upload before anything reads it (the emulation's NaN-filled
        // outputs check this in the tests).
        Ok(unsafe { self.stream.alloc::<f32>(len) }?)
    }

    fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        Ok(self.stream.clone_htod(host)?)
    }

    fn upload_into(&self, host: &[f32], buf: &mut CudaSlice<f32>) -> Result<()> {
        Ok(self.stream.memcpy_htod(host, buf)?)
    }

    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        Ok(self.stream.clone_dtoh(buf)?)
    }

    fn len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }

    fn synchronize(&self) -> Result<()> {
        Gpu::synchronize(self)
    }

    fn launch(
        &self,
        module: &Module,
        kernel: &'static str,
        at: Launch,
        args: &mut [Arg<'_, CudaSlice<f32>>],
    ) -> Result<()> {
        let f = self.function(module, kernel)?;
        let mut b = self.stream.launch_builder(&f);
        for arg in args.iter_mut() {
            match arg {
                Arg::In(buf) => b.arg(*buf),
                Arg::Out(buf) => b.arg(&mut **buf),
                Arg::Null => b.arg(&NULL),
                Arg::I32(v) => b.arg(&*v),
                Arg::I64(v) => b.arg(&*v),
                Arg::U64(v) => b.arg(&*v),
                Arg::F32(v) => b.arg(&*v),
                Arg::F64(v) => b.arg(&*v),
            };
        }
        // Safety: the launches of `crate::ops` push the arguments in the order
        // and types of each kernel's C signature, after checking the lengths.
        unsafe { b.launch(at.into()) }?;
        Ok(())
    }
}
