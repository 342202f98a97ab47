//! Every kernel module compiles with NVRTC for compute_90, and the PTX
//! assembles for sm_90 with ptxas: a real check of the CUDA sources on a
//! machine with no GPU. Every `kernels/*.cu` also compiles on its own with
//! nvcc (`nvcc -I kernels -arch=sm_90 -ptx`), as a CUDA programmer would
//! build it, and that PTX assembles too. `cargo xtask test` (and so CI)
//! installs NVRTC, nvcc and ptxas from their wheels and sets
//! DDPM_REQUIRE_NVRTC and DDPM_NVCC, which turn a missing compiler into a
//! failure instead of a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use ddpm_cuda::nvrtc;
use ddpm_cuda::source::{Module, MODULES};

fn required() -> bool {
    std::env::var_os("DDPM_REQUIRE_NVRTC").is_some()
}

/// The folder `cargo xtask test` installs the CUDA wheels into.
fn wheels() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cuda-wheels/nvidia/cu13")
}

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels")
}

/// ptxas from DDPM_PTXAS, else the wheel folder `cargo xtask test` fills.
fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DDPM_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let wheel = wheels().join("bin/ptxas");
    wheel.exists().then_some(wheel)
}

/// nvcc from DDPM_NVCC (then it must work), else the wheel folder's when it
/// holds everything nvcc needs (cicc from nvidia-nvvm, the headers of
/// nvidia-cuda-runtime and nvidia-cuda-crt); an error says why not.
fn nvcc() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DDPM_NVCC") {
        return Ok(PathBuf::from(p));
    }
    let w = wheels();
    let needs = ["bin/nvcc", "nvvm/bin/cicc", "include/cuda_runtime.h", "include/crt/host_config.h"];
    match needs.iter().find(|n| !w.join(n).exists()) {
        None => Ok(w.join("bin/nvcc")),
        Some(n) => {
            Err(format!("{} not found (DDPM_NVCC unset); `cargo xtask test` installs nvcc", w.join(n).display()))
        }
    }
}

/// Assembles `ptx` for sm_90 with ptxas; panics with its log if it fails.
fn assemble(ptxas: &Path, ptx: &Path, what: &str) {
    let out = Command::new(ptxas).args(["-arch=sm_90", "-o", "/dev/null"]).arg(ptx).output().unwrap();
    assert!(out.status.success(), "ptxas rejected {what}:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn assert_entries(m: &Module, ptx: &str, by: &str) {
    for k in m.kernels {
        assert!(ptx.contains(&format!(".entry {k}(")), "{} ({by}): no entry point {k} in the PTX", m.file);
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
    let dir = temp_dir("ptx");
    for m in MODULES {
        let ptx = nvrtc::compile(m).unwrap_or_else(|e| panic!("{e}")).to_src();
        assert_entries(m, &ptx, "NVRTC");
        let Some(ptxas) = &ptxas else {
            eprintln!("{}: compiled; ptxas not found, so not assembled", m.file);
            continue;
        };
        let file = dir.join(format!("{}.ptx", m.name()));
        std::fs::write(&file, &ptx).unwrap();
        assemble(ptxas, &file, m.file);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Each file as it is on disk, by nvcc with only `-I kernels`: its own
/// `#include` lines must bring everything it uses.
#[test]
fn every_kernel_file_compiles_on_its_own_with_nvcc_and_assembles_for_sm_90() {
    let nvcc = match nvcc() {
        Ok(nvcc) => nvcc,
        Err(why) => {
            assert!(!required(), "DDPM_REQUIRE_NVRTC is set but nvcc is missing: {why}");
            eprintln!("skipped: {why}");
            return;
        }
    };
    let ptxas = ptxas().expect("ptxas not found beside nvcc (set DDPM_PTXAS)");
    let kernels = kernels_dir();
    let dir = temp_dir("nvcc");
    for m in MODULES {
        let ptx = dir.join(format!("{}.ptx", m.name()));
        let out = Command::new(&nvcc)
            .arg("-I")
            .arg(&kernels)
            .args(["-arch=sm_90", "-ptx"])
            .arg(kernels.join(m.file))
            .arg("-o")
            .arg(&ptx)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        assert!(
            out.status.success(),
            "nvcc -I kernels -arch=sm_90 -ptx kernels/{} failed:\n{}{}",
            m.file,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_entries(m, &std::fs::read_to_string(&ptx).unwrap(), "nvcc");
        assemble(&ptxas, &ptx, &format!("nvcc's PTX of {}", m.file));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_compile_error_names_the_file_and_carries_the_log() {
    if !nvrtc::available() {
        eprintln!("skipped: NVRTC not found");
        return;
    }
    let broken = Module {
        file: "broken.cu",
        headers: &[],
        source: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
        kernels: &["k"],
    };
    let err = nvrtc::compile(&broken).unwrap_err().to_string();
    assert!(err.contains("kernels/broken.cu") && err.contains("undefined_name"), "{err}");
}

/// NVRTC resolves an include among the module's headers (once: the header
/// has `#pragma once`); without them it fails, naming the header (the test's
/// working directory, crates/cuda, has no helper.cuh).
#[test]
fn an_include_is_resolved_among_the_modules_headers() {
    if !nvrtc::available() {
        eprintln!("skipped: NVRTC not found");
        return;
    }
    const HELPER: ddpm_cuda::source::Header =
        ddpm_cuda::source::Header { file: "helper.cuh", source: "#pragma once\n#define SCALE 2.0f\n" };
    let source = "#include \"helper.cuh\"\n#include \"helper.cuh\"\n\
                  extern \"C\" __global__ void k(float* x) { x[0] *= SCALE; }";
    let with = Module { file: "uses_helper.cu", headers: &[HELPER], source, kernels: &["k"] };
    let ptx = nvrtc::compile(&with).unwrap_or_else(|e| panic!("{e}")).to_src();
    assert!(ptx.contains(".entry k("), "{ptx}");
    let without = Module { headers: &[], ..with };
    let err = nvrtc::compile(&without).unwrap_err().to_string();
    assert!(err.contains("helper.cuh"), "{err}");
}
