//! The kernel sources, embedded in the binary, and the kernels each defines.
//!
//! `kernels/*.cu` are compiled at run time by NVRTC (see [`crate::nvrtc`]);
//! embedding them means a built binary needs no source tree. They are plain
//! CUDA files: each `#include`s the shared headers it builds on (`gemm.cuh`,
//! `reduce.cuh`, `philox.cuh`), so that `nvcc -I kernels -ptx kernels/x.cu`
//! compiles one on its own. With no source tree to point NVRTC at, a
//! [`Module`] carries the headers its includes name, embedded too, and NVRTC
//! is given them by name (its `headers` and `includeNames`). Tests check that
//! every `#include "..."` of a module, and of the headers it is given, is
//! among them (see docs/cuda.md).

/// One compilation unit: a `.cu` file and the headers it includes.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    /// The file under `kernels/`.
    pub file: &'static str,
    /// Every header its `#include "..."` lines name, and those theirs name
    /// (NVRTC resolves an include among these, by name).
    pub headers: &'static [Header],
    pub source: &'static str,
    /// Every kernel the Rust side launches from this file (a test checks that
    /// each is defined in the source).
    pub kernels: &'static [&'static str],
}

/// A shared header under `kernels/`, named as the files `#include` it.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub file: &'static str,
    pub source: &'static str,
}

pub const GEMM: Header = Header { file: "gemm.cuh", source: include_str!("../../../kernels/gemm.cuh") };

pub const BLOCK_REDUCE: Header = Header { file: "reduce.cuh", source: include_str!("../../../kernels/reduce.cuh") };

pub const PHILOX: Header = Header { file: "philox.cuh", source: include_str!("../../../kernels/philox.cuh") };

/// Every shared header.
pub const HEADERS: &[Header] = &[GEMM, BLOCK_REDUCE, PHILOX];

pub const CONV2D: Module = Module {
    file: "conv2d.cu",
    headers: &[GEMM],
    source: include_str!("../../../kernels/conv2d.cu"),
    kernels: &[
        "conv2d_fwd_f32",
        "conv2d_bwd_input_f32",
        "conv2d_bwd_weight_f32",
        "conv2d_fwd_naive_f32",
        "conv2d_bwd_input_naive_f32",
        "conv2d_bwd_weight_naive_f32",
    ],
};

pub const MATMUL: Module = Module {
    file: "matmul.cu",
    headers: &[GEMM],
    source: include_str!("../../../kernels/matmul.cu"),
    kernels: &["matmul_f32"],
};

pub const ELEMENTWISE: Module = Module {
    file: "elementwise.cu",
    headers: &[PHILOX],
    source: include_str!("../../../kernels/elementwise.cu"),
    kernels: &[
        "fill_f32",
        "unary_f32",
        "unary_bwd_f32",
        "binary_f32",
        "copy_blocks_f32",
        "gather_f32",
        "upsample2x_f32",
        "upsample2x_bwd_f32",
        "max_pool2x2_f32",
        "max_pool2x2_bwd_f32",
        "gather_rows_f32",
        "scatter_rows_f32",
        "dropout_f32",
    ],
};

pub const SOFTMAX: Module = Module {
    file: "softmax.cu",
    headers: &[BLOCK_REDUCE],
    source: include_str!("../../../kernels/softmax.cu"),
    kernels: &["softmax_f32", "log_softmax_f32", "softmax_bwd_f32", "log_softmax_bwd_f32"],
};

pub const SAMPLING: Module = Module {
    file: "sampling.cu",
    headers: &[PHILOX],
    source: include_str!("../../../kernels/sampling.cu"),
    kernels: &["philox4x32_10_u32", "randn_f32", "ddpm_step_f32", "ddim_step_f32"],
};

pub const NORM: Module = Module {
    file: "norm.cu",
    headers: &[BLOCK_REDUCE],
    source: include_str!("../../../kernels/norm.cu"),
    kernels: &["group_norm_fwd_f32", "group_norm_bwd_f32"],
};

pub const REDUCE: Module = Module {
    file: "reduce.cu",
    headers: &[BLOCK_REDUCE],
    source: include_str!("../../../kernels/reduce.cu"),
    kernels: &["sum_f32", "sumsq_partial_f32", "global_norm_f32"],
};

pub const OPTIM: Module = Module {
    file: "optim.cu",
    headers: &[],
    source: include_str!("../../../kernels/optim.cu"),
    kernels: &["adam_f32", "lerp_f32"],
};

/// Every module, in the order CI compiles them.
pub const MODULES: &[Module] = &[CONV2D, MATMUL, ELEMENTWISE, REDUCE, NORM, SOFTMAX, SAMPLING, OPTIM];

impl Module {
    /// The name NVRTC reports errors under.
    pub fn name(&self) -> &'static str {
        self.file.trim_end_matches(".cu")
    }
}

