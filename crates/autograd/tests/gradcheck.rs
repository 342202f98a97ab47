//! A finite-difference gradient check for every differentiable op, including
//! broadcasting and a node used twice. Each test names the calculus it checks.

use ddpm_autograd::gradcheck::{check_gradients, Tolerance};
use ddpm_autograd::{Result, Tensor, Var};
use rand::{rngs::StdRng, SeedableRng};

fn randn(dims: &[usize], seed: u64) -> Tensor {
    Tensor::randn(dims, &mut StdRng::seed_from_u64(seed))
}

/// Values in [lo, hi): for ops defined only on part of the line (log, sqrt, 1/x).
fn uniform(dims: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    Tensor::rand_uniform(dims, lo, hi, &mut StdRng::seed_from_u64(seed))
}

/// Normal values pushed at least 0.1 away from 0, for ops with a kink there.
fn away_from_zero(dims: &[usize], seed: u64) -> Tensor {
    randn(dims, seed).map(|x| x + 0.1f32.copysign(x)).unwrap()
}

fn check(inputs: &[Tensor], f: impl Fn(&[Var]) -> Result<Var>) {
    if let Err(m) = check_gradients(inputs, f, Tolerance::default()) {
        panic!("gradient mismatch: {m:?}");
    }
}

// ------------------------------------------------------------ binary, same shape and broadcast

#[test]
fn add_same_shape_and_broadcast() {
    // y = a + b: dy/da = dy/db = 1; a broadcast b sums g over the repeated axes.
    check(&[randn(&[2, 3, 4], 1), randn(&[2, 3, 4], 2)], |v| v[0].add(&v[1]));
    check(&[randn(&[2, 3, 4, 4], 1), randn(&[1, 3, 1, 1], 2)], |v| v[0].add(&v[1]));
    check(&[randn(&[2, 3, 1, 1], 1), randn(&[2, 3, 4, 4], 2)], |v| v[0].add(&v[1]));
    check(&[randn(&[4, 1, 3], 1), randn(&[5, 1], 2)], |v| v[0].add(&v[1]));
}

#[test]
fn sub_same_shape_and_broadcast() {
    // y = a - b: dy/da = 1, dy/db = -1.
    check(&[randn(&[3, 4], 3), randn(&[3, 4], 4)], |v| v[0].sub(&v[1]));
    check(&[randn(&[2, 3, 4], 3), randn(&[3, 1], 4)], |v| v[0].sub(&v[1]));
}

#[test]
fn mul_same_shape_and_broadcast() {
    // y = a b: dy/da = b, dy/db = a.
    check(&[randn(&[3, 4], 5), randn(&[3, 4], 6)], |v| v[0].mul(&v[1]));
    check(&[randn(&[2, 3, 2, 2], 5), randn(&[2, 3, 1, 1], 6)], |v| v[0].mul(&v[1]));
    check(&[randn(&[], 5), randn(&[2, 3], 6)], |v| v[0].mul(&v[1]));
}

#[test]
fn div_same_shape_and_broadcast() {
    // y = a / b: dy/da = 1/b, dy/db = -a/b^2.
    check(&[randn(&[3, 4], 7), uniform(&[3, 4], 0.5, 2.0, 8)], |v| v[0].div(&v[1]));
    check(&[randn(&[2, 3, 4], 7), uniform(&[3, 1], 0.5, 2.0, 8)], |v| v[0].div(&v[1]));
}

// ------------------------------------------------------------ unary

#[test]
fn neg_and_affine() {
    // y = -x: -1.  y = 3x - 2: 3.
    check(&[randn(&[5], 9)], |v| v[0].neg());
    check(&[randn(&[2, 5], 9)], |v| v[0].affine(3.0, -2.0));
}

#[test]
fn exp_and_log() {
    // y = e^x: e^x.  y = ln x: 1/x.
    check(&[randn(&[2, 5], 10)], |v| v[0].exp());
    check(&[uniform(&[2, 5], 0.5, 3.0, 11)], |v| v[0].log());
}

