//! Finite-difference gradient checks: the test that every derivative rule must pass.
//!
//! For a function f of some input tensors, take the scalar L = sum(f(x) * R)
//! with R a fixed random tensor (so that every output element matters, each
//! with its own weight). Then for every element x_i of every input, the
//! central difference
//!     (L(x_i + h) - L(x_i - h)) / 2h  =  dL/dx_i + O(h^2)
//! must agree with what backward computed. The differences are taken in f64
//! from f32 evaluations, so h is large (1e-2) and the tolerance is about 1e-2:
//! a wrong rule is off by O(1) and fails by orders of magnitude.

use rand::{rngs::StdRng, SeedableRng};

use ddpm_tensor::{Result, Tensor};

use crate::{no_grad, Var};

/// Step and tolerance of a check.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// The finite-difference step h.
    pub step: f32,
    /// Accept |analytic - numeric| <= tol * max(1, |numeric|).
    pub tol: f32,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance { step: 1e-2, tol: 1e-2 }
    }
}

/// The worst disagreement found by a check.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub input: usize,
    pub index: usize,
    pub analytic: f32,
    pub numeric: f32,
}

/// Checks the gradients of `f` at `inputs` by central differences.
/// Returns the largest relative error, or the worst mismatch as an error.
pub fn check_gradients(
    inputs: &[Tensor],
    f: impl Fn(&[Var]) -> Result<Var>,
    tolerance: Tolerance,
) -> std::result::Result<f32, Mismatch> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::param(t.clone())).collect();
    let out = f(&vars).expect("the checked function must accept its inputs");
    let weights = Tensor::randn(out.shape(), &mut StdRng::seed_from_u64(17));

    // Analytic: backward from L = sum(f(x) * R).
    let loss = out.mul(&Var::constant(weights.clone())).and_then(|l| l.sum_all()).expect("same shape");
    let grads = loss.backward().expect("backward runs");

    // Numeric: L evaluated in f64 at x_i +- h, recording nothing.
    let loss_at = |xs: &[Tensor]| -> f64 {
        no_grad(|| {
            let vars: Vec<Var> = xs.iter().map(|t| Var::constant(t.clone())).collect();
            let y = f(&vars).expect("the checked function must accept its inputs").value();
            y.as_slice().iter().zip(weights.as_slice()).map(|(&a, &b)| a as f64 * b as f64).sum()
        })
    };

    let h = tolerance.step;
    let mut worst = 0.0f32;
    for (k, var) in vars.iter().enumerate() {
        let analytic = grads.get(var).cloned().unwrap_or_else(|| Tensor::zeros(var.shape()));
        let mut xs: Vec<Tensor> = inputs.to_vec();
        for i in 0..inputs[k].numel() {
            let x0 = inputs[k].as_slice()[i];
            xs[k].as_mut_slice()[i] = x0 + h;
            let plus = loss_at(&xs);
            xs[k].as_mut_slice()[i] = x0 - h;
            let minus = loss_at(&xs);
            xs[k].as_mut_slice()[i] = x0;
            let numeric = ((plus - minus) / (2.0 * h as f64)) as f32;
            let a = analytic.as_slice()[i];
            let err = (a - numeric).abs() / numeric.abs().max(1.0);
            if err > tolerance.tol || !err.is_finite() {
                return Err(Mismatch { input: k, index: i, analytic: a, numeric });
            }
            worst = worst.max(err);
        }
    }
    Ok(worst)
}
