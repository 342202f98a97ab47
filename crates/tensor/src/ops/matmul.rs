//! Matrix multiplication through matrixmultiply's sgemm, split across rayon.
//!
//! Shapes: A is (M, K), B is (K, N), C = A B is (M, N); a leading batch axis B
//! is allowed on both sides (attention's [N, HW, C] x [N, C, HW]), or on the left
//! only (a shared weight). Transposed operands are read through strides, never
//! copied: matrixmultiply takes a row and a column stride per matrix.

use rayon::prelude::*;

use crate::backend::MatmulShape;
use crate::{placement, Placement, Result, Shape, Tensor, TensorError};

/// Whether a GEMM operand is read as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transpose {
    No,
    Yes,
}

/// Row and column strides of a row-major `rows x cols` buffer read as `t`.
fn strides(t: Transpose, stored_cols: usize) -> (isize, isize) {
    match t {
        Transpose::No => (stored_cols as isize, 1),
        Transpose::Yes => (1, stored_cols as isize),
    }
}

/// Checks that the buffers hold the (M, K), (K, N) and (M, N) matrices and
/// returns the row and column strides of A and B as read through `ta` / `tb`.
#[allow(clippy::too_many_arguments)]
fn operand_strides(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    ta: Transpose,
    b: &[f32],
    tb: Transpose,
    c: &[f32],
) -> [isize; 4] {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "sgemm: buffers too small");
    let (rsa, csa) = strides(ta, if ta == Transpose::No { k } else { m });
    let (rsb, csb) = strides(tb, if tb == Transpose::No { n } else { k });
    [rsa, csa, rsb, csb]
}

/// C = op(A) op(B) + beta * C on the calling thread. C is (M, N) row-major,
/// op(A) is (M, K), op(B) is (K, N); A and B are stored row-major in the shape
/// they have before `ta` / `tb`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    ta: Transpose,
    b: &[f32],
    tb: Transpose,
    beta: f32,
    c: &mut [f32],
) {
    let [rsa, csa, rsb, csb] = operand_strides(m, k, n, a, ta, b, tb, c);
    // SAFETY: operand_strides checked that every index of the (m, k), (k, n) and
    // (m, n) matrices, read with these strides, inside the three buffers.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// A raw pointer that may cross to rayon's threads; each task writes a
/// disjoint block of C through it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// A method, so that closures capture the whole (Send) wrapper rather than
    /// its raw-pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// [`sgemm`] with C split into column blocks (or row blocks, when C is tall),
/// one rayon task each. For one large product, such as a convolution's GEMM.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_parallel(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    ta: Transpose,
    b: &[f32],
    tb: Transpose,
    beta: f32,
    c: &mut [f32],
) {
    let tasks = rayon::current_num_threads();
    if tasks == 1 || (m * n * k) < (1 << 18) {
        return sgemm(m, k, n, a, ta, b, tb, beta, c);
    }
    let [rsa, csa, rsb, csb] = operand_strides(m, k, n, a, ta, b, tb, c);
    let cp = SendPtr(c.as_mut_ptr());
    let split_rows = m >= n;
    let extent = if split_rows { m } else { n };
    // Blocks of a multiple of 16 keep the micro-kernel's tiles whole.
    let block = extent.div_ceil(tasks).next_multiple_of(16).min(extent);
    (0..extent.div_ceil(block)).into_par_iter().for_each(|i| {
        let start = i * block;
        let len = block.min(extent - start);
        // SAFETY: block i covers rows (or columns) start..start+len of C, so the
        // tasks write disjoint elements; the reads stay inside A and B as in sgemm.
        unsafe {
            if split_rows {
                matrixmultiply::sgemm(
                    len,
                    k,
                    n,
                    1.0,
                    a.as_ptr().offset(start as isize * rsa),
                    rsa,
                    csa,
                    b.as_ptr(),
                    rsb,
                    csb,
                    beta,
                    cp.get().add(start * n),
                    n as isize,
                    1,
                );
            } else {
                matrixmultiply::sgemm(
                    m,
                    k,
                    len,
                    1.0,
                    a.as_ptr(),
                    rsa,
                    csa,
                    b.as_ptr().offset(start as isize * csb),
                    rsb,
                    csb,
                    beta,
                    cp.get().add(start),
                    n as isize,
                    1,
                );
            }
        }
    });
}