#[test]
fn sqrt_and_powf() {
    // y = sqrt x: 1 / (2 sqrt x).  y = x^p: p x^(p-1).
    check(&[uniform(&[2, 5], 0.5, 3.0, 12)], |v| v[0].sqrt());
    check(&[uniform(&[2, 5], 0.5, 3.0, 13)], |v| v[0].powf(1.5));
    check(&[randn(&[2, 5], 13)], |v| v[0].powf(3.0));
}

#[test]
fn tanh_sigmoid_silu() {
    // tanh' = 1 - tanh^2, s' = s(1 - s), silu' = s(1 + x(1 - s)).
    check(&[randn(&[3, 4], 14).scale(2.0).unwrap()], |v| v[0].tanh());
    check(&[randn(&[3, 4], 15).scale(2.0).unwrap()], |v| v[0].sigmoid());
    check(&[randn(&[3, 4], 16).scale(2.0).unwrap()], |v| v[0].silu());
}

#[test]
fn relu_away_from_its_kink() {
    // relu' = 1 for x > 0, 0 for x < 0 (undefined at 0, so we stay away from it).
    check(&[away_from_zero(&[3, 4], 17)], |v| v[0].relu());
}

// ------------------------------------------------------------ reductions and layout

#[test]
fn sum_axes_keepdim_and_not() {
    // y = sum_i x_i: dy/dx_i = 1 for every summed element.
    check(&[randn(&[2, 3, 4], 18)], |v| v[0].sum_axes(&[0, 2], true));
    check(&[randn(&[2, 3, 4], 18)], |v| v[0].sum_axes(&[1], false));
    check(&[randn(&[2, 3, 4], 18)], |v| v[0].sum_all());
}

#[test]
fn mean_is_a_scaled_sum() {
    // y = (1/n) sum x_i: 1/n.
    check(&[randn(&[2, 3, 4], 19)], |v| v[0].mean_axes(&[1, 2], true));
    check(&[randn(&[2, 3, 4], 19)], |v| v[0].mean_all());
}

#[test]
fn reshape_permute_transpose() {
    // Moving elements: the gradient moves back the same way.
    check(&[randn(&[2, 6], 20)], |v| v[0].reshape([3, 4]));
    check(&[randn(&[2, 3, 4], 21)], |v| v[0].permute(&[2, 0, 1]));
    check(&[randn(&[2, 3, 4], 22)], |v| v[0].transpose(1, 2));
}

#[test]
fn concat_and_narrow_and_split() {
    // Each part of a concat gets its slice of g; a narrow's g lands in its slice.
    check(&[randn(&[2, 1, 3], 23), randn(&[2, 2, 3], 24)], |v| Var::concat(&[&v[0], &v[1]], 1));
    check(&[randn(&[2, 5, 3], 25)], |v| v[0].narrow(1, 1, 3));
    check(&[randn(&[2, 5, 3], 26)], |v| {
        let p = v[0].split(1, &[2, 3])?;
        p[1].sum_axes(&[1], true)?.mul(&p[0])
    });
}

#[test]
fn softmax_and_log_softmax() {
    // softmax: dx = y (g - <g, y>); log softmax: dx = g - softmax(x) sum g.
    check(&[randn(&[2, 3, 5], 27).scale(2.0).unwrap()], |v| v[0].softmax());
    check(&[randn(&[4, 6], 28).scale(2.0).unwrap()], |v| v[0].log_softmax());
}

#[test]
fn matmul_plain_batched_and_shared_weight() {
    // Y = A B: dA = G B^T, dB = A^T G.
    check(&[randn(&[3, 4], 29), randn(&[4, 5], 30)], |v| v[0].matmul(&v[1]));
    check(&[randn(&[2, 3, 4], 29), randn(&[2, 4, 5], 30)], |v| v[0].matmul(&v[1]));
    // A weight shared by every batch entry collects all their gradients.
    check(&[randn(&[2, 3, 4], 31), randn(&[4, 5], 32)], |v| v[0].matmul(&v[1]));
}

