//! Elementwise ops of two tensors with NumPy broadcasting: out = a (op) b.
//!
//! The common U-Net cases are a per-channel term (bias [1, C, 1, 1] or
//! [C, 1, 1]) and a per-sample term ([N, C, 1, 1], the time embedding) added to
//! an [N, C, H, W] activation. The fast kernel first merges adjacent axes that
//! both operands walk the same way, so [N, C, H, W] + [1, C, 1, 1] becomes a
//! loop over [N, C] rows of H*W contiguous elements with one bias value each.

use super::parallel::{for_each_row, row_offsets};
use crate::backend::Broadcast;
use crate::{placement, Placement, Result, Shape, Tensor, TensorError};

/// The arithmetic that a broadcasting binary op applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
        }
    }
}

/// Merges axis i into axis i+1 wherever both operands step through them as one
/// contiguous run (stride[i] == stride[i+1] * dims[i+1]), and drops unit axes.
/// The last of the merged axes is the inner loop of the CPU kernel.
pub(crate) fn plan(out: &Shape, a: &Shape, b: &Shape) -> Broadcast {
    let (sa, sb) = (a.broadcast_strides(out), b.broadcast_strides(out));
    let mut walk = Broadcast { dims: vec![], lhs: vec![], rhs: vec![] };
    for ((&d, &x), &y) in out.dims().iter().zip(&sa).zip(&sb) {
        if d == 1 {
            continue;
        }
        if let Some(&last) = walk.dims.last() {
            let (la, lb) = (*walk.lhs.last().unwrap(), *walk.rhs.last().unwrap());
            if la == x * d && lb == y * d {
                *walk.dims.last_mut().unwrap() = last * d;
                *walk.lhs.last_mut().unwrap() = x;
                *walk.rhs.last_mut().unwrap() = y;
                continue;
            }
        }
        walk.dims.push(d);
        walk.lhs.push(x);
        walk.rhs.push(y);
    }
    if walk.dims.is_empty() {
        walk = Broadcast { dims: vec![1], lhs: vec![0], rhs: vec![0] };
    }
    walk
}

/// out[i] = f(a[i * sa], b[i * sb]) over one row; the stride pairs that occur
/// are written out so that each loop vectorises.
#[inline(always)]
fn row_kernel(out: &mut [f32], a: &[f32], sa: usize, b: &[f32], sb: usize, f: impl Fn(f32, f32) -> f32) {
    let n = out.len();
    match (sa, sb) {
        (1, 1) => {
            for ((o, &x), &y) in out.iter_mut().zip(&a[..n]).zip(&b[..n]) {
                *o = f(x, y);
            }
        }
        (1, 0) => {
            let y = b[0];
            for (o, &x) in out.iter_mut().zip(&a[..n]) {
                *o = f(x, y);
            }
        }
        (0, 1) => {
            let x = a[0];
            for (o, &y) in out.iter_mut().zip(&b[..n]) {
                *o = f(x, y);
            }
        }
        _ => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f(a[i * sa], b[i * sb]);
            }
        }
    }
}

fn broadcast_with(a: &Tensor, b: &Tensor, out_shape: Shape, f: impl Fn(f32, f32) -> f32 + Sync + Copy) -> Tensor {
    let walk = plan(&out_shape, a.shape(), b.shape());
    let inner = *walk.dims.last().unwrap();
    let (ia, ib) = (*walk.lhs.last().unwrap(), *walk.rhs.last().unwrap());
    let outer = &walk.dims[..walk.dims.len() - 1];
    let (sa, sb) = (&walk.lhs[..outer.len()], &walk.rhs[..outer.len()]);
    let (da, db) = (a.as_slice(), b.as_slice());
    let mut out = crate::pool::take(out_shape.numel());
    for_each_row(&mut out, inner, |r, row| {
        let [oa, ob] = row_offsets(r, outer, [sa, sb]);
        row_kernel(row, &da[oa..], ia, &db[ob..], ib, f);
    });
    Tensor::from_parts(out, out_shape)
}

