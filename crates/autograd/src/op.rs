//! The record of how a node was computed: which primitive, from which inputs,
//! with which constants. `backward.rs` holds the derivative of each variant.

use ddpm_tensor::ops::{Conv2dParams, GroupNormStats};

use crate::Var;

/// A primitive op and its inputs.
pub enum Op {
    // Broadcasting binary arithmetic.
    Add(Var, Var),
    Sub(Var, Var),
    Mul(Var, Var),
    Div(Var, Var),
    // Elementwise maps.
    Neg(Var),
    /// y = scale * x + shift (the shift does not reach the gradient).
    Affine(Var, f32),
    Exp(Var),
    Log(Var),
    Sqrt(Var),
    Powf(Var, f32),
    Tanh(Var),
    Sigmoid(Var),
    Silu(Var),
    Relu(Var),
    // Reductions and layout.
    SumAxes(Var, Vec<usize>, bool),
    Reshape(Var),
    Permute(Var, Vec<usize>),
    Concat(Vec<Var>, usize),
    Narrow(Var, usize, usize),
    // Row-wise normalisations over the last axis.
    Softmax(Var),
    LogSoftmax(Var),
    // Matrix products (batched); the suffix says which operand is transposed.
    Matmul(Var, Var),
    MatmulNt(Var, Var),
    MatmulTn(Var, Var),
    // The U-Net's layer primitives, each a fused kernel with a fused backward.
    /// conv2d(x; weight, bias) for x [N, C, H, W], weight [K, C, R, S], bias [K],
    /// plus shift [N, K] (per sample and channel) and a residual of y's shape,
    /// both added as y is written.
    Conv2d {
        x: Var,
        weight: Var,
        bias: Option<Var>,
        shift: Option<Var>,
        residual: Option<Var>,
        params: Conv2dParams,
    },
    /// GroupNorm(x; gamma, beta) with its saved per-group mean and 1/std.
    GroupNorm {
        x: Var,
        gamma: Var,
        beta: Var,
        groups: usize,
        stats: GroupNormStats,
    },
    /// silu(GroupNorm(x; gamma, beta)), fused: the U-Net's "norm, then activation".
    GroupNormSilu {
        x: Var,
        gamma: Var,
        beta: Var,
        groups: usize,
        stats: GroupNormStats,
    },
    /// Inverted dropout whose mask is Philox stream `seed` (recomputed, not stored).
    Dropout(Var, u64, f32),
    /// Nearest-neighbour x2 upsampling of [N, C, H, W].
    Upsample2x(Var),
    /// The largest value of each 2x2 window of [N, C, H, W] (the classifier's pooling).
    MaxPool2x2(Var),
    /// Rows of a [V, D] table picked by the indices.
    Embedding(Var, Vec<usize>),
}

impl Op {
    /// The inputs, in order.
    pub fn inputs(&self) -> Vec<&Var> {
        use Op::*;
        match self {
            Add(a, b) | Sub(a, b) | Mul(a, b) | Div(a, b) | Matmul(a, b) | MatmulNt(a, b) | MatmulTn(a, b) => {
                vec![a, b]
            }
            Neg(a)
            | Affine(a, _)
            | Exp(a)
            | Log(a)
            | Sqrt(a)
            | Powf(a, _)
            | Tanh(a)
            | Sigmoid(a)
            | Silu(a)
            | Relu(a)
            | SumAxes(a, ..)
            | Reshape(a)
            | Permute(a, _)
            | Narrow(a, ..)
            | Softmax(a)
            | LogSoftmax(a) => {
                vec![a]
            }
            Upsample2x(a) | MaxPool2x2(a) | Embedding(a, _) | Dropout(a, ..) => vec![a],
            GroupNorm { x, gamma, beta, .. } | GroupNormSilu { x, gamma, beta, .. } => vec![x, gamma, beta],
            Conv2d { x, weight, bias, shift, residual, .. } => {
                [Some(x), Some(weight), bias.as_ref(), shift.as_ref(), residual.as_ref()]
                    .into_iter()
                    .flatten()
                    .collect()
            }
            Concat(parts, _) => parts.iter().collect(),
        }
    }

    pub fn name(&self) -> &'static str {
        use Op::*;
        match self {
            Add(..) => "add",
            Sub(..) => "sub",
            Mul(..) => "mul",
            Div(..) => "div",
            Neg(..) => "neg",
            Affine(..) => "affine",
            Exp(..) => "exp",
            Log(..) => "log",
            Sqrt(..) => "sqrt",
            Powf(..) => "powf",
            Tanh(..) => "tanh",
            Sigmoid(..) => "sigmoid",
            Silu(..) => "silu",
            Relu(..) => "relu",
            SumAxes(..) => "sum_axes",
            Reshape(..) => "reshape",
            Permute(..) => "permute",
            Concat(..) => "concat",
            Narrow(..) => "narrow",
            Softmax(..) => "softmax",
            LogSoftmax(..) => "log_softmax",
            Matmul(..) => "matmul",
            MatmulNt(..) => "matmul_nt",
            MatmulTn(..) => "matmul_tn",
            GroupNorm { .. } => "group_norm",
            GroupNormSilu { .. } => "group_norm_silu",
            Conv2d { .. } => "conv2d",
            Upsample2x(..) => "upsample_nearest2x",
            Dropout(..) => "dropout",
            MaxPool2x2(..) => "max_pool2x2",
            Embedding(..) => "embedding",
        }
    }
}