#[test]
fn matmul_with_a_transposed_operand() {
    // Y = A B^T: dA = G B, dB = G^T A.   Y = A^T B: dA = B G^T, dB = A G.
    check(&[randn(&[3, 4], 33), randn(&[5, 4], 34)], |v| v[0].matmul_nt(&v[1]));
    check(&[randn(&[2, 3, 4], 33), randn(&[2, 5, 4], 34)], |v| v[0].matmul_nt(&v[1]));
    check(&[randn(&[2, 3, 4], 35), randn(&[5, 4], 36)], |v| v[0].matmul_nt(&v[1]));
    check(&[randn(&[4, 3], 35), randn(&[4, 5], 36)], |v| v[0].matmul_tn(&v[1]));
    check(&[randn(&[2, 4, 3], 35), randn(&[2, 4, 5], 36)], |v| v[0].matmul_tn(&v[1]));
}

// ------------------------------------------------------------ reuse and composition

#[test]
fn a_node_used_twice_sums_both_paths() {
    // y = x * x: dy/dx = x + x = 2x (one term from each use).
    check(&[randn(&[3, 4], 37)], |v| v[0].mul(&v[0]));
    // y = (a + b) * a: dy/da = (a + b) + a, dy/db = a.
    check(&[randn(&[3, 4], 38), randn(&[3, 4], 39)], |v| v[0].add(&v[1])?.mul(&v[0]));
    // Y = X X for a square X: both operands of one matmul.
    check(&[randn(&[4, 4], 40)], |v| v[0].matmul(&v[0]));
    // An intermediate used twice, through a broadcast.
    check(&[randn(&[2, 3], 41)], |v| {
        let m = v[0].mean_axes(&[1], true)?;
        v[0].sub(&m)?.mul(&m)
    });
}

#[test]
fn attention_like_composition() {
    // softmax(Q K^T / sqrt(c)) V, single head, batched: the U-Net's attention core.
    check(&[randn(&[2, 5, 4], 42), randn(&[2, 5, 4], 43), randn(&[2, 5, 4], 44)], |v| {
        v[0].matmul_nt(&v[1])?.scale(0.5)?.softmax()?.matmul(&v[2])
    });
}

#[test]
fn mse_loss() {
    // L = mean((a - b)^2): dL/da = 2 (a - b) / n.
    check(&[randn(&[2, 1, 3, 3], 45), randn(&[2, 1, 3, 3], 46)], |v| v[0].mse(&v[1]));
}

// ------------------------------------------------------------ the checker itself

#[test]
fn the_checker_catches_a_wrong_rule() {
    // x * detach(x) has true derivative 2x, but backward only sees one path and
    // reports x: exactly the kind of error a wrong rule makes. It must fail.
    let x = randn(&[3, 4], 47);
    let result = check_gradients(&[x], |v| v[0].mul(&v[0].detach()), Tolerance::default());
    let m = result.expect_err("a missing gradient path must be caught");
    assert!((m.numeric - 2.0 * m.analytic).abs() < 1e-2 * m.numeric.abs().max(1.0), "{m:?}");
}

// ------------------------------------------------------------ layer primitives

#[test]
fn group_norm_all_three_inputs() {
    // y = gamma (x - mu) / sqrt(var + eps) + beta, mu and var over each group:
    // dx couples every element of a group through mu and var.
    let x = randn(&[2, 4, 3, 3], 50).affine(1.5, 0.3).unwrap();
    let (gamma, beta) = (randn(&[4], 51), randn(&[4], 52));
    check(&[x.clone(), gamma.clone(), beta.clone()], |v| v[0].group_norm(2, &v[1], &v[2], 1e-5));
    // One group per channel (instance norm) and one group for all (layer norm).
    check(&[x.clone(), gamma.clone(), beta.clone()], |v| v[0].group_norm(4, &v[1], &v[2], 1e-5));
    check(&[x, gamma, beta], |v| v[0].group_norm(1, &v[1], &v[2], 1e-5));
}

#[test]
fn group_norm_silu_fused() {
    // y = silu(GroupNorm(x)): the chain rule through both, done by one fused rule.
    let x = randn(&[2, 4, 3, 3], 55).affine(1.5, 0.3).unwrap();
    let (gamma, beta) = (randn(&[4], 56), randn(&[4], 57));
    check(&[x, gamma, beta], |v| v[0].group_norm_silu(2, &v[1], &v[2], 1e-5));
}