/// out = f(a, b) elementwise for two host tensors of the same shape.
pub(crate) fn zip_host(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync + Copy) -> Tensor {
    broadcast_with(a, b, a.shape().clone(), f)
}

impl Tensor {
    /// out = a (op) b with broadcasting, on the operands' device.
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let shape = Shape::broadcast(op.name(), self.shape(), rhs.shape())?;
        match placement(op.name(), &[self, rhs])? {
            Placement::Cpu => Ok(match op {
                BinaryOp::Add => broadcast_with(self, rhs, shape, |x, y| x + y),
                BinaryOp::Sub => broadcast_with(self, rhs, shape, |x, y| x - y),
                BinaryOp::Mul => broadcast_with(self, rhs, shape, |x, y| x * y),
                BinaryOp::Div => broadcast_with(self, rhs, shape, |x, y| x / y),
                BinaryOp::Maximum => broadcast_with(self, rhs, shape, f32::max),
            }),
            Placement::Device(backend) => {
                let walk = plan(&shape, self.shape(), rhs.shape());
                let mut out = backend.alloc(shape.numel())?;
                backend.binary(op, self.buffer(), rhs.buffer(), &mut *out, &walk)?;
                Ok(Tensor::from_device(&backend, out, shape))
            }
        }
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }

    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }

    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }

    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div)
    }

    /// out = f(a, b) elementwise for two host tensors of the same shape (no
    /// broadcasting). A closure cannot run on a device: there this is an
    /// error naming `zip_map`.
    pub fn zip_map(&self, rhs: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync + Copy) -> Result<Tensor> {
        rhs.expect_shape("zip_map", self.shape())?;
        match placement("zip_map", &[self, rhs])? {
            Placement::Cpu => Ok(zip_host(self, rhs, f)),
            Placement::Device(_) => Err(TensorError::NoDeviceKernel { op: "zip_map", device: self.device() }),
        }
    }

    /// self += rhs, same shape; used to accumulate gradients without allocating.
    /// When self's buffer is shared with another tensor (an `add`'s backward
    /// hands one gradient to both inputs), the sum goes to a new buffer in one
    /// pass, rather than copying self first and adding after. On a device the
    /// sum always goes to a new buffer (from the backend's cache).
    pub fn add_assign(&mut self, rhs: &Tensor) -> Result<()> {
        rhs.expect_shape("add_assign", self.shape())?;
        if matches!(placement("add_assign", &[self, rhs])?, Placement::Device(_)) || !self.is_unshared() {
            *self = self.add(rhs)?;
            return Ok(());
        }
        let src = rhs.as_slice();
        let dst = self.as_mut_slice();
        if dst.len() >= crate::PARALLEL_THRESHOLD {
            use rayon::prelude::*;
            dst.par_chunks_mut(4096).zip(src.par_chunks(4096)).for_each(|(d, s)| {
                d.iter_mut().zip(s).for_each(|(o, &x)| *o += x);
            });
        } else {
            dst.iter_mut().zip(src).for_each(|(o, &x)| *o += x);
        }
        Ok(())
    }

    /// self *= factor, a one-element tensor on self's device: gradient
    /// clipping's factor, which on a device is never read back to the host.
    /// On the host a factor of exactly 1 changes nothing, and is skipped.
    pub fn scale_by(&mut self, factor: &Tensor) -> Result<()> {
        if factor.numel() != 1 {
            return Err(TensorError::invalid("scale_by", format!("the factor has shape {}", factor.shape())));
        }
        match placement("scale_by", &[self, factor])? {
            Placement::Cpu => {
                let f = factor.as_slice()[0];
                if f != 1.0 {
                    use rayon::prelude::*;
                    self.as_mut_slice().par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|x| *x *= f));
                }
                Ok(())
            }
            Placement::Device(_) => {
                *self = self.mul(factor)?;
                Ok(())
            }
        }
    }
}