/// The (batch, rows, cols) of a rank-2 or rank-3 operand as stored.
fn as_batched(op: &'static str, t: &Tensor) -> Result<(usize, usize, usize)> {
    match *t.dims() {
        [r, c] => Ok((1, r, c)),
        [b, r, c] => Ok((b, r, c)),
        _ => Err(TensorError::invalid(op, format!("needs a rank-2 or rank-3 tensor, got {}", t.shape()))),
    }
}

fn batched(op: &'static str, a: &Tensor, ta: Transpose, b: &Tensor, tb: Transpose) -> Result<Tensor> {
    let (ba, ra, ca) = as_batched(op, a)?;
    let (bb, rb, cb) = as_batched(op, b)?;
    let (m, k) = if ta == Transpose::No { (ra, ca) } else { (ca, ra) };
    let (k2, n) = if tb == Transpose::No { (rb, cb) } else { (cb, rb) };
    let batch_ok = ba == bb || (b.rank() == 2);
    if k != k2 || !batch_ok || (a.rank() == 2 && b.rank() == 3) {
        return Err(TensorError::ShapeMismatch { op, lhs: a.shape().clone(), rhs: b.shape().clone() });
    }
    let out_shape = if a.rank() == 3 { Shape::new([ba, m, n]) } else { Shape::new([m, n]) };
    let b_step = if b.rank() == 2 { 0 } else { k * n };
    if let Placement::Device(backend) = placement(op, &[a, b])? {
        let s = MatmulShape {
            batch: ba,
            m,
            n,
            k,
            transpose_a: ta == Transpose::Yes,
            transpose_b: tb == Transpose::Yes,
            a_stride: m * k,
            b_stride: b_step,
        };
        let mut out = backend.alloc(out_shape.numel())?;
        backend.matmul(a.buffer(), b.buffer(), &mut *out, &s)?;
        return Ok(Tensor::from_device(&backend, out, out_shape));
    }
    // sgemm with beta = 0 overwrites C, so stale contents are fine.
    let mut out = crate::pool::take(out_shape.numel());
    let (da, db) = (a.as_slice(), b.as_slice());
    if ba == 1 {
        sgemm_parallel(m, k, n, da, ta, db, tb, 0.0, &mut out);
    } else if m * n * k < (1 << 14) {
        for (i, c) in out.chunks_mut(m * n).enumerate() {
            sgemm(m, k, n, &da[i * m * k..], ta, &db[i * b_step..], tb, 0.0, c);
        }
    } else {
        out.par_chunks_mut(m * n).enumerate().for_each(|(i, c)| {
            sgemm(m, k, n, &da[i * m * k..], ta, &db[i * b_step..], tb, 0.0, c);
        });
    }
    Ok(Tensor::from_parts(out, out_shape))
}

impl Tensor {
    /// A B, for A (M, K) and B (K, N), or batched (B, M, K) x (B, K, N) or (B, M, K) x (K, N).
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        batched("matmul", self, Transpose::No, rhs, Transpose::No)
    }

    /// A B^T without copying B: B is stored (N, K). A linear layer's forward.
    pub fn matmul_nt(&self, rhs: &Tensor) -> Result<Tensor> {
        batched("matmul_nt", self, Transpose::No, rhs, Transpose::Yes)
    }

    /// A^T B without copying A: A is stored (K, M). A weight gradient.
    pub fn matmul_tn(&self, rhs: &Tensor) -> Result<Tensor> {
        batched("matmul_tn", self, Transpose::Yes, rhs, Transpose::No)
    }
}