/// The names `source` includes with `#include "name"`, in order (lines that
/// start with `#`, spaces allowed around it; `<...>` includes, of a
/// toolkit's headers, are not listed).
pub fn includes(source: &str) -> Vec<&str> {
    source
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix('#')?.trim_start().strip_prefix("include")?.trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(&rest[..rest.find('"')?])
        })
        .collect()
}

/// The names of the `extern "C" __global__` functions defined in `source`.
pub fn kernels_defined_in(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("__global__") {
        rest = &rest[at + "__global__".len()..];
        // `void`, an optional `__launch_bounds__(...)`, then the name and `(`.
        let Some(open) = rest.find('(') else { break };
        let mut head = rest[..open].trim().trim_start_matches("void").trim();
        if head.starts_with("__launch_bounds__") {
            let close = rest.find(')').map_or(open, |c| c + 1);
            let after = &rest[close..];
            let Some(open2) = after.find('(') else { break };
            head = after[..open2].trim();
        }
        if !head.is_empty() && head.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(head.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_the_rust_side_launches_is_defined_in_its_source() {
        for m in MODULES {
            let defined = kernels_defined_in(m.source);
            for k in m.kernels {
                assert!(defined.iter().any(|d| d == k), "{}: no kernel named {k}; it defines {defined:?}", m.file);
            }
            for d in &defined {
                assert!(
                    m.kernels.contains(&d.as_str()),
                    "{}: kernel {d} is defined but not listed in source.rs",
                    m.file
                );
            }
        }
    }

    #[test]
    fn kernel_names_are_unique_across_modules() {
        let mut seen = std::collections::HashSet::new();
        for m in MODULES {
            for k in m.kernels {
                assert!(seen.insert(*k), "{k} is listed twice");
            }
        }
    }

    #[test]
    fn kernel_names_are_found_with_or_without_launch_bounds() {
        let src = "extern \"C\" __global__ void plain(int n) {}\n\
                   extern \"C\" __global__ void __launch_bounds__(256) bounded(\n float* x) {}\n\
                   static __device__ float helper(float x) { return x; }";
        assert_eq!(kernels_defined_in(src), ["plain", "bounded"]);
    }

    #[test]
    fn includes_are_found_with_spaces_and_not_in_comments() {
        let src = "#include \"a.cuh\"\n  #  include \"b.cuh\" // why\n// #include \"c.cuh\"\n#include <d.h>\nint x;";
        assert_eq!(includes(src), ["a.cuh", "b.cuh"]);
    }

    /// A `.cu` that includes a header source.rs does not give its module (or
    /// a header that includes one) fails here, before NVRTC would.
    #[test]
    fn every_include_of_a_module_and_its_headers_is_given_to_it() {
        for m in MODULES {
            let given = |name: &str| m.headers.iter().any(|h| h.file == name);
            for name in includes(m.source) {
                assert!(given(name), "{} includes \"{name}\", which source.rs does not give it", m.file);
            }
            for h in m.headers {
                for name in includes(h.source) {
                    assert!(given(name), "{} includes \"{name}\", which source.rs does not give {}", h.file, m.file);
                }
            }
        }
    }

    #[test]
    fn every_header_given_to_a_module_is_included_by_it() {
        for m in MODULES {
            // The headers reachable from the file through its includes.
            let mut reached: Vec<&str> = includes(m.source);
            let mut i = 0;
            while i < reached.len() {
                if let Some(h) = HEADERS.iter().find(|h| h.file == reached[i]) {
                    for name in includes(h.source) {
                        if !reached.contains(&name) {
                            reached.push(name);
                        }
                    }
                }
                i += 1;
            }
            for h in m.headers {
                assert!(reached.contains(&h.file), "{} is given {}, which it does not include", m.file, h.file);
            }
        }
    }

    #[test]
    fn every_file_under_kernels_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".cu") {
                assert!(MODULES.iter().any(|m| m.file == name), "kernels/{name} is not a module in source.rs");
            } else if name.ends_with(".cuh") {
                assert!(HEADERS.iter().any(|h| h.file == name), "kernels/{name} is not in source.rs's HEADERS");
            }
        }
    }

    #[test]
    fn every_header_has_an_include_guard() {
        for h in HEADERS {
            assert!(h.source.lines().any(|l| l.trim() == "#pragma once"), "{} has no #pragma once", h.file);
        }
    }

    #[test]
    fn conv2d_includes_the_gemm_before_it_uses_it() {
        let s = CONV2D.source;
        let include = s.find("#include \"gemm.cuh\"").expect("conv2d.cu does not include gemm.cuh");
        assert!(include < s.find("tiled_gemm(").expect("conv2d.cu does not call tiled_gemm"));
        assert!(GEMM.source.contains("tiled_gemm(int M"));
    }
}
