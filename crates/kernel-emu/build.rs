//! Compiles every `kernels/*.cu` as C++ for the CPU into one static library
//! the tests call. Each file is compiled through a wrapper that includes
//! `kernels/emu/cuda_emu.h` (what nvcc gives a `.cu` implicitly: `__global__`
//! and friends, threadIdx, uint4, the built-ins the kernels use), then the
//! file; the file's own `#include "gemm.cuh"` and the like are found with
//! `-I kernels`, as nvcc finds them.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kernels").canonicalize().unwrap();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // The folder (a new file), and each file in it and in emu/.
    println!("cargo:rerun-if-changed={}", root.display());
    let files = |dir: PathBuf| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    };
    let kernels = files(root.clone());
    for f in kernels.iter().chain(&files(root.join("emu"))) {
        if f.is_file() {
            println!("cargo:rerun-if-changed={}", f.display());
        }
    }

    let mut build = cc::Build::new();
    build.cpp(true).std("c++17").opt_level(2).warnings(false).include(root.join("emu")).include(&root);
    build.file(root.join("emu/emu.cpp"));
    for cu in kernels.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")) {
        let stem = cu.file_stem().unwrap().to_string_lossy();
        let wrapper = out.join(format!("{stem}_emu.cpp"));
        let text = format!("#include \"cuda_emu.h\"\n#include \"{}\"\n", cu.display());
        std::fs::write(&wrapper, text).unwrap();
        build.file(wrapper);
    }
    build.compile("kernels_emu");
}