/// The specification of [`Tensor::binary`]: one output element at a time,
/// each operand's index found by unravelling the output index.
pub fn binary_reference(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let shape = Shape::broadcast(op.name(), a.shape(), b.shape())?;
    let (sa, sb) = (a.shape().broadcast_strides(&shape), b.shape().broadcast_strides(&shape));
    let out: Vec<f32> = (0..shape.numel())
        .map(|i| {
            let (mut rem, mut ia, mut ib) = (i, 0, 0);
            for axis in (0..shape.rank()).rev() {
                let idx = rem % shape.dims()[axis];
                rem /= shape.dims()[axis];
                ia += idx * sa[axis];
                ib += idx * sb[axis];
            }
            let (x, y) = (a.as_slice()[ia], b.as_slice()[ib]);
            match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div => x / y,
                BinaryOp::Maximum => x.max(y),
            }
        })
        .collect();
    Tensor::from_vec(out, shape).map_err(|e| TensorError::invalid("binary_reference", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn add_assign_adds_in_place_and_leaves_a_sharing_tensor_alone() {
        let mut rng = StdRng::seed_from_u64(3);
        for len in [10, crate::PARALLEL_THRESHOLD + 5] {
            let (a, b) = (Tensor::randn([len], &mut rng), Tensor::randn([len], &mut rng));
            let expected: Vec<f32> = a.as_slice().iter().zip(b.as_slice()).map(|(x, y)| x + y).collect();
            let mut own = Tensor::from_vec(a.to_vec(), [len]).unwrap();
            own.add_assign(&b).unwrap();
            assert_eq!(own.to_vec(), expected);
            let original = a.to_vec();
            let mut shared = a.clone();
            shared.add_assign(&b).unwrap();
            assert_eq!(shared.to_vec(), expected);
            assert_eq!(a.to_vec(), original, "the tensor that shared the buffer changed");
        }
        assert!(Tensor::zeros([3]).add_assign(&Tensor::zeros([4])).is_err());
    }

    fn check(a: &[usize], b: &[usize]) {
        let mut rng = StdRng::seed_from_u64(0);
        let x = Tensor::randn(a, &mut rng);
        let y = Tensor::rand_uniform(b, 0.5, 2.0, &mut rng);
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum] {
            let fast = x.binary(&y, op).unwrap();
            let naive = binary_reference(&x, &y, op).unwrap();
            assert_eq!(fast.shape(), naive.shape());
            assert_eq!(fast.to_vec(), naive.to_vec(), "{op:?} {a:?} {b:?}");
        }
    }

    #[test]
    fn unet_broadcasts_match_the_reference() {
        check(&[2, 3, 5, 4], &[2, 3, 5, 4]); // same shape
        check(&[2, 3, 5, 4], &[1, 3, 1, 1]); // per-channel bias
        check(&[2, 3, 5, 4], &[3, 1, 1]); // per-channel, rank shorter
        check(&[2, 3, 5, 4], &[2, 3, 1, 1]); // per-sample time embedding
        check(&[2, 3, 5, 4], &[]); // scalar
        check(&[1, 3, 1, 1], &[2, 3, 5, 4]); // broadcast on the left
        check(&[4, 1, 3], &[5, 1]); // both sides broadcast
                                    // Large enough to take the parallel path.
        check(&[8, 64, 28, 28], &[1, 64, 1, 1]);
    }

    #[test]
    fn incompatible_shapes_are_an_error() {
        let e = Tensor::zeros([2, 3]).add(&Tensor::zeros([4])).unwrap_err();
        assert_eq!(e.to_string(), "add: shapes [2, 3] and [4] cannot be broadcast together");
    }

    fn broadcastable_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
        proptest::collection::vec((1usize..5, 0u8..3), 0..5).prop_map(|axes| {
            // For each axis: both full (0), lhs broadcast (1) or rhs broadcast (2).
            let a = axes.iter().map(|&(d, k)| if k == 1 { 1 } else { d }).collect();
            let b = axes.iter().map(|&(d, k)| if k == 2 { 1 } else { d }).collect();
            (a, b)
        })
    }

    proptest! {
        #[test]
        fn any_broadcast_matches_the_reference((a, b) in broadcastable_pair()) {
            check(&a, &b);
        }
    }
}
