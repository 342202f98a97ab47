use ddpm_autograd::{Result, Tensor};

/// The sinusoidal timestep embedding of the reference (Vaswani et al.'s
/// positional encoding, applied to t):
///     [sin(t f_0), ..., sin(t f_{h-1}), cos(t f_0), ..., cos(t f_{h-1})],
///     f_i = 10000^(-i/h),  h = dim / 2.
/// t [B] -> [B, dim]. Computed in f32 in the same order as PyTorch, so that the
/// parity tests see the same rounding.
pub fn timestep_embedding(t: &[usize], dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|i| ((-(10000.0f64.ln() as f32)) * i as f32 / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &step in t {
        let args: Vec<f32> = freqs.iter().map(|&f| step as f32 * f).collect();
        out.extend(args.iter().map(|a| a.sin()));
        out.extend(args.iter().map(|a| a.cos()));
    }
    Tensor::from_vec(out, [t.len(), 2 * half])
}
