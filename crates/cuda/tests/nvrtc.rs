//! Every kernel module compiles with NVRTC for compute_90, and the PTX
//! assembles for sm_90 with ptxas: a real check of the CUDA sources on a
//! machine with no GPU. `cargo xtask test` (and so CI) installs NVRTC and
//! ptxas from their wheels and sets DDPM_REQUIRE_NVRTC, which turns a missing
//! compiler into a failure instead of a skip.

use std::path::PathBuf;
use std::process::Command;

use ddpm_cuda::nvrtc;
use ddpm_cuda::source::MODULES;

fn required() -> bool {
    std::env::var_os("DDPM_REQUIRE_NVRTC").is_some()
}

/// ptxas from DDPM_PTXAS, else the wheel folder `cargo xtask test` fills.
fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DDPM_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let wheel = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cuda-wheels/nvidia/cu13/bin/ptxas");
    wheel.exists().then_some(wheel)
}

#[test]
fn every_kernel_compiles_with_nvrtc_and_assembles_for_sm_90() {
    if !nvrtc::available() {
        assert!(!required(), "DDPM_REQUIRE_NVRTC is set but libnvrtc.so.13 is not on LD_LIBRARY_PATH");
        eprintln!("skipped: NVRTC (libnvrtc.so.13) not found; `cargo xtask test` installs it");
        return;
    }
    let ptxas = ptxas();
    assert!(ptxas.is_some() || !required(), "DDPM_REQUIRE_NVRTC is set but ptxas is not found");
    let dir = std::env::temp_dir().join(format!("ddpm-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for m in MODULES {
        let ptx = nvrtc::compile(m).unwrap_or_else(|e| panic!("{e}")).to_src();
        for k in m.kernels {
            assert!(ptx.contains(&format!(".entry {k}(")), "{}: no entry point {k} in the PTX", m.file);
        }
        let Some(ptxas) = &ptxas else {
            eprintln!("{}: compiled; ptxas not found, so not assembled", m.file);
            continue;
        };
        let file = dir.join(format!("{}.ptx", m.name()));
        std::fs::write(&file, &ptx).unwrap();
        let out = Command::new(ptxas).args(["-arch=sm_90", "-o", "/dev/null"]).arg(&file).output().unwrap();
        assert!(out.status.success(), "ptxas rejected {}:\n{}", m.file, String::from_utf8_lossy(&out.stderr));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_compile_error_names_the_file_and_carries_the_log() {
    if !nvrtc::available() {
        eprintln!("skipped: NVRTC not found");
        return;
    }
    let broken = ddpm_cuda::source::Module {
        file: "broken.cu",
        preludes: &[],
        source: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
        kernels: &["k"],
    };
    let err = nvrtc::compile(&broken).unwrap_err().to_string();
    assert!(err.contains("kernels/broken.cu") && err.contains("undefined_name"), "{err}");
}
