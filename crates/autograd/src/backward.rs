//! Reverse mode: the derivative rule of every primitive, and the sweep.
//!
//! Notation in the comments: y is the op's output, g = dL/dy is the gradient
//! arriving from above, and each rule returns dL/dx = g * dy/dx for each input
//! x (as a vector-Jacobian product, never forming the Jacobian). A broadcast
//! input receives the gradient summed over the axes it was repeated along
//! (`sum_to`), because it contributed to every one of those outputs.

use std::collections::HashMap;

use ddpm_tensor::ops::{
    conv2d_backward_bias, conv2d_backward_input, conv2d_backward_shift, conv2d_backward_weight, group_norm_backward,
    group_norm_silu_backward, UnaryBackward,
};
use ddpm_tensor::{Result, Tensor, TensorError};

use crate::op::Op;
use crate::Var;

/// dL/dx for each input of `op`, given its output `y` and `g` = dL/dy.
/// Inputs that take no gradient are skipped (their entry is `None`).
fn input_grads(op: &Op, y: &Tensor, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    use Op::*;
    // Computes a rule only for inputs that want a gradient.
    let want = |v: &Var, rule: &dyn Fn() -> Result<Tensor>| -> Result<Option<Tensor>> {
        if v.requires_grad() {
            rule().map(Some)
        } else {
            Ok(None)
        }
    };
    let (a_val, b_val) = match op.inputs().as_slice() {
        [a, b] => (a.value(), Some(b.value())),
        [a, ..] => (a.value(), None),
        [] => unreachable!("every op has an input"),
    };
    let x = &a_val;
    let bv = || b_val.clone().expect("binary op");
    let grads = match op {
        // y = a + b: dy/da = 1, dy/db = 1.
        Add(a, b) => vec![want(a, &|| g.sum_to(&a.shape()))?, want(b, &|| g.sum_to(&b.shape()))?],
        // y = a - b: dy/da = 1, dy/db = -1.
        Sub(a, b) => vec![want(a, &|| g.sum_to(&a.shape()))?, want(b, &|| g.neg()?.sum_to(&b.shape()))?],
        // y = a b: dy/da = b, dy/db = a.
        Mul(a, b) => vec![want(a, &|| g.mul(&bv())?.sum_to(&a.shape()))?, want(b, &|| g.mul(x)?.sum_to(&b.shape()))?],
        // y = a / b: dy/da = 1 / b, dy/db = -a / b^2 = -y / b.
        Div(a, b) => vec![
            want(a, &|| g.div(&bv())?.sum_to(&a.shape()))?,
            want(b, &|| g.mul(y)?.div(&bv())?.neg()?.sum_to(&b.shape()))?,
        ],
        // y = -x: dy/dx = -1.
        Neg(_) => vec![Some(g.neg()?)],
        // y = s x + c: dy/dx = s.
        Affine(_, s) => vec![Some(g.scale(*s)?)],
        // y = e^x: dy/dx = e^x = y.
        Exp(_) => vec![Some(g.mul(y)?)],
        // y = ln x: dy/dx = 1 / x.
        Log(_) => vec![Some(g.div(x)?)],
        // The elementwise maps' derivatives are named ops (ddpm_tensor::ops::UnaryBackward),
        // so that each device has a kernel for them:
        // y = sqrt(x): dy/dx = 1 / (2 sqrt(x)) = 1 / (2 y).
        Sqrt(_) => vec![Some(g.unary_backward(UnaryBackward::Sqrt, y)?)],
        // y = x^p: dy/dx = p x^(p-1).
        Powf(_, p) => vec![Some(g.unary_backward(UnaryBackward::Powf(*p), x)?)],
        // y = tanh x: dy/dx = 1 - y^2.
        Tanh(_) => vec![Some(g.unary_backward(UnaryBackward::Tanh, y)?)],
        // y = s(x) = 1 / (1 + e^-x): dy/dx = y (1 - y).
        Sigmoid(_) => vec![Some(g.unary_backward(UnaryBackward::Sigmoid, y)?)],
        // y = x s(x): dy/dx = s(x) + x s(x)(1 - s(x)) = s(x) (1 + x (1 - s(x))).
        Silu(_) => vec![Some(g.unary_backward(UnaryBackward::Silu, x)?)],
        // y = max(x, 0): dy/dx = 1 where x > 0, else 0.
        Relu(_) => vec![Some(g.unary_backward(UnaryBackward::Relu, x)?)],
        // y = sum over axes: every summed x_i gets the whole g of its sum.
        SumAxes(a, axes, keepdim) => {
            let g = if *keepdim {
                g.clone()
            } else {
                // Put the summed axes back as extent 1 so that g broadcasts.
                let mut dims = a.dims();
                axes.iter().for_each(|&i| dims[i] = 1);
                g.reshape(dims)?
            };
            vec![Some(Tensor::full_on(a.shape(), 0.0, g.device())?.add(&g)?)]
        }
        // A reshape moves no element: the gradient takes the input's shape back.
        Reshape(a) => vec![Some(g.reshape(a.shape())?)],
        // A permutation is undone by the inverse permutation.
        Permute(_, perm) => {
            let mut inverse = vec![0; perm.len()];
            perm.iter().enumerate().for_each(|(i, &p)| inverse[p] = i);
            vec![Some(g.permute(&inverse)?)]
        }
        // Each part gets back its own slice of g.
        Concat(parts, axis) => {
            let sizes: Vec<usize> = parts.iter().map(|p| p.dims()[*axis]).collect();
            g.split(*axis, &sizes)?.into_iter().zip(parts).map(|(gi, p)| p.requires_grad().then_some(gi)).collect()
        }
        // The slice's gradient lands where the slice came from; zero elsewhere.
        Narrow(a, axis, start) => vec![Some(g.narrow_backward(*axis, *start, a.dims()[*axis])?)],
        // y = softmax(x): dx = y (g - sum_j g_j y_j), row by row.
        Softmax(_) => vec![Some(Tensor::softmax_backward(y, g)?)],
        // y = log softmax(x): dx = g - softmax(x) sum_j g_j.
        LogSoftmax(_) => vec![Some(Tensor::log_softmax_backward(y, g)?)],
        // Y = A B: dA = G B^T, dB = A^T G. A weight shared across a batch
        // (B of rank 2 under a rank-3 A) sums its per-sample gradients.
        Matmul(a, b) => {
            vec![want(a, &|| g.matmul_nt(&bv()))?, want(b, &|| shared_weight_grad(x.matmul_tn(g)?, &b.shape()))?]
        }
        // Y = A B^T: dA = G B, dB = G^T A.
        MatmulNt(a, b) => {
            vec![want(a, &|| g.matmul(&bv()))?, want(b, &|| shared_weight_grad(g.matmul_tn(x)?, &b.shape()))?]
        }
        // Y = A^T B: dA = B G^T, dB = A G.
        MatmulTn(a, b) => {
            vec![want(a, &|| bv().matmul_nt(g))?, want(b, &|| shared_weight_grad(x.matmul(g)?, &b.shape()))?]
        }
        // y = conv(x, w) + b: dx is the transposed convolution of g with w,
        // dw correlates x with g, db sums g over N, Ho, Wo (formulas in ddpm_tensor::ops::conv2d).
        // A shift [N, K] is a bias per sample: its gradient sums g over each
        // sample's positions; a residual passes g through unchanged.
        Conv2d { x: xv, weight, bias, shift, residual, params } => {
            let w = weight.value();
            let mut grads = vec![
                want(xv, &|| conv2d_backward_input(g, &w, &xv.shape(), *params))?,
                want(weight, &|| conv2d_backward_weight(x, g, &w.shape().clone(), *params))?,
            ];
            if let Some(b) = bias {
                grads.push(want(b, &|| conv2d_backward_bias(g))?);
            }
            if let Some(s) = shift {
                grads.push(want(s, &|| conv2d_backward_shift(g))?);
            }
            if let Some(r) = residual {
                grads.push(r.requires_grad().then(|| g.clone()));
            }
            grads
        }
        // Group norm: the fused rule of ddpm_tensor::ops::group_norm (formulas there).
        GroupNorm { x: xv, gamma, beta, groups, stats } => {
            let (dx, dgamma, dbeta) = group_norm_backward(x, stats, &gamma.value(), *groups, g)?;
            vec![
                xv.requires_grad().then_some(dx),
                gamma.requires_grad().then_some(dgamma),
                beta.requires_grad().then_some(dbeta),
            ]
        }
        // y = silu(z), z = GroupNorm(x): dz = g silu'(z), then the group-norm rule with dz.
        GroupNormSilu { x: xv, gamma, beta, groups, stats } => {
            let (dx, dgamma, dbeta) = group_norm_silu_backward(x, stats, &gamma.value(), &beta.value(), *groups, g)?;
            vec![
                xv.requires_grad().then_some(dx),
                gamma.requires_grad().then_some(dgamma),
                beta.requires_grad().then_some(dbeta),
            ]
        }
        // y = x * mask, the mask a constant: dx = g * mask, the same op on g.
        Dropout(_, seed, p) => vec![Some(g.dropout(*seed, *p)?)],
        // Each input pixel fed a 2x2 block: it gets the block's summed gradient.
        Upsample2x(_) => vec![Some(g.upsample_nearest2x_backward()?)],
        // y = max of a 2x2 window: dy/dx = 1 for the window's largest x, 0 for
        // the other three (ties: the first, as ddpm_tensor::ops::max_pool says).
        MaxPool2x2(_) => vec![Some(Tensor::max_pool2x2_backward(x, g)?)],
        // Each table row gets the gradients of every output that copied it.
        Embedding(table, indices) => vec![Some(g.index_add_rows(indices, table.dims()[0])?)],
    };
    Ok(grads)
}

