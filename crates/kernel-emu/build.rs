//! Compiles every `kernels/*.cu` as C++ for the CPU, with
//! `kernels/emu/cuda_emu.h` in front (and the shared headers `gemm.cuh`,
//! `reduce.cuh` and `philox.cuh`, which some of them build on), into one static library the
//! tests call.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kernels").canonicalize().unwrap();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", root.display());

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();

    let mut build = cc::Build::new();
    build.cpp(true).std("c++17").opt_level(2).warnings(false).include(root.join("emu")).include(&root);
    build.file(root.join("emu/emu.cpp"));
    for cu in &sources {
        println!("cargo:rerun-if-changed={}", cu.display());
        let stem = cu.file_stem().unwrap().to_string_lossy();
        let wrapper = out.join(format!("{stem}_emu.cpp"));
        let text = format!(
            "#include \"cuda_emu.h\"\n#include \"gemm.cuh\"\n#include \"reduce.cuh\"\n#include \"philox.cuh\"\n#include \"{}\"\n",
            cu.display()
        );
        std::fs::write(&wrapper, text).unwrap();
        build.file(wrapper);
    }
    build.compile("kernels_emu");
}
