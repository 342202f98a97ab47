//! `cargo xtask test`: the whole test suite, set up as CI runs it.
//!
//! `cargo test --workspace` alone runs every test that needs nothing but
//! Rust. The CUDA kernels also get compiled for the GPU (NVRTC) and assembled
//! for sm_90 (ptxas), which needs those two tools: this job installs them from
//! their PyPI wheels into `.cuda-wheels/` (once, about 90 MB, ignored by git),
//! puts them on the library path and makes their absence a failure rather
//! than a skip. GPU tests still skip, saying so, where there is no GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

/// The pinned versions: NVRTC 13.0 emits PTX the GPU machines' driver
/// and ptxas 13.0 accept (NVRTC 13.5 does not).
const WHEELS: [&str; 2] = ["nvidia-cuda-nvrtc==13.0.88", "nvidia-cuda-nvcc==13.0.88"];

#[derive(Args)]
pub struct TestArgs {
    /// Do not install NVRTC: the kernel compile check then skips (with a message).
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
        let lib = install_wheels(&root, &args.python)?;
        let path = match std::env::var_os("LD_LIBRARY_PATH") {
            Some(old) if !old.is_empty() => {
                let mut p = lib.into_os_string();
                p.push(":");
                p.push(old);
                p
            }
            _ => lib.into_os_string(),
        };
        cargo.env("LD_LIBRARY_PATH", path).env("DDPM_REQUIRE_NVRTC", "1");
    }
    eprintln!("running: cargo test --workspace {}", args.cargo_args.join(" "));
    let status = cargo.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// Installs the NVRTC and nvcc (ptxas) wheels under `root/.cuda-wheels`
/// unless they are there; returns the folder holding libnvrtc.so.13.
fn install_wheels(root: &Path, python: &str) -> Result<PathBuf> {
    let target = root.join(".cuda-wheels");
    let lib = target.join("nvidia/cu13/lib");
    let ready = lib.join("libnvrtc.so.13").exists() && target.join("nvidia/cu13/bin/ptxas").exists();
    if !ready {
        eprintln!("installing NVRTC and ptxas ({}) into {}", WHEELS.join(", "), target.display());
        let status = Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&target)
            .args(WHEELS)
            .status()
            .with_context(|| format!("cannot run {python} -m pip (use --python, or --no-cuda-wheels to skip)"))?;
        if !status.success() {
            bail!(
                "pip could not install {} ({status}); --no-cuda-wheels skips the kernel compile check",
                WHEELS.join(" ")
            );
        }
        if !lib.join("libnvrtc.so.13").exists() {
            bail!("the NVRTC wheel installed, but {} has no libnvrtc.so.13", lib.display());
        }
    }
    Ok(lib)
}
