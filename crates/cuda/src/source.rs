//! The kernel sources, embedded in the binary, and the kernels each defines.
//!
//! `kernels/*.cu` are compiled at run time by NVRTC (see [`crate::nvrtc`]);
//! embedding them means a built binary needs no source tree. NVRTC has no
//! include path here, so a file that builds on a shared header (`gemm.cuh`,
//! `reduce.cuh` or `philox.cuh`) lists it as a prelude: the program compiled
//! is the preludes, then the file.

/// One compilation unit: a `.cu` file and what it needs in front of it.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    /// The file under `kernels/`.
    pub file: &'static str,
    /// Shared headers compiled in front of it, in order.
    pub preludes: &'static [Prelude],
    pub source: &'static str,
    /// Every kernel the Rust side launches from this file (a test checks that
    /// each is defined in the source).
    pub kernels: &'static [&'static str],
}

/// A shared header under `kernels/`.
#[derive(Debug, Clone, Copy)]
pub struct Prelude {
    pub file: &'static str,
    pub source: &'static str,
}

pub const GEMM: Prelude = Prelude { file: "gemm.cuh", source: include_str!("../../../kernels/gemm.cuh") };

pub const BLOCK_REDUCE: Prelude = Prelude { file: "reduce.cuh", source: include_str!("../../../kernels/reduce.cuh") };

pub const PHILOX: Prelude = Prelude { file: "philox.cuh", source: include_str!("../../../kernels/philox.cuh") };

pub const CONV2D: Module = Module {
    file: "conv2d.cu",
    preludes: &[GEMM],
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
    preludes: &[GEMM],
    source: include_str!("../../../kernels/matmul.cu"),
    kernels: &["matmul_f32"],
};

pub const ELEMENTWISE: Module = Module {
    file: "elementwise.cu",
    preludes: &[PHILOX],
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
    preludes: &[BLOCK_REDUCE],
    source: include_str!("../../../kernels/softmax.cu"),
    kernels: &["softmax_f32", "log_softmax_f32", "softmax_bwd_f32", "log_softmax_bwd_f32"],
};

pub const SAMPLING: Module = Module {
    file: "sampling.cu",
    preludes: &[PHILOX],
    source: include_str!("../../../kernels/sampling.cu"),
    kernels: &["philox4x32_10_u32", "randn_f32", "ddpm_step_f32", "ddim_step_f32"],
};

pub const NORM: Module = Module {
    file: "norm.cu",
    preludes: &[BLOCK_REDUCE],
    source: include_str!("../../../kernels/norm.cu"),
    kernels: &["group_norm_fwd_f32", "group_norm_bwd_f32"],
};

pub const REDUCE: Module = Module {
    file: "reduce.cu",
    preludes: &[BLOCK_REDUCE],
    source: include_str!("../../../kernels/reduce.cu"),
    kernels: &["sum_f32", "sumsq_partial_f32", "global_norm_f32"],
};

pub const OPTIM: Module = Module {
    file: "optim.cu",
    preludes: &[],
    source: include_str!("../../../kernels/optim.cu"),
    kernels: &["adam_f32", "lerp_f32"],
};

/// Every module, in the order CI compiles them.
pub const MODULES: &[Module] = &[CONV2D, MATMUL, ELEMENTWISE, REDUCE, NORM, SOFTMAX, SAMPLING, OPTIM];

impl Module {
    /// The program NVRTC compiles: the preludes, then the file.
    pub fn program(&self) -> String {
        let mut text = String::new();
        for p in self.preludes {
            text.push_str(&format!("// ---- {} ----\n{}\n", p.file, p.source));
        }
        text.push_str(&format!("// ---- {} ----\n{}", self.file, self.source));
        text
    }

    /// The name NVRTC reports errors under.
    pub fn name(&self) -> &'static str {
        self.file.trim_end_matches(".cu")
    }
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
    fn a_prelude_comes_before_the_file() {
        let p = CONV2D.program();
        assert!(p.find("tiled_gemm(int M").unwrap() < p.find("conv2d_fwd_f32").unwrap());
    }
}
