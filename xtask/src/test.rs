//! `cargo xtask test`: the whole test suite, set up as CI runs it.
//!
//! `cargo test --workspace` alone runs every test that needs nothing but
//! Rust. The CUDA kernels also get compiled for the GPU by NVRTC (as the
//! binary does at run time) and by nvcc (each `kernels/*.cu` on its own, as a
//! CUDA programmer would), and the PTX assembled for sm_90 by ptxas, which
//! needs those tools: this job installs them from their PyPI wheels into
//! `.cuda-wheels/` (once, about 190 MB to download, ignored by git), puts
//! NVRTC on the library path, points DDPM_NVCC at nvcc, and makes their
//! absence a failure rather than a skip (`crates/cuda/tests/nvrtc.rs`). nvcc
//! also needs a host C++ compiler (`g++` on PATH), which the emulated kernels
//! (`crates/kernel-emu`) need anyway. GPU tests still skip, saying so, where
//! there is no GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

/// The pinned versions: NVRTC 13.0 emits PTX the GPU machines' driver
/// and ptxas 13.0 accept (NVRTC 13.5 does not). nvcc's wheel holds nvcc,
/// ptxas and cudafe++; nvcc also runs cicc (nvidia-nvvm) and reads the CUDA
/// headers (cuda_runtime.h from nvidia-cuda-runtime, crt/ from
/// nvidia-cuda-crt), the wheels it depends on, pinned here to the same
/// release since pip runs with --no-deps.
const WHEELS: [&str; 5] = [
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-runtime==13.0.88",
    "nvidia-cuda-crt==13.0.88",
];

/// What each of the wheels puts under `.cuda-wheels/nvidia/cu13`: an install
/// missing one of these (an older checkout's, made before nvcc was checked)
/// is redone.
const INSTALLED: [&str; 5] =
    ["lib/libnvrtc.so.13", "bin/ptxas", "nvvm/bin/cicc", "include/cuda_runtime.h", "include/crt/host_config.h"];

#[derive(Args)]
pub struct TestArgs {
    /// Do not install NVRTC and nvcc: the kernel compile checks then skip (with a message).
    #[arg(long)]
    no_cuda_wheels: bool,
    /// Python with pip, to install the wheels.
    #[arg(long, default_value = "python3")]
    python: String,
    /// More arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn run(args: TestArgs) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has no parent folder")?.to_path_buf();
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(&root).args(["test", "--workspace"]).args(&args.cargo_args);
    if !args.no_cuda_wheels {
        let cu13 = install_wheels(&root, &args.python)?;
        let lib = cu13.join("lib");
        let path = match std::env::var_os("LD_LIBRARY_PATH") {
            Some(old) if !old.is_empty() => {
                let mut p = lib.into_os_string();
                p.push(":");
                p.push(old);
                p
            }
            _ => lib.into_os_string(),
        };
        cargo
            .env("LD_LIBRARY_PATH", path)
            .env("DDPM_REQUIRE_NVRTC", "1")
            .env("DDPM_NVCC", cu13.join("bin/nvcc"))
            .env("DDPM_PTXAS", cu13.join("bin/ptxas"));
    }
    eprintln!("running: cargo test --workspace {}", args.cargo_args.join(" "));
    let status = cargo.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// Installs the NVRTC and nvcc wheels (and nvcc's own) under
/// `root/.cuda-wheels` unless they are all there; returns their
/// `nvidia/cu13` folder (bin/nvcc, bin/ptxas, lib/libnvrtc.so.13).
fn install_wheels(root: &Path, python: &str) -> Result<PathBuf> {
    let target = root.join(".cuda-wheels");
    let cu13 = target.join("nvidia/cu13");
    let ready = INSTALLED.iter().all(|f| cu13.join(f).exists());
    if !ready {
        eprintln!("installing NVRTC, nvcc and ptxas ({}) into {}", WHEELS.join(", "), target.display());
        // All in one pip command, with --upgrade: pip --target installs into
        // a fresh folder and then moves its top-level folders over, skipping
        // any that exist (nvidia/, from an earlier install) unless upgrading.
        let status = Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target"])
            .arg(&target)
            .args(WHEELS)
            .status()
            .with_context(|| format!("cannot run {python} -m pip (use --python, or --no-cuda-wheels to skip)"))?;
        if !status.success() {
            bail!(
                "pip could not install {} ({status}); --no-cuda-wheels skips the kernel compile checks",
                WHEELS.join(" ")
            );
        }
        if let Some(missing) = INSTALLED.iter().find(|f| !cu13.join(f).exists()) {
            bail!("the CUDA wheels installed, but {} has no {missing}", cu13.display());
        }
    }
    Ok(cu13)
}