/// A rank-2 right operand under a rank-3 left one was used by every batch
/// entry: its gradient is the sum of the per-entry gradients.
fn shared_weight_grad(per_batch: Tensor, shape: &ddpm_tensor::Shape) -> Result<Tensor> {
    if per_batch.rank() == shape.rank() {
        Ok(per_batch)
    } else {
        per_batch.sum_axes(&[0], false)
    }
}

/// The gradients of one backward pass, for the leaves that asked for them.
pub struct Gradients(HashMap<usize, Tensor>);

impl Gradients {
    /// dL/dv for a leaf `v` created with [`Var::param`]; `None` if the loss
    /// does not depend on it.
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.0.get(&v.id())
    }

    pub fn get_mut(&mut self, v: &Var) -> Option<&mut Tensor> {
        self.0.get_mut(&v.id())
    }

    pub fn remove(&mut self, v: &Var) -> Option<Tensor> {
        self.0.remove(&v.id())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Every node that `root` depends on through ops wanting gradients, each after
/// all of its inputs (iterative depth-first search: deep graphs cannot
/// overflow the stack).
fn topological_order(root: &Var) -> Vec<Var> {
    let mut order = vec![];
    let mut seen = std::collections::HashSet::new();
    // (node, inputs already pushed?)
    let mut stack = vec![(root.clone(), false)];
    while let Some((v, expanded)) = stack.pop() {
        if expanded {
            order.push(v);
            continue;
        }
        if !seen.insert(v.id()) {
            continue;
        }
        stack.push((v.clone(), true));
        if let Some(op) = v.0.op.borrow().as_ref() {
            for input in op.inputs() {
                if input.requires_grad() && !seen.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}

impl Var {
    /// Backpropagates from this node, seeded with dL/dL = 1 (of this node's
    /// shape), and returns the gradients of the leaves.
    ///
    /// The graph is consumed on the way: each node's op is dropped once its
    /// rule has run, so intermediate values and gradients are freed as soon as
    /// they are no longer needed; a second backward through the same nodes is
    /// an error, as in PyTorch without `retain_graph`.
    ///
    /// ```
    /// use ddpm_autograd::{Tensor, Var};
    /// // y = sum(2 x^2), so dy/dx = 4x.
    /// let x = Var::param(Tensor::from_vec(vec![1.0, -3.0], [2])?);
    /// let y = x.square()?.scale(2.0)?.sum_all()?;
    /// let grads = y.backward()?;
    /// assert_eq!(grads.get(&x).unwrap().to_vec(), vec![4.0, -12.0]);
    /// # Ok::<(), ddpm_autograd::TensorError>(())
    /// ```
    pub fn backward(&self) -> Result<Gradients> {
        let order = topological_order(self);
        let mut grads: HashMap<usize, Tensor> = HashMap::new();
        if self.requires_grad() {
            grads.insert(self.id(), self.value().full_like(1.0)?);
        }
        let mut leaves = HashMap::new();
        for v in order.iter().rev() {
            let Some(g) = grads.remove(&v.id()) else { continue };
            if v.0.is_leaf {
                // A leaf: its gradient is an answer.
                leaves.insert(v.id(), g);
                continue;
            }
            let Some(op) = v.0.op.borrow_mut().take() else {
                return Err(TensorError::invalid(
                    "backward",
                    "the graph behind this node was already freed by an earlier backward",
                ));
            };
            let y = v.value();
            let input_grads = {
                let _timer = crate::profile::scope(op.name(), crate::profile::Pass::Backward);
                input_grads(&op, &y, &g)?
            };
            for (input, gi) in op.inputs().into_iter().zip(input_grads) {
                let Some(gi) = gi else { continue };
                debug_assert_eq!(gi.shape(), &input.shape(), "rule of {} gave a misshaped gradient", op.name());
                match grads.get_mut(&input.id()) {
                    // A node used twice receives the sum of both paths' gradients.
                    Some(acc) => {
                        let _timer = crate::profile::scope("accumulate", crate::profile::Pass::Backward);
                        acc.add_assign(&gi)?
                    }
                    None => {
                        grads.insert(input.id(), gi);
                    }
                }
            }
        }
        Ok(Gradients(leaves))
    }
}