/// The specification of [`Tensor::matmul`]: the triple loop in f64.
pub fn matmul_reference(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ba, m, k) = as_batched("matmul_reference", a)?;
    let (bb, k2, n) = as_batched("matmul_reference", b)?;
    if k != k2 || (ba != bb && b.rank() == 3) {
        return Err(TensorError::ShapeMismatch {
            op: "matmul_reference",
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
        });
    }
    let b_step = if b.rank() == 2 { 0 } else { k * n };
    let mut out = vec![0.0; ba * m * n];
    for batch in 0..ba {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    acc += a.as_slice()[batch * m * k + i * k + p] as f64
                        * b.as_slice()[batch * b_step + p * n + j] as f64;
                }
                out[batch * m * n + i * n + j] = acc as f32;
            }
        }
    }
    let shape = if a.rank() == 3 { vec![ba, m, n] } else { vec![m, n] };
    Tensor::from_vec(out, shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn close(a: &Tensor, b: &Tensor, k: usize) {
        // f32 accumulation of k products of N(0,1) numbers: error grows like sqrt(k).
        let tol = 1e-5 * (k as f32).sqrt() * 4.0;
        let err = a.max_abs_diff(b).unwrap();
        assert!(err < tol, "error {err} > {tol}");
    }

    #[test]
    fn matmul_matches_the_reference_at_unet_shapes() {
        let mut rng = StdRng::seed_from_u64(4);
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (64, 144, 784), (128, 1152, 196), (64, 128, 512)] {
            let a = Tensor::randn([m, k], &mut rng);
            let b = Tensor::randn([k, n], &mut rng);
            close(&a.matmul(&b).unwrap(), &matmul_reference(&a, &b).unwrap(), k);
        }
    }

    #[test]
    fn transposed_variants_agree_with_explicit_transposes() {
        let mut rng = StdRng::seed_from_u64(5);
        let a = Tensor::randn([4, 30, 20], &mut rng);
        let b = Tensor::randn([4, 25, 20], &mut rng);
        let nt = a.matmul_nt(&b).unwrap();
        close(&nt, &matmul_reference(&a, &b.transpose(1, 2).unwrap()).unwrap(), 20);
        let c = Tensor::randn([4, 30, 25], &mut rng);
        let tn = a.matmul_tn(&c).unwrap();
        close(&tn, &matmul_reference(&a.transpose(1, 2).unwrap(), &c).unwrap(), 30);
        // Large enough for the parallel split, both by rows and by columns.
        let w = Tensor::randn([300, 700], &mut rng);
        let x = Tensor::randn([300, 90], &mut rng);
        close(&w.matmul_tn(&x).unwrap(), &matmul_reference(&w.transpose(0, 1).unwrap(), &x).unwrap(), 300);
        close(&x.matmul_tn(&w).unwrap(), &matmul_reference(&x.transpose(0, 1).unwrap(), &w).unwrap(), 300);
    }

    #[test]
    fn shared_weight_on_the_right() {
        let mut rng = StdRng::seed_from_u64(6);
        let x = Tensor::randn([3, 10, 8], &mut rng);
        let w = Tensor::randn([8, 6], &mut rng);
        close(&x.matmul(&w).unwrap(), &matmul_reference(&x, &w).unwrap(), 8);
    }

    #[test]
    fn inner_dimensions_must_agree() {
        let e = Tensor::zeros([2, 3]).matmul(&Tensor::zeros([4, 5])).unwrap_err();
        assert_eq!(e.to_string(), "matmul: shapes [2, 3] and [4, 5] do not match");
        assert!(Tensor::zeros([2, 2, 3]).matmul(&Tensor::zeros([3, 3, 5])).is_err());
        assert!(Tensor::zeros([2]).matmul(&Tensor::zeros([2])).is_err());
    }

    proptest! {
        #[test]
        fn any_batched_matmul_matches_the_reference(
            batch in 1usize..4, m in 1usize..20, k in 1usize..20, n in 1usize..20, seed in 0u64..100,
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let a = Tensor::randn([batch, m, k], &mut rng);
            let b = Tensor::randn([batch, k, n], &mut rng);
            close(&a.matmul(&b).unwrap(), &matmul_reference(&a, &b).unwrap(), k);
        }
    }
}