#[test]
fn dropout_is_linear_with_its_mask_as_slope() {
    // y = x * mask: dy/dx = mask, 0 or 1 / (1 - p), with the mask recomputed
    // from the seed in the backward pass. p = 0.5 drops about half.
    check(&[randn(&[2, 3, 5, 7], 61)], |v| v[0].dropout(42, 0.5));
}

#[test]
fn upsample_nearest2x() {
    // Each input pixel is copied to 4 outputs: its gradient is their sum.
    check(&[randn(&[2, 3, 3, 2], 53)], |v| v[0].upsample_nearest2x());
}

#[test]
fn max_pool2x2_away_from_ties() {
    use rand::seq::SliceRandom;
    // y = max of a 2x2 window: dy/dx = 1 for the largest x, 0 for the others.
    // Defined only where the maximum is unique, so the values are a shuffle of
    // a grid spaced 0.1 apart: a step of h = 0.01 never changes which is largest.
    let dims = [2, 3, 4, 6];
    let mut values: Vec<f32> = (0..144).map(|i| i as f32 * 0.1 - 7.2).collect();
    values.shuffle(&mut StdRng::seed_from_u64(58));
    let x = Tensor::from_vec(values, dims).unwrap();
    check(&[x], |v| v[0].max_pool2x2());
}

#[test]
fn cross_entropy_of_logits() {
    // L = -(1/B) sum_b log softmax(z_b)[y_b]: dL/dz_b = (softmax(z_b) - onehot(y_b)) / B.
    check(&[randn(&[4, 5], 59).scale(2.0).unwrap()], |v| v[0].cross_entropy(&[3, 0, 4, 3]));
}

#[test]
fn cross_entropy_is_the_mean_negative_log_likelihood() {
    // Logits (0, ln 3) give probabilities (1/4, 3/4): L = -(ln 1/4 + ln 3/4) / 2.
    let z = Var::constant(Tensor::from_vec(vec![0.0, 3f32.ln(), 0.0, 3f32.ln()], [2, 2]).unwrap());
    let loss = z.cross_entropy(&[0, 1]).unwrap().value().item().unwrap();
    let expected = -(0.25f32.ln() + 0.75f32.ln()) / 2.0;
    assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    assert!(z.cross_entropy(&[0, 2]).is_err(), "a label must be below K");
    assert!(z.cross_entropy(&[0]).is_err(), "one label per row");
}

#[test]
fn embedding_with_a_repeated_index() {
    // out[b] = table[idx[b]]: d table[v] = sum of g[b] over idx[b] == v.
    check(&[randn(&[5, 3], 54)], |v| v[0].embedding(&[4, 1, 4, 0]));
}

#[test]
fn conv2d_all_configurations_of_the_unet() {
    use ddpm_tensor::ops::Conv2dParams;
    // y[n,k,i,j] = b[k] + sum_{c,r,s} w[k,c,r,s] x[n,c,i*stride+r-pad,j*stride+s-pad]:
    // linear in x, in w and in b, so each gradient is a correlation with g.
    for (kernel, stride, padding) in [(3, 1, 1), (3, 2, 1), (1, 1, 0)] {
        let p = Conv2dParams { stride, padding };
        let x = randn(&[2, 3, 5, 4], 60);
        let w = randn(&[4, 3, kernel, kernel], 61);
        let b = randn(&[4], 62);
        check(&[x.clone(), w.clone(), b], |v| v[0].conv2d(&v[1], Some(&v[2]), p));
        check(&[x.clone(), w.clone()], |v| v[0].conv2d(&v[1], None, p));
        // + shift [N, K] broadcast over the positions (its gradient: g summed
        // over each sample's positions) + residual (its gradient: g itself).
        let y_dims = x.conv2d(&w, None, p).unwrap().dims().to_vec();
        let (shift, residual) = (randn(&[2, 4], 63), randn(&y_dims, 64));
        check(&[x, w, randn(&[4], 65), shift, residual], |v| {
            v[0].conv2d_add(&v[1], Some(&v[2]), Some(&v[3]), Some(&v[4]), p)
        });
    }
}
