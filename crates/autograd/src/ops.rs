//! Forward functions: compute with a tensor kernel, record the op.
//!
//! Composite ops at the end (mean, split, square...) are built from the
//! primitives and get their gradients for free.

use ddpm_tensor::ops::Conv2dParams;
use ddpm_tensor::{Result, Shape, Tensor, TensorError};

use crate::op::Op;
use crate::profile::{self, Pass};
use crate::Var;

impl Var {
    // ------------------------------------------------------------ binary

    /// a + b, broadcasting.
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        let _timer = profile::scope("add", Pass::Forward);
        let v = self.value().add(&rhs.value())?;
        Ok(Var::from_op(v, Op::Add(self.clone(), rhs.clone())))
    }

    /// a - b, broadcasting.
    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        let _timer = profile::scope("sub", Pass::Forward);
        let v = self.value().sub(&rhs.value())?;
        Ok(Var::from_op(v, Op::Sub(self.clone(), rhs.clone())))
    }

    /// a * b elementwise, broadcasting.
    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        let _timer = profile::scope("mul", Pass::Forward);
        let v = self.value().mul(&rhs.value())?;
        Ok(Var::from_op(v, Op::Mul(self.clone(), rhs.clone())))
    }

    /// a / b elementwise, broadcasting.
    pub fn div(&self, rhs: &Var) -> Result<Var> {
        let _timer = profile::scope("div", Pass::Forward);
        let v = self.value().div(&rhs.value())?;
        Ok(Var::from_op(v, Op::Div(self.clone(), rhs.clone())))
    }

    // ------------------------------------------------------------ unary

    pub fn neg(&self) -> Result<Var> {
        let _timer = profile::scope("neg", Pass::Forward);
        Ok(Var::from_op(self.value().neg()?, Op::Neg(self.clone())))
    }

    /// scale * x + shift.
    pub fn affine(&self, scale: f32, shift: f32) -> Result<Var> {
        let _timer = profile::scope("affine", Pass::Forward);
        Ok(Var::from_op(self.value().affine(scale, shift)?, Op::Affine(self.clone(), scale)))
    }

    pub fn exp(&self) -> Result<Var> {
        let _timer = profile::scope("exp", Pass::Forward);
        Ok(Var::from_op(self.value().exp()?, Op::Exp(self.clone())))
    }

    pub fn log(&self) -> Result<Var> {
        let _timer = profile::scope("log", Pass::Forward);
        Ok(Var::from_op(self.value().log()?, Op::Log(self.clone())))
    }

    pub fn sqrt(&self) -> Result<Var> {
        let _timer = profile::scope("sqrt", Pass::Forward);
        Ok(Var::from_op(self.value().sqrt()?, Op::Sqrt(self.clone())))
    }

    pub fn powf(&self, p: f32) -> Result<Var> {
        let _timer = profile::scope("powf", Pass::Forward);
        Ok(Var::from_op(self.value().powf(p)?, Op::Powf(self.clone(), p)))
    }

    pub fn tanh(&self) -> Result<Var> {
        let _timer = profile::scope("tanh", Pass::Forward);
        Ok(Var::from_op(self.value().tanh()?, Op::Tanh(self.clone())))
    }

    pub fn sigmoid(&self) -> Result<Var> {
        let _timer = profile::scope("sigmoid", Pass::Forward);
        Ok(Var::from_op(self.value().sigmoid()?, Op::Sigmoid(self.clone())))
    }

    pub fn silu(&self) -> Result<Var> {
        let _timer = profile::scope("silu", Pass::Forward);
        Ok(Var::from_op(self.value().silu()?, Op::Silu(self.clone())))
    }

    pub fn relu(&self) -> Result<Var> {
        let _timer = profile::scope("relu", Pass::Forward);
        Ok(Var::from_op(self.value().relu()?, Op::Relu(self.clone())))
    }

    // ------------------------------------------------------------ reductions and layout

    /// Sum over `axes`; `keepdim` keeps them as extent 1.
    pub fn sum_axes(&self, axes: &[usize], keepdim: bool) -> Result<Var> {
        let _timer = profile::scope("sum_axes", Pass::Forward);
        let v = self.value().sum_axes(axes, keepdim)?;
        Ok(Var::from_op(v, Op::SumAxes(self.clone(), axes.to_vec(), keepdim)))
    }

    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Var> {
        let _timer = profile::scope("reshape", Pass::Forward);
        let v = self.value().reshape(shape)?;
        Ok(Var::from_op(v, Op::Reshape(self.clone())))
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let _timer = profile::scope("permute", Pass::Forward);
        let v = self.value().permute(perm)?;
        Ok(Var::from_op(v, Op::Permute(self.clone(), perm.to_vec())))
    }

    /// Joins along `axis` (the U-Net's skip connections, on channels).
    pub fn concat(parts: &[&Var], axis: usize) -> Result<Var> {
        let _timer = profile::scope("concat", Pass::Forward);
        let values: Vec<Tensor> = parts.iter().map(|p| p.value()).collect();
        let v = Tensor::concat(&values.iter().collect::<Vec<_>>(), axis)?;
        Ok(Var::from_op(v, Op::Concat(parts.iter().map(|&p| p.clone()).collect(), axis)))
    }

    /// The slice start .. start + len of `axis`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Var> {
        let _timer = profile::scope("narrow", Pass::Forward);
        let v = self.value().narrow(axis, start, len)?;
        Ok(Var::from_op(v, Op::Narrow(self.clone(), axis, start)))
    }

    /// Softmax over the last axis.
    pub fn softmax(&self) -> Result<Var> {
        let _timer = profile::scope("softmax", Pass::Forward);
        let v = self.value().softmax()?;
        Ok(Var::from_op(v, Op::Softmax(self.clone())))
    }

    /// log(softmax(x)) over the last axis, computed stably.
    pub fn log_softmax(&self) -> Result<Var> {
        let _timer = profile::scope("log_softmax", Pass::Forward);
        let v = self.value().log_softmax()?;
        Ok(Var::from_op(v, Op::LogSoftmax(self.clone())))
    }

    // ------------------------------------------------------------ products

    /// A B (batched or not).
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let _timer = profile::scope("matmul", Pass::Forward);
        let v = self.value().matmul(&rhs.value())?;
        Ok(Var::from_op(v, Op::Matmul(self.clone(), rhs.clone())))
    }

    /// A B^T.
    pub fn matmul_nt(&self, rhs: &Var) -> Result<Var> {
        let _timer = profile::scope("matmul_nt", Pass::Forward);
        let v = self.value().matmul_nt(&rhs.value())?;
        Ok(Var::from_op(v, Op::MatmulNt(self.clone(), rhs.clone())))
    }

    /// A^T B.
    pub fn matmul_tn(&self, rhs: &Var) -> Result<Var> {
        let _timer = profile::scope("matmul_tn", Pass::Forward);
        let v = self.value().matmul_tn(&rhs.value())?;
        Ok(Var::from_op(v, Op::MatmulTn(self.clone(), rhs.clone())))
    }

    // ------------------------------------------------------------ layer primitives

    /// A 2-D convolution: x [N, C, H, W], weight [K, C, R, S], bias [K] -> [N, K, Ho, Wo].
    pub fn conv2d(&self, weight: &Var, bias: Option<&Var>, params: Conv2dParams) -> Result<Var> {
        self.conv2d_add(weight, bias, None, None, params)
    }

    /// conv2d + shift [N, K] (per sample and output channel) + residual (the
    /// output's shape), the adds done as the output is written.
    pub fn conv2d_add(
        &self,
        weight: &Var,
        bias: Option<&Var>,
        shift: Option<&Var>,
        residual: Option<&Var>,
        params: Conv2dParams,
    ) -> Result<Var> {
        let _timer = profile::scope("conv2d", Pass::Forward);
        let [b, s, r] = [bias, shift, residual].map(|v| v.map(Var::value));
        let y = self.value().conv2d_add(&weight.value(), b.as_ref(), s.as_ref(), r.as_ref(), params)?;
        let (bias, shift, residual) = (bias.cloned(), shift.cloned(), residual.cloned());
        let op = Op::Conv2d { x: self.clone(), weight: weight.clone(), bias, shift, residual, params };
        Ok(Var::from_op(y, op))
    }

    /// GroupNorm over [N, C, H, W] with `groups` groups, per-channel gamma and beta [C].
    pub fn group_norm(&self, groups: usize, gamma: &Var, beta: &Var, eps: f32) -> Result<Var> {
        let _timer = profile::scope("group_norm", Pass::Forward);
        let (y, stats) = self.value().group_norm(groups, &gamma.value(), &beta.value(), eps)?;
        let op = Op::GroupNorm { x: self.clone(), gamma: gamma.clone(), beta: beta.clone(), groups, stats };
        Ok(Var::from_op(y, op))
    }

    /// silu(GroupNorm(x)) as one op: the same numbers as `group_norm` then
    /// `silu`, with half the memory traffic.
    pub fn group_norm_silu(&self, groups: usize, gamma: &Var, beta: &Var, eps: f32) -> Result<Var> {
        let _timer = profile::scope("group_norm_silu", Pass::Forward);
        let (y, stats) = self.value().group_norm_silu(groups, &gamma.value(), &beta.value(), eps)?;
        let op = Op::GroupNormSilu { x: self.clone(), gamma: gamma.clone(), beta: beta.clone(), groups, stats };
        Ok(Var::from_op(y, op))
    }

    /// Inverted dropout with the mask of Philox stream `seed` (see
    /// `Tensor::dropout`): zero where the stream draws below p, else x / (1 - p).
    pub fn dropout(&self, seed: u64, p: f32) -> Result<Var> {
        let _timer = profile::scope("dropout", Pass::Forward);
        Ok(Var::from_op(self.value().dropout(seed, p)?, Op::Dropout(self.clone(), seed, p)))
    }

    /// [N, C, H, W] -> [N, C, 2H, 2W], each pixel repeated into a 2x2 block.
    pub fn upsample_nearest2x(&self) -> Result<Var> {
        let _timer = profile::scope("upsample_nearest2x", Pass::Forward);
        let y = self.value().upsample_nearest2x()?;
        Ok(Var::from_op(y, Op::Upsample2x(self.clone())))
    }

    /// [N, C, H, W] -> [N, C, H/2, W/2], the largest value of each 2x2 window.
    pub fn max_pool2x2(&self) -> Result<Var> {
        let _timer = profile::scope("max_pool2x2", Pass::Forward);
        let y = self.value().max_pool2x2()?;
        Ok(Var::from_op(y, Op::MaxPool2x2(self.clone())))
    }

    /// Rows of this [V, D] table: out[b] = table[indices[b]], [B, D].
    pub fn embedding(&self, indices: &[usize]) -> Result<Var> {
        let _timer = profile::scope("embedding", Pass::Forward);
        let y = self.value().index_select_rows(indices)?;
        Ok(Var::from_op(y, Op::Embedding(self.clone(), indices.to_vec())))
    }

    // ------------------------------------------------------------ composites (no rules of their own)

    pub fn scale(&self, s: f32) -> Result<Var> {
        self.affine(s, 0.0)
    }

    pub fn add_scalar(&self, c: f32) -> Result<Var> {
        self.affine(1.0, c)
    }

    pub fn square(&self) -> Result<Var> {
        self.powf(2.0)
    }

    pub fn sum_all(&self) -> Result<Var> {
        let axes: Vec<usize> = (0..self.shape().rank()).collect();
        self.sum_axes(&axes, false)
    }

    /// Mean over `axes`: the sum divided by the number of terms.
    pub fn mean_axes(&self, axes: &[usize], keepdim: bool) -> Result<Var> {
        let dims = self.dims();
        let count: usize = axes.iter().map(|&a| dims.get(a).copied().unwrap_or(1)).product();
        self.sum_axes(axes, keepdim)?.scale(1.0 / count as f32)
    }

    pub fn mean_all(&self) -> Result<Var> {
        self.sum_all()?.scale(1.0 / self.shape().numel() as f32)
    }

    pub fn transpose(&self, a: usize, b: usize) -> Result<Var> {
        let shape = self.shape();
        shape.check_axis("transpose", a)?;
        shape.check_axis("transpose", b)?;
        let mut perm: Vec<usize> = (0..shape.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Cuts `axis` into consecutive pieces of the given sizes.
    pub fn split(&self, axis: usize, sizes: &[usize]) -> Result<Vec<Var>> {
        let ranges = ddpm_tensor::ops::split_ranges(&self.shape(), axis, sizes)?;
        ranges.into_iter().map(|(start, len)| self.narrow(axis, start, len)).collect()
    }

    /// Mean squared error, mean((a - b)^2): the DDPM loss on the noise.
    pub fn mse(&self, target: &Var) -> Result<Var> {
        self.sub(target)?.square()?.mean_all()
    }

    /// Cross-entropy of logits [B, K] against class labels (B of them, each
    /// below K): L = -(1/B) sum_b log softmax(z_b)[y_b], the classifier's loss.
    ///
    /// The label's entry is picked by multiplying with a one-hot constant and
    /// summing, so the gradient needs no rule of its own: it works out to
    /// dL/dz_b = (softmax(z_b) - onehot(y_b)) / B.
    pub fn cross_entropy(&self, labels: &[usize]) -> Result<Var> {
        let (b, k) = match self.dims()[..] {
            [b, k] if b == labels.len() && b > 0 => (b, k),
            _ => {
                let msg = format!("needs logits [B, K] for {} labels, got {}", labels.len(), self.shape());
                return Err(TensorError::invalid("cross_entropy", msg));
            }
        };
        if let Some(&y) = labels.iter().find(|&&y| y >= k) {
            return Err(TensorError::invalid("cross_entropy", format!("label {y} is not below K = {k}")));
        }
        let mut one_hot = vec![0.0; b * k];
        labels.iter().enumerate().for_each(|(i, &y)| one_hot[i * k + y] = 1.0);
        // Made on the host, it goes where the logits are.
        let one_hot = Var::constant(Tensor::from_vec(one_hot, [b, k])?.to(self.value().device())?);
        self.log_softmax()?.mul(&one_hot)?.sum_all()?.scale(-1.0 / b as f32)
    }
}
